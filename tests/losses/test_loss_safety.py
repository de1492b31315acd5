"""Losses: bad labels, predictions, targets and weights give a DataError, never memory
corruption, a wrapped label, a truncated gradient or a silent NaN.

Calls that could corrupt memory if a guard regressed (the raw Numba kernels with out-of-range
labels) run in a subprocess, so a segfault fails a test instead of killing pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from devnet.kernels import cpu, reference

import devnet as dn
from devnet.losses import LOSSES

TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def _isolated(code: str, timeout: float = 240) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned as a dict."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _logits(rng, n, k, dtype=np.float64):
    return (2 * rng.standard_normal((n, k))).astype(dtype)


def _expected_xent(z, labels, w=None):
    """Mean softmax cross-entropy and its gradient, in float64, from the definition."""
    z = z.astype(np.float64)
    n, k = z.shape
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.eye(k)[labels]
    w = np.ones(n) if w is None else w / w.mean()
    value = (w * -np.log((p * onehot).sum(axis=1))).mean()
    return value, w[:, None] * (p - onehot) / n


# --- labels ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [3, -1, 10**9, -10**12])
def test_bare_cross_entropy_rejects_out_of_range_labels(bad, rng):
    z = _logits(rng, 6, 3)
    labels = rng.integers(0, 3, 6)
    labels[int(rng.integers(6))] = bad
    loss = dn.losses.get("cross_entropy")
    with pytest.raises(dn.DataError, match=rf"\[0, 3\).*{bad}"):
        loss(z, labels)
    grad = np.zeros_like(z)
    with pytest.raises(dn.DataError, match=str(bad)):
        loss.forward_backward_(z, labels, grad)
    assert not grad.any()  # refused before the kernel ran


@pytest.mark.parametrize("labels", [
    np.array([0, 1, 2**64 - 1], dtype=np.uint64), np.array([0.0, np.nan, 1.0]),
    np.array([0.0, 1.5, 1.0]), np.array([0.0, np.inf, 1.0]), np.array([0, 1, 2], dtype=bool),
], ids=["uint64_max", "nan", "fraction", "inf", "bool"])
def test_bare_cross_entropy_rejects_labels_that_are_not_class_indices(labels, rng):
    with pytest.raises(dn.DataError, match="cross_entropy"):
        dn.losses.get("cross_entropy")(_logits(rng, 3, 3), labels)


def test_label_error_names_the_labels_not_n_out(rng):
    with pytest.raises(dn.DataError) as info:
        dn.losses.get("cross_entropy")(_logits(rng, 4, 2), np.array([-1, 1, -1, 1]))
    assert "-1" in str(info.value) and "n_out" not in str(info.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_whole_number_float_labels_match_integer_labels(dtype, rng):
    z = _logits(rng, 9, 4, dtype)
    labels = rng.integers(0, 4, 9)
    loss = dn.losses.get("cross_entropy")
    v_int, g_int = loss(z, labels)
    v_float, g_float = loss(z, labels.astype(np.float64))
    assert v_float == v_int
    np.testing.assert_array_equal(g_float, g_int)
    expected, grad = _expected_xent(z, labels)
    assert v_int == pytest.approx(expected, rel=TOL[dtype]["rtol"])
    np.testing.assert_allclose(g_int, grad, **TOL[dtype])


@pytest.fixture(scope="module")
def isolated():
    """The calls that would corrupt memory if a label guard regressed, in one subprocess."""
    return _isolated("""
        import json, numpy as np, devnet as dn
        from devnet.kernels import cpu, reference
        out = {}
        rng = np.random.default_rng()
        res = {}
        for dt in (np.float32, np.float64):
            z = rng.standard_normal((5, 3)).astype(dt)
            buf = np.full((9, 3), 7.0, dtype=dt)
            grad = buf[2:7]
            labels = np.array([0, 3, 1, -1, 10**9])
            loss = dn.losses.get("cross_entropy")
            v = loss.forward_backward_(z, labels, grad, checked=True)
            res[dt.__name__] = dict(value=repr(float(v)),
                                    nan_rows=np.isnan(grad).all(axis=1).tolist(),
                                    guard=bool((buf[:2] == 7).all() and (buf[7:] == 7).all()))
        out['checked'] = res
        rng = np.random.default_rng()
        bad = {"k": 4, "minus1": -1, "huge": 10**9, "very_negative": -10**12}
        res = []
        for parallel_min in (1 << 62, 0):
            cpu.set_parallel_min(parallel_min)
            for dt in (np.float32, np.float64):
                for ldt in (np.int64, np.int32, np.uint8, np.uint64):
                    for name, b in bad.items():
                        if not np.iinfo(ldt).min <= b <= np.iinfo(ldt).max:
                            continue
                        z = rng.standard_normal((6, 4)).astype(dt)
                        t = rng.integers(0, 4, 6).astype(ldt)
                        t[2] = b
                        for alias in (False, True):
                            buf = np.full((10, 4), 7.0, dtype=dt)
                            g = buf[2:8]
                            if alias:
                                g[...] = z
                            zz = g if alias else z.copy()
                            v = cpu.softmax_xent(zz, t, g, None, 1 / 6)
                            ok = [i for i in range(6) if i != 2]
                            gr = np.empty((6, 4))
                            good = np.where(np.arange(6) == 2, 0, t.astype(np.int64))
                            reference.softmax_xent(z.astype(np.float64), good, gr, None, 1 / 6)
                            res.append(dict(
                                case=f"{dt.__name__} {np.dtype(ldt).name} {name} "
                                     f"par={parallel_min == 0} alias={alias}",
                                nan_value=bool(np.isnan(v)),
                                nan_row=bool(np.isnan(g[2]).all()),
                                others=bool(np.allclose(g[ok], gr[ok], rtol=1e-4,
                                                        atol=1e-6)),
                                guard=bool((buf[:2] == 7).all() and (buf[8:] == 7).all())))
        out['kernels'] = res
        print(json.dumps(out))
    """)


def test_checked_call_skips_the_label_scan_and_the_kernel_still_stays_in_bounds(isolated):
    """``checked=True`` (what fit passes) reads no data; a bad label then gives NaN, not a
    write past the buffer: grad is a window of a larger buffer whose guard rows must stay."""
    for got in isolated["checked"].values():
        assert got == dict(value="nan", nan_rows=[False, True, False, True, True], guard=True)


# --- the raw kernels ---------------------------------------------------------------------------

def test_cpu_kernel_out_of_range_label_gives_nan_row_not_memory_corruption(isolated):
    """Every label dtype, serial and parallel kernels, grad aliasing the logits or not."""
    out = isolated["kernels"]
    bad = [r for r in out if not (r["nan_value"] and r["nan_row"] and r["others"]
                                  and r["guard"])]
    assert len(out) > 40 and not bad, bad


@pytest.mark.parametrize("kernels", [cpu, reference], ids=["cpu", "reference"])
def test_minus_one_label_does_not_wrap_to_the_last_class(kernels, rng):
    z = _logits(rng, 3, 4)
    grad = np.zeros_like(z)
    value = kernels.softmax_xent(z, np.array([0, -1, 2]), grad, None, 1 / 3)
    assert np.isnan(value) and np.isnan(grad[1]).all()
    assert np.isfinite(grad[[0, 2]]).all()


def test_reference_kernel_flags_fractional_float_labels(rng):
    z = _logits(rng, 3, 4)
    grad = np.zeros_like(z)
    reference.softmax_xent(z, np.array([0.0, 1.5, np.nan]), grad, None, 1.0)
    assert np.isfinite(grad[0]).all() and np.isnan(grad[1:]).all()


@pytest.mark.parametrize("case", [
    "grad_shape", "grad_dtype", "weight_shape", "float_labels", "no_columns", "target_shape",
    "list_target", "complex_target", "pred_1d", "pred_float16",
])
def test_cpu_kernel_entry_rejects_bad_arguments(case, rng):
    z = _logits(rng, 4, 3, np.float32)
    t, g, w, kernel = rng.integers(0, 3, 4), np.empty_like(z), None, cpu.softmax_xent
    if case == "grad_shape":
        g = np.empty((3, 3), np.float32)
    elif case == "grad_dtype":
        g = np.empty((4, 3))
    elif case == "weight_shape":
        w = np.ones(3, np.float32)
    elif case == "float_labels":
        t = t.astype(np.float64)
    elif case == "no_columns":
        z, g = np.empty((4, 0), np.float32), np.empty((4, 0), np.float32)
    elif case == "target_shape":
        kernel, t = cpu.mse, np.zeros((3, 4), np.float32)
    elif case == "list_target":
        kernel, t = cpu.mse, z.tolist()
    elif case == "complex_target":
        kernel, t = cpu.huber, z.astype(np.complex64)
    elif case == "pred_1d":
        z, g = z[:, 0].copy(), g[:, 0].copy()
    else:
        z, g = z.astype(np.float16), g.astype(np.float16)
    with pytest.raises(dn.DataError):
        kernel(z, t, g, w, 1.0)


# --- predictions and targets of the wrong kind: clear errors ------------------------------

@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex128])
def test_integer_predictions_are_refused_not_given_an_integer_gradient(name, dtype):
    pred = np.ones((4, 2), dtype=dtype)
    target = np.array([0, 1, 1, 0]) if name == "cross_entropy" else np.ones((4, 2))
    with pytest.raises(dn.DataError, match="float32, float64"):
        dn.losses.get(name)(pred, target)
    with pytest.raises(dn.DataError, match="floating point"):
        dn.losses.get(name).forward_backward_(pred, target, np.empty_like(pred))


def test_float16_predictions_are_widened(rng):
    p = rng.standard_normal((5, 2)).astype(np.float16)
    t = rng.standard_normal((5, 2))
    value, grad = dn.losses.get("mse")(p, t)
    assert grad.dtype == np.float32
    assert value == pytest.approx(((p.astype(np.float64) - t) ** 2).mean(), rel=1e-5)


def test_get_rejects_unknown_keywords():
    with pytest.raises(dn.ConfigError, match="delta.*valid: none"):
        dn.losses.get("mse", delta=1)
    with pytest.raises(dn.ConfigError, match="valid: delta"):
        dn.losses.get("huber", beta=1)
    with pytest.raises(dn.ConfigError, match="valid losses"):
        dn.losses.get("hinge")
    with pytest.raises(dn.ConfigError):
        dn.losses.get(dn.losses.get("mse"), delta=1)


@pytest.mark.parametrize("delta", [np.float32(0.5), np.int64(2), 1])
def test_huber_accepts_numpy_scalar_delta(delta):
    assert dn.losses.get("huber", delta=delta).delta == float(delta)


@pytest.mark.parametrize("delta", [True, 0, -1.0, np.nan, "1"])
def test_huber_rejects_bad_delta(delta):
    with pytest.raises(dn.ConfigError, match="delta"):
        dn.losses.get("huber", delta=delta)


def test_loss_accepts_lists(rng):
    p = rng.standard_normal((3, 2))
    t = rng.standard_normal((3, 2))
    value, grad = dn.losses.get("mse")(p.tolist(), t.tolist())
    assert value == pytest.approx(((p - t) ** 2).mean(), rel=1e-12)
    np.testing.assert_allclose(grad, 2 * (p - t) / 6, rtol=1e-12)
    labels = rng.integers(0, 2, 3)
    value, _ = dn.losses.get("cross_entropy")(p.tolist(), labels.tolist())
    assert value == pytest.approx(_expected_xent(p, labels)[0], rel=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("case", ["ragged", "empty", "nan_pred", "inf_pred", "nan_target",
                                  "short_target", "pred_1d", "string", "none"])
def test_bad_inputs_are_data_errors(name, case, rng):
    p = rng.standard_normal((4, 2))
    t = (rng.integers(0, 2, 4) if name == "cross_entropy"
         else rng.uniform(0, 1, (4, 2)))
    if case == "ragged":
        p = [[1.0, 2.0], [3.0]]
    elif case == "empty":
        p, t = np.empty((0, 2)), t[:0]
    elif case == "nan_pred":
        p[1, 1] = np.nan
    elif case == "inf_pred":
        p[0, 0] = -np.inf
    elif case == "nan_target":
        t = t.astype(np.float64)
        t[1] = np.nan
    elif case == "short_target":
        t = t[:3]
    elif case == "pred_1d":
        p = p[:, 0]
    elif case == "string":
        t = "abc"
    else:
        p = None
    with pytest.raises(dn.DataError):
        dn.losses.get(name)(p, t)


def test_target_beyond_float32_range_is_a_data_error(rng):
    p = rng.standard_normal((3, 1)).astype(np.float32)
    with pytest.raises(dn.DataError, match="range of float32"):
        dn.losses.get("mse")(p, np.array([1.0, 1e300, 2.0]))


@pytest.mark.parametrize("bad", [-0.5, 1.5, np.nan])
def test_binary_targets_outside_0_1_are_data_errors(bad, rng):
    t = rng.integers(0, 2, (4, 3)).astype(np.float64)
    t[2, 1] = bad
    with pytest.raises(dn.DataError, match=r"\[0, 1\]"):
        dn.losses.get("binary_cross_entropy")(rng.standard_normal((4, 3)), t)


def test_binary_targets_may_be_bool_or_int(rng):
    z = rng.standard_normal((5, 2))
    t = rng.integers(0, 2, (5, 2))
    loss = dn.losses.get("binary_cross_entropy")
    v_float, g_float = loss(z, t.astype(np.float64))
    for target in (t, t.astype(bool)):
        v, g = loss(z, target)
        assert v == v_float
        np.testing.assert_array_equal(g, g_float)


@pytest.mark.parametrize("probs", ["shape", "negative", "above_one", "nan"])
def test_cross_entropy_probability_targets_are_checked(probs, rng):
    t = rng.dirichlet(np.ones(3), 4)
    if probs == "shape":
        t = t[:, :2]
    elif probs == "negative":
        t[0, 0] = -0.1
    elif probs == "above_one":
        t[0, 0] = 1.1
    else:
        t[3, 2] = np.nan
    with pytest.raises(dn.DataError, match="cross_entropy"):
        dn.losses.get("cross_entropy")(rng.standard_normal((4, 3)), t)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_cross_entropy_probability_rows_must_sum_to_1(dtype, rng):
    """A row that is no distribution is refused (an all-zero row scored loss 0 and taught
    nothing); rows summing to 1 within the dtype's rounding (sqrt(eps)) pass."""
    loss = dn.losses.get("cross_entropy")
    z = _logits(rng, 6, 4, dtype)
    t = rng.dirichlet(np.ones(4), 6).astype(dtype)
    t[0] = 0.25  # uniform: scaled by 1.5 below, it stays within [0, 1] and only its sum is off
    loss(z, t)  # float rounding of a normalised row
    loss(z, (t * (1 + 0.1 * np.sqrt(np.finfo(dtype).eps))).astype(dtype))
    for row, scale in ((2, 0.0), (5, 0.9), (0, 1.5)):
        bad = t.copy()
        bad[row] *= scale
        with pytest.raises(dn.DataError, match=f"sum to 1.*first row {row} summing to "
                                               f"{float(bad[row].astype(np.float64).sum()):g}"):
            loss(z, bad)


def test_cross_entropy_accepts_one_hot_integer_targets(rng):
    z = _logits(rng, 6, 3)
    labels = rng.integers(0, 3, 6)
    loss = dn.losses.get("cross_entropy")
    v_onehot, g_onehot = loss(z, np.eye(3, dtype=np.int64)[labels])
    v, g = loss(z, labels)
    assert v_onehot == pytest.approx(v, rel=1e-12)
    np.testing.assert_allclose(g_onehot, g, rtol=1e-12, atol=1e-15)


# --- sample weights, the loss side --------------------------------------------------------------

@pytest.mark.parametrize("weights", ["shape", "negative", "all_zero", "nan", "inf", "complex",
                                     "2d"])
def test_bad_sample_weight_is_a_data_error_naming_it(weights, rng):
    n = 5
    w = {"shape": np.ones(n - 1), "negative": np.array([1, 2, -1, 1, 1.0]),
         "all_zero": np.zeros(n), "nan": np.array([1, np.nan, 1, 1, 1.0]),
         "inf": np.array([1, np.inf, 1, 1, 1.0]), "complex": np.ones(n, np.complex64),
         "2d": np.ones((n, 1))}[weights]
    with pytest.raises(dn.DataError, match="sample_weight"):
        dn.losses.get("mse")(rng.standard_normal((n, 2)), rng.standard_normal((n, 2)), w)


@pytest.mark.parametrize("scale,wdtype", [(1e38, np.float32), (1e300, np.float64),
                                          (1.7e308, np.float64), (1e-300, np.float64)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_sample_weights_do_not_overflow_the_normalisation(scale, wdtype, dtype, rng):
    n = 6
    z = _logits(rng, n, 3, dtype)
    labels = rng.integers(0, 3, n)
    rel = rng.uniform(0.25, 1.0, n)
    w = (rel * scale).astype(wdtype)
    loss = dn.losses.get("cross_entropy")
    value, grad = loss(z, labels, w)
    expected, expected_grad = _expected_xent(z, labels, rel)
    assert value == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)
    # fit's path (weights already checked and in the model's dtype): still normalised in
    # float64, so float32 weights of 1e38 are not all turned into 0
    with np.errstate(over="ignore", under="ignore"):
        w_model = w.astype(dtype)
    if np.isfinite(w_model).all() and (w_model > 0).all() and scale <= 1e300:
        g = np.empty_like(z)
        checked = loss.forward_backward_(z, labels, g, w_model, checked=True)
        assert float(checked) == pytest.approx(expected, rel=1e-5)
        np.testing.assert_allclose(g, expected_grad, rtol=1e-4, atol=1e-7)


def test_batch_with_all_zero_weights_contributes_nothing_not_nan(rng):
    z = _logits(rng, 4, 3, np.float32)
    grad = np.empty_like(z)
    value = dn.losses.get("cross_entropy").forward_backward_(
        z, rng.integers(0, 3, 4), grad, np.zeros(4, np.float32), checked=True)
    assert float(value) == 0.0 and not grad.any()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_weighted_losses_match_the_definition(name, rng):
    """Fresh random data: every loss with weights equals its weighted mean from the formula."""
    n, k = 7, 3
    p = 2 * rng.standard_normal((n, k))
    w = rng.uniform(0, 2, n)
    w[0] = 0.0
    wn = w / w.mean()
    loss = dn.losses.get(name)
    if name == "cross_entropy":
        t = rng.integers(0, k, n)
        expected, expected_grad = _expected_xent(p, t, w)
    else:
        t = rng.uniform(0, 1, (n, k)) if name == "binary_cross_entropy" \
            else rng.standard_normal((n, k))
        r = p - t
        if name == "mse":
            v, d = r * r, 2 * r
        elif name == "mae":
            v, d = np.abs(r), np.sign(r)
        elif name == "huber":
            v = np.where(np.abs(r) <= 1, 0.5 * r * r, np.abs(r) - 0.5)
            d = np.clip(r, -1, 1)
        elif name == "poisson":  # half deviance, log link: mu = exp(p)
            t = np.abs(t)
            mu = np.exp(p)
            v, d = t * np.log(t / mu) - t + mu, mu - t
        else:
            s = 1 / (1 + np.exp(-p))
            v, d = -(t * np.log(s) + (1 - t) * np.log(1 - s)), s - t
        expected = (wn[:, None] * v).mean()
        expected_grad = wn[:, None] * d / (n * k)
    value, grad = loss(p, t, w)
    assert value == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-9, atol=1e-14)


def test_a_loss_is_checked_by_the_target_kind_it_declares(rng):
    from devnet.losses import TARGETS
    from devnet.validation import check_y

    assert all(cls.target in TARGETS for cls in LOSSES.values())

    class Counts(dn.losses.MSE):  # squared error on counts: the kind brings poisson's rule
        name, target = "counts", "non_negative"

    loss, n = Counts(), int(rng.integers(3, 9))
    pred = rng.standard_normal((n, 2))
    negative = np.abs(rng.standard_normal((n, 2)))
    negative[rng.integers(n), rng.integers(2)] = -1.5
    with pytest.raises(dn.DataError, match="counts targets must be >= 0.*minimum of -1.5"):
        loss(pred, negative)
    model = dn.MLP([3, 2], backend="cpu", dtype="float64")
    with pytest.raises(dn.DataError, match="counts targets must be >= 0"):
        check_y(model, loss, negative, n)
    value, grad = loss(pred, np.abs(negative))
    assert np.isfinite(value) and np.isfinite(grad).all()
