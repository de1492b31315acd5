"""The reductions over the flat buffers: scikit-learn's L2 term (``l2_penalty``) and
gradient clipping (``opt_clip`` + the hyper steps' gradient scale), on the CPU kernels and the
reference, against plain NumPy and against the code they replaced (the estimators' L2 hook and
``Optimizer._clip_``, transcribed below). The CUDA kernels: ``test_kernels_cudasim.py``; launch
and allocation counts on the simulated GPU: ``test_l2_clip_cudasim.py``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from devnet.kernels import cpu, reference, table
from devnet.kernels.cpu import optim as cpu_optim
from helpers.optional import from_devnet_sklearn

import devnet as dn
from devnet.errors import ConfigError, DataError
from devnet.train.step import Batch

MODULES = (cpu, reference)
IDS = ("cpu", "reference")
TOL = {np.float32: dict(rtol=2e-6, atol=1e-7), np.float64: dict(rtol=1e-12, atol=1e-14)}


def _random_spans(rng, n):
    """Sorted, disjoint [start, stop) spans inside [0, n), gaps between (the biases)."""
    cuts = np.sort(rng.choice(np.arange(1, n), size=6, replace=False))
    return np.array([(cuts[i], cuts[i + 1]) for i in range(0, 6, 2)], dtype=np.int64)


def _plain_l2(p, g, spans, alpha, weight, count, value, value_scale):
    """Plain NumPy, float64 throughout: the definition the kernels must meet."""
    sw = count if weight is None else weight.astype(np.float64).sum()
    sq = 0.0
    g = g.astype(np.float64)
    for a, b in spans:
        seg = p[a:b].astype(np.float64)
        g[a:b] += alpha / sw * seg
        sq += (seg * seg).sum()
    return value * value_scale + 0.5 * alpha * sq / sw, g


@pytest.mark.parametrize("weighted", (False, True))
@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_l2_penalty_equals_plain_numpy(module, dtype, weighted, rng):
    n = int(rng.integers(40, 300))
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    spans = _random_spans(rng, n)
    weight = rng.uniform(0.1, 3.0, int(rng.integers(1, 50))).astype(dtype) if weighted else None
    alpha, count, value, scale = rng.uniform(1e-3, 2), 37, rng.uniform(0, 3), rng.uniform(0.5, 2)
    want_value, want_g = _plain_l2(p, g, spans, alpha, weight, count, value, scale)
    got_g, p0 = g.copy(), p.copy()
    got = module.l2_penalty(p, got_g, spans, alpha, weight, count, value, scale)
    np.testing.assert_allclose(float(got), want_value, **TOL[dtype])
    np.testing.assert_allclose(got_g, want_g, **TOL[dtype])
    np.testing.assert_array_equal(p, p0)  # p is read only
    outside = np.ones(n, bool)
    for a, b in spans:
        outside[a:b] = False
    np.testing.assert_array_equal(got_g[outside], g[outside])  # biases untouched


def test_l2_penalty_cpu_equals_reference_on_empty_and_whole_spans(rng):
    p, g = rng.standard_normal(64), rng.standard_normal(64)
    for spans in (np.zeros((0, 2), np.int64), np.array([[0, 64]]), np.array([[5, 5], [5, 9]])):
        g1, g2 = g.copy(), g.copy()
        v1 = cpu.l2_penalty(p, g1, spans, 0.3, None, 8, 1.25, 2.0)
        v2 = reference.l2_penalty(p, g2, spans, 0.3, None, 8, 1.25, 2.0)
        np.testing.assert_allclose(v1, float(v2), rtol=1e-14)
        # g + coef p may cancel: the bound is the rounding of its pieces, not of the result
        pieces = np.abs(g) + np.abs(p)
        assert np.all(np.abs(g1 - g2) <= 1e-14 * np.abs(g2) + 4 * np.finfo(g.dtype).eps * pieces)


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_l2_penalty_alpha_zero_only_scales_the_value(module, rng):
    """alpha = 0 (the hook's value scaling alone): g untouched, even for a batch weighing 0."""
    p, g = rng.standard_normal(20), rng.standard_normal(20)
    g0 = g.copy()
    got = module.l2_penalty(p, g, np.array([[0, 20]]), 0.0, np.zeros(3), 3, 1.5, 0.5)
    assert float(got) == 0.75
    np.testing.assert_array_equal(g, g0)


def test_l2_penalty_refuses_bad_arguments_before_writing(rng):
    """A span out of [0, N], reversed or overlapping, spans of another type or shape, a value
    that is not one number: DataError, g untouched."""
    p, g = rng.standard_normal(30), rng.standard_normal(30)
    g0 = g.copy()
    good = np.array([[0, 10], [12, 30]], np.int64)
    bad_spans = {"out of": np.array([[0, 10], [12, 31]]), "overlaps": np.array([[0, 10], [9, 20]]),
                 "[-1, 4)": np.array([[-1, 4]]), "[8, 3)": np.array([[8, 3]]),
                 "int64": good.astype(np.int32), "(k, 2)": good.ravel(),
                 "C-contiguous": np.array([[0, 10, 12, 30]]).reshape(2, 2, order="F")}
    for match, spans in bad_spans.items():
        with pytest.raises(DataError, match=re.escape(match)):
            cpu.l2_penalty(p, g, spans, 0.1, None, 4, 1.0, 1.0)
    with pytest.raises(DataError, match="'g'"):
        cpu.l2_penalty(p, g[:-1], good, 0.1, None, 4, 1.0, 1.0)
    with pytest.raises(DataError, match="weight"):
        cpu.l2_penalty(p, g, good, 0.1, np.ones(4, np.float32), 4, 1.0, 1.0)
    with pytest.raises(DataError, match="value"):
        cpu.l2_penalty(p, g, good, 0.1, None, 4, np.ones(2), 1.0)
    with pytest.raises(DataError, match="alpha must be a real number"):
        cpu.l2_penalty(p, g, good, "big", None, 4, 1.0, 1.0)
    np.testing.assert_array_equal(g, g0)


def test_l2_kernel_clamps_spans_so_no_write_leaves_the_buffer(rng):
    """The compiled loop itself (what a device array's unchecked spans reach) clamps each span
    into [previous stop, N]: out-of-range spans act as their clamped selves."""
    p, g = rng.standard_normal(40), rng.standard_normal(40)
    wild = np.array([[-7, 12], [10, 25], [30, 26], [33, 10**9]], np.int64)
    clamped = np.array([[0, 12], [12, 25], [30, 30], [33, 40]], np.int64)
    g1, g2 = g.copy(), g.copy()
    sq1, sw1 = cpu_optim._L2["d"](p, g1, wild, 0.5, p, False, 4.0)
    sq2, sw2 = cpu_optim._L2["d"](p, g2, clamped, 0.5, p, False, 4.0)
    assert sq1 == sq2 and sw1 == sw2 == 4.0
    np.testing.assert_array_equal(g1, g2)


# --- gradient clipping --------------------------------------------------------------------------

def _old_clip_(g, clip):
    """``Optimizer._clip_`` before the kernel: g scaled in place on the host."""
    norm = np.sqrt(np.dot(g, g))
    g *= np.minimum(1.0, clip / (norm + 1e-6)).astype(g.dtype)


def _hyper(clip):
    h = np.full(len(table.HYPER_HEADER) + 3, 0.25)
    h[table.HYPER_GSCALE] = 1.0
    h[table.HYPER_CLIP] = clip
    return h


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_opt_clip_writes_the_old_scale_and_leaves_g(module, dtype, rng):
    g = (rng.standard_normal(int(rng.integers(10, 500))) * rng.uniform(0.1, 10)).astype(dtype)
    for clip in (rng.uniform(0.05, 1.0) * np.linalg.norm(g), 2 * np.linalg.norm(g) + 1.0):
        h, g0 = _hyper(clip), g.copy()
        module.opt_clip(g, h)
        np.testing.assert_array_equal(g, g0)
        want = min(1.0, clip / (np.linalg.norm(g.astype(np.float64)) + 1e-6))
        np.testing.assert_allclose(h[table.HYPER_GSCALE], want, **TOL[dtype])
        rest = np.delete(h, table.HYPER_GSCALE)
        np.testing.assert_array_equal(rest, np.delete(_hyper(clip), table.HYPER_GSCALE))


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_opt_clip_keeps_a_nan_norm_nan(module, rng):
    """A NaN gradient must not read as "no clipping" (scale 1): the scale is NaN, as the old
    in-place path made the whole gradient NaN."""
    g = rng.standard_normal(9)
    g[4] = np.nan
    h = _hyper(1.0)
    module.opt_clip(g, h)
    assert np.isnan(h[table.HYPER_GSCALE])


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_opt_clip_scale_of_a_norm_whose_square_overflows_float32(module, rng):
    """A float32 gradient of norm ~1e20 (elements up to 1e21) has a square beyond float32's
    range: the scale is clip / norm, computed in float64, not 0 (every update skipped)."""
    g = (rng.standard_normal(int(rng.integers(10, 500))) * 1e20).astype(np.float32)
    g[0] = 1e21  # its own square overflows float32
    h = _hyper(1.0)
    module.opt_clip(g, h)
    want = 1.0 / np.linalg.norm(g.astype(np.float64))
    np.testing.assert_allclose(h[table.HYPER_GSCALE], want, rtol=1e-12)


def _scaled_norm(g):
    """|g| without overflow: max|g| times the norm of g / max|g|."""
    top = np.abs(g.astype(np.float64)).max()
    return top * np.linalg.norm(g.astype(np.float64) / top)


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_opt_clip_scale_of_a_norm_whose_square_overflows_float64(module, rng):
    """A float64 gradient of norm ~1e200 has a square beyond float64's range: the sum is
    taken again over g / max|g|, and the scale is clip / norm, not 0."""
    g = rng.standard_normal(int(rng.integers(10, 500))) * 1e200
    for clip in (1.0, 1e195):
        h = _hyper(clip)
        module.opt_clip(g, h)
        np.testing.assert_allclose(h[table.HYPER_GSCALE], clip / _scaled_norm(g), rtol=1e-12)
    g[3] = np.nan  # still NaN, not "no clipping"
    h = _hyper(1.0)
    module.opt_clip(g, h)
    assert np.isnan(h[table.HYPER_GSCALE])


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_clip_norm_trains_through_a_gradient_whose_square_overflows_float32(name, rng):
    """The exploding gradient clip_norm exists for: the step moves the parameters by the
    clipped gradient (sgd: lr * clip along g), it is not silently skipped."""
    model = dn.MLP([3, 5, 2], backend="cpu", seed=0)
    opt = dn.optim.get(name, model, lr=0.1, clip_norm=1.0)
    g = (rng.standard_normal(model.n_params) * 1e20).astype(np.float32)
    model.grads[...] = g
    p0 = model.params.copy()
    opt.step()
    step = model.params.astype(np.float64) - p0
    assert np.isfinite(model.params).all() and np.abs(step).max() > 0
    if name == "sgd":
        want = -0.1 * g.astype(np.float64) / np.linalg.norm(g.astype(np.float64))
        np.testing.assert_allclose(step, want, rtol=1e-3, atol=1e-6)


def test_opt_clip_refuses_bad_arguments(rng):
    g = rng.standard_normal(9)
    for bad, match in ((np.ones(3), "fewer than the 4 header slots"),
                       (np.ones(6, np.float32), "float64"), (np.ones((2, 3)), "1-D")):
        with pytest.raises(DataError, match=match):
            cpu.opt_clip(g, bad)
    with pytest.raises(DataError, match="'g'"):
        cpu.opt_clip(g.reshape(3, 3), _hyper(1.0))


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("name", table.STEP_KERNELS)
@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_hyper_step_scales_g_as_it_reads_it(module, name, dtype, rng):
    """``<step>_hyper`` with gscale s == the oracle's by-value step on ``g * s``; g is not
    written."""
    n = 33
    row = table.STEPS[name]
    arrays = [rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)] + [
        ((rng.random(n) + 1.5) if i == 0 else 0.1 * rng.random(n)).astype(dtype)
        for i in range(len(row.buffers) - 1)]
    values = {"lr": 0.01, "wd": 0.01, "mu": 0.9, "rho": 0.9, "eps": 1e-8, "beta1": 0.9,
              "beta2": 0.999, "bc1": 0.27, "bc2": 0.003, "gscale": rng.uniform(0.05, 0.95),
              "clip": 1.0}
    hyper = np.array([values.get(k, 0.0) for k in table.hyper_layout(name)])
    flags = [True] * len(row.flags)
    a, b = [x.copy() for x in arrays], [x.copy() for x in arrays]
    b[1] = b[1] * dtype(values["gscale"])
    getattr(module, f"{name}_hyper")(*a, hyper, *flags)
    getattr(reference, name)(*b, *[values[s] for s in row.scalars], *flags)
    np.testing.assert_array_equal(a[1], arrays[1])
    for x, y in zip(a[:1] + a[2:], b[:1] + b[2:]):
        np.testing.assert_allclose(x, y, **TOL[dtype])


CLIPPED = {
    "sgd": (dn.optim.SGD, dict(weight_decay=0.01)),
    "nesterov": (dn.optim.SGD, dict(momentum=0.8, nesterov=True)),
    "rmsprop_centered_momentum": (dn.optim.RMSProp, dict(momentum=0.5, centered=True)),
    "adam_amsgrad": (dn.optim.Adam, dict(amsgrad=True, weight_decay=0.01)),
    "adamw": (dn.optim.AdamW, dict()),
    # by name: resolved in the test (_sklearn_optim), which skips without scikit-learn
    "sklearn_sgd": ("SklearnSGD", dict(momentum=0.9)),
    "sklearn_adam": ("SklearnAdam", dict()),
}


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("config", sorted(CLIPPED))
def test_clip_norm_update_equals_the_old_in_place_path(config, dtype, rng):
    """Regression (clip_norm folded into the step): every optimizer with clip_norm
    updates as the old path (g clipped in place, then the step) to float32 rounding (float64:
    1e-12), clipping on some steps and not others; and model.grads is left as it was."""
    cls, kwargs = CLIPPED[config]
    cls = from_devnet_sklearn("_optim", cls) if isinstance(cls, str) else cls
    params = rng.standard_normal(dn.MLP([3, 5, 2]).n_params).astype(dtype)
    pairs = []
    for _ in range(2):
        model = dn.MLP([3, 5, 2], dtype=np.dtype(dtype).name, backend="cpu", seed=0)
        model.params[...] = params
        pairs.append((model, cls(model, lr=0.01, clip_norm=1.5, **kwargs)))
    (new_model, new), (old_model, old) = pairs
    tol = dict(rtol=3e-5, atol=3e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for step in range(8):
        g = (rng.standard_normal(new_model.n_params) * (0.2 if step % 3 == 0 else 3)
             ).astype(dtype)
        new_model.grads[...] = g
        old_model.grads[...] = g
        new.step()
        np.testing.assert_array_equal(new_model.grads, g)  # not scaled in place any more
        _old_clip_(old_model.grads, old.clip_norm)
        old.clip_norm = None  # the old path's step, on the clipped gradient
        old.step()
        old.clip_norm = 1.5
        np.testing.assert_allclose(new_model.params, old_model.params, **tol,
                                   err_msg=f"step {step + 1}")
        for k in new.state:
            np.testing.assert_allclose(new.state[k], old.state[k], **tol)


def test_clip_norm_written_later_is_used_and_checked(rng):
    model = dn.MLP([3, 4, 2], dtype="float64", backend="cpu", seed=0)
    opt = dn.optim.SGD(model, lr=0.1)
    g = rng.standard_normal(model.n_params) * 10
    model.grads[...] = g
    opt.step()
    assert opt.hyper[table.HYPER_GSCALE] == 1.0 and opt.hyper[table.HYPER_CLIP] == np.inf
    opt.clip_norm = 0.5
    p0 = model.params.copy()
    opt.step()
    np.testing.assert_allclose(model.params, p0 - 0.1 * g * 0.5 / (np.linalg.norm(g) + 1e-6))
    opt.clip_norm = None  # back to no clipping: the scale resets to 1
    p0 = model.params.copy()
    opt.step()
    np.testing.assert_allclose(model.params, p0 - 0.1 * g)
    opt.clip_norm = "big"
    with pytest.raises(ConfigError, match="clip_norm"):
        opt.step()


# --- the estimators' hook ------------------------------------------------------------------

def _old_hook(model, value, batch, value_scale, alpha):
    """SklearnObjective before the kernel: value scaled in output_grad_, then the L2 term."""
    value = value * value_scale
    sw_sum = batch.x.shape[0] if batch.w is None else batch.w.sum()
    sq = sum(np.dot(layer.W.ravel(), layer.W.ravel()) for layer in model.layers)
    value = value + 0.5 * alpha * sq / sw_sum
    for layer in model.layers:
        layer.dW += (alpha / sw_sum) * layer.W
    return value


@pytest.mark.parametrize("weighted", (False, True))
@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_sklearn_l2_hook_equals_the_unfused_hook(dtype, weighted, rng):
    """Regression (the estimators' L2 term in one kernel): the hook's value and
    gradient are the old hook's (a dot per layer, dW += c W), biases untouched."""
    models = [dn.MLP([4, 6, 5, 3], dtype=dtype, backend="cpu", seed=1) for _ in range(2)]
    params, grads = rng.standard_normal((2, models[0].n_params)).astype(dtype)
    for m in models:
        m.params[...] = params
        m.grads[...] = grads
    n = 11
    x = np.zeros((n, 4), dtype)
    w = rng.uniform(0.2, 2.0, n).astype(dtype) if weighted else None
    batch = Batch(x, None, w)
    alpha, value_scale, value = rng.uniform(1e-4, 1.0), 0.5, rng.uniform(0.1, 2.0)
    hook = from_devnet_sklearn("_optim", "SklearnObjective")(models[0], value_scale, 1.0, alpha)
    got = hook.param_grad_(hook.output_grad_(np.zeros((n, 3), dtype), value, batch), batch)
    want = _old_hook(models[1], value, batch, value_scale, alpha)
    tol = TOL[np.dtype(dtype).type]
    np.testing.assert_allclose(float(got), float(want), **tol)
    np.testing.assert_allclose(models[0].grads, models[1].grads, **tol)
    untouched = dn.MLP([4, 6, 5, 3], dtype=dtype, backend="cpu", seed=1)
    untouched.grads[...] = grads
    for m0, m2 in zip(models[0].layers, untouched.layers):
        np.testing.assert_array_equal(m0.db, m2.db)  # biases are not penalised
    assert hook.spans() is hook.spans()  # built once
