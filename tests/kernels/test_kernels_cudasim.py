"""Every Numba-CUDA kernel under the CUDA simulator against the reference, on NumPy arrays.

Runs only in its own pytest process with ``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported
(``make test`` does that). Shapes are small (the simulator runs every thread in Python) and not
multiples of the block or tile sizes; ``cuda.SIM_MAX_BLOCKS`` keeps grids small so grid-stride
loops wrap around; outputs are poisoned with NaN so an unwritten element fails.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from devnet.errors import ConfigError

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.kernelsim,  # the kernels alone: make test-source's NUMBA_ENABLE_CUDASIM pass
]

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    from devnet.kernels import cuda as kcuda
    from devnet.kernels import reference, scalar
    from devnet.kernels.cuda import launch
    from helpers import ptx_targets as ptx
else:  # pragma: no cover - the module is skipped
    kcuda = reference = scalar = launch = ptx = None

DTYPES = (np.float32, np.float64)
SHAPES = ((1, 1), (1, 7), (9, 1), (33, 5), (70, 3))
TOL = {np.float32: dict(rtol=2e-5, atol=5e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}
ACTS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "softmax")


def _rand(rng, shape, dtype, scale=2.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _poison(a):
    return np.full_like(a, np.nan)


def _close(actual, expected, dtype):
    tol = TOL[dtype]
    big = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * big)


def test_table_complete():
    assert all(callable(getattr(kcuda, n)) for n in reference.KERNEL_NAMES)
    assert set(ACTS) == set(reference.ACTIVATION_NAMES)


def test_simulator_is_on():
    assert kcuda.SIMULATOR and kcuda.NT == 32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ACTS)
def test_bias_act_fwd_and_bwd(act, shape, dtype, rng):
    A0, b = _rand(rng, shape, dtype), _rand(rng, shape[1], dtype)
    keep_z = act in reference.NEEDS_PREACTIVATION
    A1, A2 = A0.copy(), A0.copy()
    Z1, Z2 = (_poison(A0), _poison(A0)) if keep_z else (None, None)
    kcuda.bias_act_fwd(act, A1, b, Z1, alpha=0.03)
    reference.bias_act_fwd(act, A2, b, Z2, alpha=0.03)
    _close(A1, A2, dtype)
    if keep_z:
        _close(Z1, Z2, dtype)

    G = _rand(rng, shape, dtype)
    dZ1, db1 = _poison(G), np.full(shape[1], np.nan, dtype)
    dZ2, db2 = _poison(G), np.full(shape[1], np.nan, dtype)
    kcuda.act_bwd(act, G, A2, Z2, dZ1, db1, alpha=0.03)
    reference.act_bwd(act, G, A2, Z2, dZ2, db2, alpha=0.03)
    _close(dZ1, dZ2, dtype)
    _close(db1, db2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ("relu", "softmax"))
def test_act_bwd_in_place(act, dtype, rng):
    """dZ may be G itself."""
    A = reference.act_fwd(act, _rand(rng, (33, 5), dtype))
    G = _rand(rng, A.shape, dtype)
    dZ2, db2 = _poison(G), np.full(5, np.nan, dtype)
    reference.act_bwd(act, G, A, None, dZ2, db2)
    db1 = np.full(5, np.nan, dtype)
    kcuda.act_bwd(act, G, A, None, G, db1)
    _close(G, dZ2, dtype)
    _close(db1, db2, dtype)


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_nan_input_stays_nan_like_the_reference(act, rng):
    A = _rand(rng, (4, 9), np.float32)
    A[1, 3] = A[2, 0] = np.nan
    out = A.copy()
    kcuda.bias_act_fwd(act, out, np.zeros(9, np.float32), np.empty_like(A))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(A))
    np.testing.assert_array_equal(np.isnan(reference.act_fwd(act, A)), np.isnan(A))


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown activation 'swish'.*relu"):
        kcuda.bias_act_fwd("swish", np.ones((2, 2)), np.ones(2))


def test_needs_preactivation():
    A = np.ones((2, 2))
    with pytest.raises(ValueError, match="pre-activation"):
        kcuda.act_bwd("gelu", A, A, None, A.copy(), np.ones(2))


def _check_loss(name, pred, target, weight, scale, dtype, **kw):
    g1, g2 = _poison(pred), _poison(pred)
    v1 = getattr(kcuda, name)(pred, target, g1, weight, scale, **kw)
    v2 = getattr(reference, name)(pred, target, g2, weight, scale, **kw)
    assert np.ndim(v1) == 0
    _close(g1, g2, dtype)
    _close(float(v1), float(v2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target_kind", ("labels32", "labels64", "probs"))
@pytest.mark.parametrize("weighted", (False, True))
def test_softmax_xent(target_kind, weighted, shape, dtype, rng):
    n, k = shape
    Z = _rand(rng, shape, dtype, scale=3.0)
    if target_kind == "probs":
        T = rng.random(shape).astype(dtype)  # rows need not sum to 1
    else:
        T = rng.integers(0, k, n).astype(np.int32 if target_kind == "labels32" else np.int64)
    w = rng.random(n).astype(dtype) + 0.5 if weighted else None
    _check_loss("softmax_xent", Z, T, w, 1.0 / n, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_grad_aliases_logits(dtype, rng):
    Z = _rand(rng, (33, 5), dtype, scale=3.0)
    T = rng.integers(0, 5, 33)
    g2 = _poison(Z)
    v2 = reference.softmax_xent(Z.copy(), T, g2, None, 0.5)
    v1 = kcuda.softmax_xent(Z, T, Z, None, 0.5)
    _close(Z, g2, dtype)
    _close(float(v1), float(v2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ("sigmoid_bce", "mse", "mae", "huber"))
@pytest.mark.parametrize("weighted", (False, True))
def test_elementwise_losses(name, weighted, shape, dtype, rng):
    P = _rand(rng, shape, dtype)
    if name == "sigmoid_bce":
        T = rng.random(shape).astype(dtype)
    else:
        T = _rand(rng, shape, dtype)
    w = rng.random(shape[0]).astype(dtype) + 0.5 if weighted else None
    kw = {"delta": 0.7} if name == "huber" else {}
    _check_loss(name, P, T, w, 1.0 / P.size, dtype, **kw)


# --- optimizer steps ---------------------------------------------------------------------------

STEP_SIZES = (1, 7, 70, 257)


def _run_step(name, dtype, n, rng, **kw):
    """Run step ``name`` on identical fresh state: the CUDA table's in-place entry
    ``<name>_hyper`` (its scalars in a hyper array) and the oracle's by-value step; compare
    every buffer."""
    p = _rand(rng, n, dtype)
    g = _rand(rng, n, dtype)
    lift = {"pos": 0.1, "big": 1.5}  # positive state; "big" keeps sq - gavg**2 > 0
    bufs = {k: (rng.random(n) + lift[v]).astype(dtype) if v in lift else _rand(rng, n, dtype)
            for k, v in kw.pop("bufs").items()}
    a = {"p": p.copy(), "g": g.copy(), **{k: v.copy() for k, v in bufs.items()}}
    r = {"p": p.copy(), "g": g.copy(), **{k: v.copy() for k, v in bufs.items()}}
    for key in kw.pop("none", ()):
        a[key] = r[key] = None
    from devnet.kernels import table

    flags = {f: kw[f] for f in table.STEPS[name].flags}
    hyper = np.array(table.hyper_values(name, kw))
    getattr(kcuda, f"{name}_hyper")(**a, hyper=hyper, **flags)
    getattr(reference, name)(**r, **kw)
    for key, val in r.items():
        if val is not None:
            _close(a[key], val, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", STEP_SIZES)
def test_sgd(n, dtype, rng):
    _run_step("sgd_step", dtype, n, rng, bufs={}, lr=0.1, wd=0.01)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", STEP_SIZES)
@pytest.mark.parametrize("name", ("momentum_step", "nesterov_step"))
def test_momentum(name, n, dtype, rng):
    _run_step(name, dtype, n, rng, bufs={"buf": "any"}, lr=0.1, mu=0.9, wd=0.01)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", STEP_SIZES)
@pytest.mark.parametrize("centered", (False, True))
@pytest.mark.parametrize("mu", (0.0, 0.9))
def test_rmsprop(mu, centered, n, dtype, rng):
    none = [k for k, used in (("mom", mu > 0), ("gavg", centered)) if not used]
    _run_step("rmsprop_step", dtype, n, rng, bufs={"sq": "big", "mom": "any", "gavg": "pos"},
              none=none, lr=0.01, rho=0.9, mu=mu, eps=1e-8, wd=0.01, centered=centered)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", STEP_SIZES)
@pytest.mark.parametrize("amsgrad", (False, True))
@pytest.mark.parametrize("name", ("adam_step", "adamw_step"))
def test_adam(name, amsgrad, n, dtype, rng):
    t = 3
    _run_step(name, dtype, n, rng, bufs={"m": "any", "v": "pos", "vmax": "pos"},
              none=() if amsgrad else ("vmax",), lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
              wd=0.01, bc1=1 - 0.9**t, bc2=1 - 0.999**t, amsgrad=amsgrad)


def test_ptx_targets_cover_every_kernel():
    names = {n.split("[")[0] for n, _, _ in ptx.PTX_TARGETS}
    for act in scalar.ACTIVATIONS:
        assert f"bias_act_fwd_{act}" in names and f"act_bwd_{act}" in names
    for step in reference.STEP_KERNELS:
        assert step in names


# --- the hyper steps and the advance (graph-ready scalars) ---------------------------

_HYPER_VALUES = {"lr": 0.01, "wd": 0.01, "mu": 0.9, "rho": 0.9, "eps": 1e-8, "beta1": 0.9,
                 "beta2": 0.999, "bc1": 1 - 0.9**3, "bc2": 1 - 0.999**3}


def test_opt_advance_matches_reference(rng):
    table = rng.standard_normal((4, 3))
    for t, t0 in ((0, 0), (2, 0), (3, 0), (30, 5), (1, 8), (4, np.nan)):
        h1 = np.concatenate(([t, t0], rng.standard_normal(7)))
        h2 = h1.copy()
        kcuda.opt_advance(h1, table)
        reference.opt_advance(h2, table)
        np.testing.assert_array_equal(h1, h2)
    from devnet.errors import DataError

    with pytest.raises(DataError, match="no rows"):
        kcuda.opt_advance(h1, table[:0])


def test_hyper_targets_cover_every_step():
    names = {n.split("[")[0] for n, _, _ in ptx.PTX_HYPER_TARGETS}
    assert names == {f"{s}_hyper" for s in reference.STEP_KERNELS} | {"opt_advance"}


# --- the reductions over the flat buffers (the L2 term and clipping, one launch) ---

def _spans(rng, n):
    cuts = np.sort(rng.choice(np.arange(1, n), size=6, replace=False))
    return np.array([(cuts[i], cuts[i + 1]) for i in range(0, 6, 2)], dtype=np.int64)


@pytest.mark.parametrize("weighted", (False, True))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", (40, 150))
def test_l2_penalty_matches_reference_and_numpy(n, dtype, weighted, rng):
    """One launch over random weight spans (grid-stride wraps at n = 150 with 2 blocks of 32),
    the weight sum taken by every block, the value written by the last block."""
    p, g = _rand(rng, n, dtype), _rand(rng, n, dtype)
    spans = _spans(rng, n)
    w = rng.uniform(0.1, 3.0, int(rng.integers(1, 70))).astype(dtype) if weighted else None
    alpha, scale = rng.uniform(1e-3, 2.0), rng.uniform(0.5, 2.0)
    value = np.array([rng.uniform(0, 3)], dtype)
    g1, g2 = g.copy(), g.copy()
    got = kcuda.l2_penalty(p, g1, spans, alpha, w, 9, value, scale)
    want = reference.l2_penalty(p, g2, spans, alpha, w, 9, value, scale)
    assert got.shape == () and got.dtype == dtype
    _close(got, np.asarray(want), dtype)
    _close(g1, g2, dtype)
    sw = 9 if w is None else w.astype(np.float64).sum()
    sq = sum((p[a:b].astype(np.float64) ** 2).sum() for a, b in spans)
    _close(got, value[0] * scale + 0.5 * alpha * sq / sw, dtype)


def test_l2_penalty_checks_host_spans_and_the_kernel_clamps_device_ones(rng):
    from devnet.errors import DataError

    p, g = _rand(rng, 50, np.float64), _rand(rng, 50, np.float64)
    value = np.ones(1)
    with pytest.raises(DataError, match="out of"):
        kcuda.l2_penalty(p, g, np.array([[0, 51]]), 0.1, None, 4, value, 1.0)
    with pytest.raises(DataError, match="1-element float64 array"):
        kcuda.l2_penalty(p, g, np.array([[0, 5]]), 0.1, None, 4, 1.0, 1.0)
    # unchecked values (a device array's are never read on the host): clamped in the kernel
    wild = np.array([[-9, 20], [15, 30], [40, 10**6]], np.int64)
    clamped = np.array([[0, 20], [20, 30], [40, 50]], np.int64)
    outs = []
    for spans in (wild, clamped):
        g1 = g.copy()
        c = launch.Call(p)
        grid, block = launch.config(c, "flat", p.size)
        out = np.full(1, np.nan)
        launch.kernel("l2_penalty", np.float64)(
            c, grid, block, p, g1, spans, 0.5, p, False, 4.0, value, 1.0,
            c.scratch(grid[0] + 1), c.counters(1), out)
        outs.append((g1, out))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", (7, 150))
def test_opt_clip_matches_reference(n, dtype, rng):
    from devnet.kernels import table

    g = _rand(rng, n, dtype)
    norm = np.linalg.norm(g.astype(np.float64))
    for clip in (0.3 * norm, 3 * norm, np.inf):
        h1 = rng.standard_normal(len(table.HYPER_HEADER) + 4)
        h1[table.HYPER_CLIP] = clip
        h2 = h1.copy()
        kcuda.opt_clip(g, h1)
        reference.opt_clip(g, h2)
        slot = table.HYPER_GSCALE
        np.testing.assert_array_equal(np.delete(h1, slot), np.delete(h2, slot))
        _close(h1[slot], h2[slot], dtype)
        assert (h1[table.HYPER_GSCALE] == 1.0) == (clip > norm)
    g[3] = np.nan
    kcuda.opt_clip(g, h1)
    assert np.isnan(h1[table.HYPER_GSCALE])


@pytest.mark.parametrize("n", (7, 150))
def test_opt_clip_scale_of_a_norm_whose_square_overflows_float32(n, rng):
    from devnet.kernels import table

    g = (rng.standard_normal(n) * 1e20).astype(np.float32)
    g[0] = 1e21  # its own square overflows float32
    h = np.zeros(len(table.HYPER_HEADER) + 4)
    h[table.HYPER_CLIP] = 1.0
    kcuda.opt_clip(g, h)
    want = 1.0 / np.linalg.norm(g.astype(np.float64))
    np.testing.assert_allclose(h[table.HYPER_GSCALE], want, rtol=1e-12)


# the simulator's threads square NumPy scalars, which warn where a GPU overflows silently
@pytest.mark.filterwarnings("ignore:.*overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("n", (7, 150))
def test_opt_clip_scale_of_a_norm_whose_square_overflows_float64(n, rng):
    from devnet.kernels import table

    g = rng.standard_normal(n) * 1e200
    h = np.zeros(len(table.HYPER_HEADER) + 4)
    h[table.HYPER_CLIP] = 1.0
    kcuda.opt_clip(g, h)
    top = np.abs(g).max()
    want = 1.0 / (top * np.linalg.norm(g / top))
    np.testing.assert_allclose(h[table.HYPER_GSCALE], want, rtol=1e-12)
    h2 = h.copy()
    reference.opt_clip(g, h2)
    np.testing.assert_allclose(h[table.HYPER_GSCALE], h2[table.HYPER_GSCALE], rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ("sgd_step", "nesterov_step", "rmsprop_step", "adam_step",
                                  "adamw_step"))
def test_hyper_step_reads_g_times_gscale(name, dtype, rng):
    """hyper's gscale (the clip's scale) multiplies g as the kernel reads it: the oracle's
    by-value step on ``g * gscale``; g itself unchanged."""
    from devnet.kernels import table

    row = table.STEPS[name]
    n = 70
    values = {k: v * rng.uniform(0.5, 1.0) for k, v in _HYPER_VALUES.items()}
    values["gscale"] = rng.uniform(0.05, 0.95)
    hyper = np.array([values.get(k, table.HYPER_DEFAULTS.get(k, 0.0))
                      for k in table.hyper_layout(name)])
    arrays = [_rand(rng, n, dtype), _rand(rng, n, dtype)] + [
        ((rng.random(n) + 1.5) if i == 0 else 0.1 * rng.random(n)).astype(dtype)
        for i in range(len(row.buffers) - 1)]
    flags = [True] * len(row.flags)
    a, b = [x.copy() for x in arrays], [x.copy() for x in arrays]
    b[1] = b[1] * dtype(values["gscale"])
    getattr(kcuda, f"{name}_hyper")(*a, hyper, *flags)
    getattr(reference, name)(*b, *[values[s] for s in row.scalars], *flags)
    np.testing.assert_array_equal(a[1], arrays[1])
    for x, y in zip(a[:1] + a[2:], b[:1] + b[2:]):
        _close(x, y, dtype)
