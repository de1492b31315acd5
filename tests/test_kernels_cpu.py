"""Every Numba CPU kernel against the reference: fresh random inputs, poisoned outputs."""

from __future__ import annotations

import numpy as np
import pytest
from devnet.kernels import cpu, reference, scalar

from devnet.errors import ConfigError

DTYPES = (np.float32, np.float64)
# 1x1, 1xn, nx1, and sizes that are multiples of no block or chunk size
SHAPES = ((1, 1), (1, 17), (33, 1), (1000, 3), (257, 1031), (5, 7), (130, 10))
TOL = {np.float32: dict(rtol=2e-5, atol=5e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}


@pytest.fixture(params=["serial", "parallel"])
def mode(request, monkeypatch):
    """Run each kernel both below and above the parallel threshold."""
    monkeypatch.setattr(cpu, "PARALLEL_MIN", 1 << 62 if request.param == "serial" else 0)
    return request.param


def _rand(rng, shape, dtype, scale=2.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _poison(a):
    return np.full_like(a, np.nan)


def _close(actual, expected, dtype, scale=1.0):
    """Relative tolerance by dtype, plus an absolute one relative to the largest value."""
    tol = TOL[dtype]
    big = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale * big)


def test_table_complete():
    assert all(callable(getattr(cpu, n)) for n in reference.KERNEL_NAMES)
    assert list(scalar.ACT_CODES) == list(reference.ACTIVATION_NAMES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", reference.ACTIVATION_NAMES)
def test_bias_act_fwd_and_bwd(act, shape, dtype, mode):
    rng = np.random.default_rng()
    A0, b = _rand(rng, shape, dtype), _rand(rng, shape[1], dtype)
    keep_z = act in reference.NEEDS_PREACTIVATION
    A1, A2 = A0.copy(), A0.copy()
    Z1, Z2 = (_poison(A0), _poison(A0)) if keep_z else (None, None)
    cpu.bias_act_fwd(act, A1, b, Z1)
    reference.bias_act_fwd(act, A2, b, Z2)
    _close(A1, A2, dtype)
    if keep_z:
        _close(Z1, Z2, dtype)

    G = _rand(rng, shape, dtype)
    dZ, db = _poison(G), np.full(shape[1], np.nan, dtype)
    dZr, dbr = _poison(G), np.full(shape[1], np.nan, dtype)
    cpu.act_bwd(act, G, A2, Z2, dZ, db)
    reference.act_bwd(act, G, A2, Z2, dZr, dbr)
    _close(dZ, dZr, dtype)
    _close(db, dbr, dtype, scale=np.sqrt(shape[0]) * 10)

    Gc = G.copy()  # dZ may be G itself
    cpu.act_bwd(act, Gc, A2, Z2, Gc, db)
    _close(Gc, dZr, dtype)


def test_act_bwd_needs_z_and_unknown_names():
    A = np.ones((2, 2))
    with pytest.raises(ValueError):
        cpu.act_bwd("gelu", A, A, None, A.copy(), np.ones(2))
    with pytest.raises(ConfigError, match="relu"):
        cpu.bias_act_fwd("relux", A, np.ones(2))


def test_extreme_inputs_stay_finite():
    A = np.array([[-800.0, -40.0, 0.0, 1e-9, 40.0, 800.0]])
    for act in ("sigmoid", "tanh", "silu", "gelu"):
        out = A.copy()
        cpu.bias_act_fwd(act, out, np.zeros(6), np.empty_like(A))
        expected = reference.act_fwd(act, A)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)


def _weights(rng, n, dtype, weighted):
    return rng.uniform(0.1, 2.0, n).astype(dtype) if weighted else None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ((1, 1), (1, 9), (37, 1), (1000, 3), (257, 1031)))
@pytest.mark.parametrize("target_kind", ["labels", "probs"])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_xent(shape, dtype, target_kind, weighted, mode):
    rng = np.random.default_rng()
    n, k = shape
    Z = _rand(rng, shape, dtype, scale=3.0)
    if target_kind == "labels":
        T = rng.integers(0, k, n)
    else:
        T = rng.uniform(0, 1, shape).astype(dtype)  # rows need not sum to 1
    w = _weights(rng, n, dtype, weighted)
    scale = 1.0 / n
    g, gr = _poison(Z), _poison(Z)
    v = cpu.softmax_xent(Z, T, g, w, scale)
    vr = reference.softmax_xent(Z, T, gr, w, scale)
    _close(g, gr, dtype)
    _close(v, vr, dtype)
    Zc = Z.copy()  # grad may be the logits buffer
    v2 = cpu.softmax_xent(Zc, T, Zc, w, scale)
    _close(Zc, gr, dtype)
    _close(v2, vr, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ((1, 1), (1, 9), (37, 1), (1000, 3), (257, 1031)))
@pytest.mark.parametrize("name", ["sigmoid_bce", "mse", "mae", "huber"])
@pytest.mark.parametrize("weighted", [False, True])
def test_elementwise_losses(name, shape, dtype, weighted, mode):
    rng = np.random.default_rng()
    P = _rand(rng, shape, dtype, scale=3.0)
    if name == "sigmoid_bce":
        T = rng.uniform(0, 1, shape).astype(dtype)
        P[0, 0] = 50.0  # saturated logits on both sides
        if P.size > 1:
            P.flat[1] = -50.0
    else:
        T = _rand(rng, shape, dtype)
        T.flat[0] = P.flat[0]  # r == 0: sign is 0
    w = _weights(rng, shape[0], dtype, weighted)
    kwargs = {"delta": 0.7} if name == "huber" else {}
    g, gr = _poison(P), _poison(P)
    v = getattr(cpu, name)(P, T, g, w, 0.5, **kwargs)
    vr = getattr(reference, name)(P, T, gr, w, 0.5, **kwargs)
    _close(g, gr, dtype)
    _close(v, vr, dtype, scale=P.size)


STEPS = {
    "sgd_step": lambda b: ((b["p"], b["g"]), dict(lr=0.05, wd=0.01)),
    "momentum_step": lambda b: ((b["p"], b["g"], b["s1"]), dict(lr=0.05, mu=0.9, wd=0.01)),
    "nesterov_step": lambda b: ((b["p"], b["g"], b["s1"]), dict(lr=0.05, mu=0.9, wd=0.01)),
}
RMSPROP = [  # (mu, centered)
    (0.0, False), (0.9, False), (0.0, True), (0.9, True),
]


def _buffers(rng, n, dtype):
    return {
        "p": _rand(rng, n, dtype),
        "g": _rand(rng, n, dtype),
        "s1": _rand(rng, n, dtype),
        "sq": rng.uniform(0.5, 2.0, n).astype(dtype),
        "s2": (0.1 * rng.standard_normal(n)).astype(dtype),
        "s3": _rand(rng, n, dtype),
        "vmax": rng.uniform(0.0, 3.0, n).astype(dtype),
    }


def _copy(bufs):
    return {k: v.copy() for k, v in bufs.items()}


def _check_all(b1, b2, dtype):
    for key in b1:
        _close(b1[key], b2[key], dtype, scale=10)


SIZES = (1, 7, 1000, 100_003)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", list(STEPS))
def test_simple_steps(name, n, dtype, mode):
    bufs = _buffers(np.random.default_rng(), n, dtype)
    b1, b2 = _copy(bufs), _copy(bufs)
    args1, kw = STEPS[name](b1)
    args2, _ = STEPS[name](b2)
    getattr(cpu, name)(*args1, **kw)
    getattr(reference, name)(*args2, **kw)
    assert not np.array_equal(b1["p"], bufs["p"])
    _check_all(b1, b2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("mu,centered", RMSPROP)
def test_rmsprop_step(mu, centered, n, dtype, mode):
    bufs = _buffers(np.random.default_rng(), n, dtype)
    # centered needs sq > gavg**2: sq in [0.5, 2], gavg ~ 0.1
    b1, b2 = _copy(bufs), _copy(bufs)
    for b, mod in ((b1, cpu), (b2, reference)):
        mod.rmsprop_step(b["p"], b["g"], b["sq"], b["s3"] if mu else None,
                         b["s2"] if centered else None, lr=0.01, rho=0.9, mu=mu, eps=1e-8,
                         wd=0.01, centered=centered)
    _check_all(b1, b2, dtype)
    if not mu:
        np.testing.assert_array_equal(b1["s3"], bufs["s3"])  # unused state untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", ["adam_step", "adamw_step"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_steps(name, amsgrad, n, dtype, mode):
    bufs = _buffers(np.random.default_rng(), n, dtype)
    b1, b2 = _copy(bufs), _copy(bufs)
    t = 3
    for b, mod in ((b1, cpu), (b2, reference)):
        getattr(mod, name)(b["p"], b["g"], b["s1"], b["sq"], b["vmax"] if amsgrad else None,
                           lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.05,
                           bc1=1 - 0.9**t, bc2=1 - 0.999**t, amsgrad=amsgrad)
    _check_all(b1, b2, dtype)


def test_scalar_functions_run_as_plain_python():
    assert abs(scalar.exp(1.5) - np.exp(1.5)) < 1e-15 * np.exp(1.5)
    assert abs(scalar.log1p(0.3) - np.log1p(0.3)) < 1e-16
    assert abs(scalar.tanh_of(-0.01) - np.tanh(-0.01)) < 1e-18
    for code, name in enumerate(scalar.ACTIVATIONS):
        value, _ = scalar.ACTIVATIONS[name]
        assert scalar.act_value(code, 0.3, 0.01) == value(0.3, 0.01)
