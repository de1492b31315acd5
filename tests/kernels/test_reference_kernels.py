"""kernels/reference.py against plain NumPy expressions of the same math (the oracle's oracle)."""

import math

import numpy as np
import pytest
from devnet.kernels import reference as ref

SHAPES = [(1, 1), (1, 7), (9, 1), (13, 5)]
ACTS = [a for a in ref.ACTIVATION_NAMES]


def _plain_act(act, z, alpha=0.01):
    """Each activation written out with math.*, element by element."""
    if act == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    f = {
        "identity": lambda x: x,
        "relu": lambda x: x if x > 0 else 0.0,
        "leaky_relu": lambda x: x if x > 0 else alpha * x,
        "sigmoid": lambda x: 1 / (1 + math.exp(-x)),
        "tanh": math.tanh,
        "gelu": lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi)
                                                   * (x + 0.044715 * x**3))),
        "silu": lambda x: x / (1 + math.exp(-x)),
    }[act]
    return np.vectorize(f, otypes=[np.float64])(z)


def _numeric_act_grad(act, z, eps=1e-6):
    return (_plain_act(act, z + eps) - _plain_act(act, z - eps)) / (2 * eps)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ACTS)
def test_bias_act_fwd(act, shape, rng):
    A = rng.standard_normal(shape)
    b = rng.standard_normal(shape[1])
    Z = np.full(shape, np.nan) if act in ref.NEEDS_PREACTIVATION else None
    expected = _plain_act(act, A + b)
    pre = A + b
    ref.bias_act_fwd(act, A, b, Z, 0.01)
    np.testing.assert_allclose(A, expected, rtol=1e-12, atol=1e-15)
    if Z is not None:
        np.testing.assert_allclose(Z, pre, rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", [a for a in ACTS if a != "softmax"])
def test_act_bwd_elementwise(act, shape, rng):
    z = rng.standard_normal(shape)
    z[np.abs(z) < 1e-3] = 0.5  # keep away from relu's kink
    a = _plain_act(act, z)
    G = rng.standard_normal(shape)
    dZ, db = np.full(shape, np.nan), np.full(shape[1], np.nan)
    ref.act_bwd(act, G, a, z, dZ, db, 0.01)
    expected = G * _numeric_act_grad(act, z)
    np.testing.assert_allclose(dZ, expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, expected.sum(axis=0), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape", SHAPES)
def test_act_bwd_softmax_is_the_jacobian_product(shape, rng):
    z = rng.standard_normal(shape)
    y = _plain_act("softmax", z)
    G = rng.standard_normal(shape)
    dZ, db = np.empty(shape), np.empty(shape[1])
    ref.act_bwd("softmax", G, y, None, dZ, db)
    for i in range(shape[0]):
        jac = np.diag(y[i]) - np.outer(y[i], y[i])
        np.testing.assert_allclose(dZ[i], jac @ G[i], rtol=1e-12, atol=1e-14)


def test_act_bwd_in_place_aliasing(rng):
    G = rng.standard_normal((4, 3))
    a = np.tanh(rng.standard_normal((4, 3)))
    expected = G * (1 - a * a)
    db = np.empty(3)
    ref.act_bwd("tanh", G, a, None, G, db)
    np.testing.assert_allclose(G, expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("targets", ["labels", "probs"])
def test_softmax_xent(shape, weighted, targets, rng):
    n, k = shape
    z = rng.standard_normal(shape) * 3
    w = rng.uniform(0.5, 2, n) if weighted else None
    if targets == "labels":
        t = rng.integers(0, k, n)
        onehot = np.eye(k)[t]
    else:
        t = onehot = rng.dirichlet(np.ones(k), n)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    rows = -(onehot * np.log(p)).sum(axis=1)
    ww = np.ones(n) if w is None else w
    grad = np.full(shape, np.nan)
    value = ref.softmax_xent(z, t, grad, w, 1 / n)
    assert value == pytest.approx((ww * rows).sum() / n, rel=1e-12)
    np.testing.assert_allclose(grad, ww[:, None] * (p - onehot) / n, rtol=1e-10, atol=1e-14)


def test_softmax_xent_is_stable_at_huge_logits():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
    grad = np.empty_like(z)
    value = ref.softmax_xent(z, np.array([1, 2]), grad, None, 0.5)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value == pytest.approx((2e4 + math.log(3)) / 2, rel=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("loss", ["sigmoid_bce", "mse", "mae", "huber"])
def test_elementwise_losses(loss, shape, rng):
    n, k = shape
    p = rng.standard_normal(shape) * 2
    t = rng.uniform(0, 1, shape) if loss == "sigmoid_bce" else rng.standard_normal(shape)
    w = rng.uniform(0.5, 2, n)
    r = p - t
    if loss == "sigmoid_bce":
        s = 1 / (1 + np.exp(-p))
        val, g = -(t * np.log(s) + (1 - t) * np.log(1 - s)), s - t
    elif loss == "mse":
        val, g = r**2, 2 * r
    elif loss == "mae":
        val, g = np.abs(r), np.sign(r)
    else:
        val = np.where(np.abs(r) <= 1.0, 0.5 * r**2, np.abs(r) - 0.5)
        g = np.clip(r, -1.0, 1.0)
    grad = np.full(shape, np.nan)
    value = getattr(ref, loss)(p, t, grad, w, 1 / (n * k))
    assert value == pytest.approx((w[:, None] * val).sum() / (n * k), rel=1e-12)
    np.testing.assert_allclose(grad, w[:, None] * g / (n * k), rtol=1e-12, atol=1e-15)


def test_sigmoid_bce_is_stable_at_huge_logits():
    z = np.array([[1e4, -1e4]], dtype=np.float32)
    grad = np.empty_like(z)
    value = ref.sigmoid_bce(z, np.array([[0.0, 1.0]], dtype=np.float32), grad, None, 0.5)
    assert value == pytest.approx(1e4, rel=1e-6)
    np.testing.assert_allclose(grad, [[0.5, -0.5]])


@pytest.mark.parametrize("n", [1, 5, 1031])
def test_steps_one_element_at_a_time(n, rng):
    """Each step kernel against the same rule applied to scalars in a Python loop."""
    p, g = rng.standard_normal(n), rng.standard_normal(n)
    m, v = rng.standard_normal(n), rng.uniform(0.1, 1, n)
    vmax = v + rng.uniform(0, 1, n)
    pp, mm, vv, vvm = p.copy(), m.copy(), v.copy(), vmax.copy()
    ref.adam_step(pp, g, mm, vv, vvm, 0.01, 0.9, 0.99, 1e-8, 0.1, 0.5, 0.3, True)
    for i in range(n):
        d = g[i] + 0.1 * p[i]
        mi = 0.9 * m[i] + 0.1 * d
        vi = 0.99 * v[i] + 0.01 * d * d
        vmi = max(vmax[i], vi)
        assert mm[i] == pytest.approx(mi) and vv[i] == pytest.approx(vi)
        assert vvm[i] == pytest.approx(vmi)
        assert pp[i] == pytest.approx(p[i] - 0.01 * (mi / 0.5) / (math.sqrt(vmi / 0.3) + 1e-8))
