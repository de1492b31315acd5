"""Deep MLPs: residual blocks, LayerNorm, dropout, the gradient-flow monitor.

Gradients are checked against finite differences in float64 for every hidden activation x
block x norm, with dropout active under a fixed mask (same step: same mask); the fused CPU
kernels against ``reference`` in both dtypes; masks bit for bit across kernel tables and after
a resume. The CUDA kernels are checked in ``test_deep_cudasim.py`` and ``test_deep_ptx.py``.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from devnet.kernels import cpu as kcpu
from devnet.kernels import reference, scalar

import devnet as dn
from devnet import io
from devnet.backend.cpu import CPUBackend
from devnet.callbacks import GradientFlow, plot_gradient_flow
from devnet.errors import CheckpointError, ConfigError, DataError, MissingDependencyError
from devnet.io import checkpoint as io_checkpoint
from devnet.nn import activations
from devnet.nn.mlp import n_parameters

HIDDEN = sorted(activations.HIDDEN_ACTIVATIONS)
DTYPES = (np.float32, np.float64)
TOL = {np.float32: dict(rtol=3e-5, atol=3e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
# widths with two residual blocks (6 -> 6, 4 -> 4) and a projection (6 -> 4) between them
SIZES = [5, 6, 6, 4, 4, 3]


def _close(actual, expected, dtype, scale=0.0):
    """Equal to the dtype's tolerance, relative to the larger of |expected| and ``scale``."""
    big = max(1.0, scale, float(np.max(np.abs(expected), initial=0.0)))
    tol = TOL[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * big)


def _kinks(model, act):
    """The pattern of kinks (relu, leaky_relu: which activations are positive) of the last
    forward: a finite difference across a kink is not a derivative."""
    if act not in ("relu", "leaky_relu"):
        return ()
    return tuple((a > 0).tobytes() for a in model._work[model._n].A)


def _gradcheck(model, X, R, act, step=11, h=1e-4):
    """Worst relative error of backward's gradients against 5-point central differences of
    ``sum(forward(X) * R)``, and how many parameters were skipped for crossing a kink."""
    def loss():
        value = float((model.forward(X, training=True, step=step) * R).sum())
        return value, _kinks(model, act)

    _, pattern = loss()
    model.backward(R)
    grad = model.grads.copy()
    fd = np.full_like(grad, np.nan)
    for k in range(model.n_params):
        old = model.params[k]
        values, same = [], True
        for d in (2, 1, -1, -2):
            model.params[k] = old + d * h
            v, p = loss()
            values.append(v)
            same &= p == pattern
        model.params[k] = old
        if same:
            fd[k] = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * h)
    ok = ~np.isnan(fd)
    scale = np.maximum(np.maximum(np.abs(fd), np.abs(grad)), 1e-3 * np.abs(grad).max())
    return float((np.abs(fd - grad) / scale)[ok].max()), int((~ok).sum())


@pytest.mark.parametrize("norm", [None, "layernorm"])
@pytest.mark.parametrize("block", ["plain", "residual"])
@pytest.mark.parametrize("act", HIDDEN)
def test_gradients_match_finite_differences_with_dropout(act, block, norm, rng):
    model = dn.MLP(SIZES, activation=act, dtype="float64", backend="cpu", block=block,
                   norm=norm, dropout=0.3, seed=int(rng.integers(1000)), init="xavier")
    # gamma, beta and b away from 1 / 0, so their gradients are exercised in general position
    model.params[...] += 0.1 * rng.standard_normal(model.n_params)
    R = rng.standard_normal((7, SIZES[-1]))
    for _ in range(200):
        # a well-conditioned point: no LayerNorm row nearly constant (relu and dropout can
        # zero a whole row; there rstd = 1/sqrt(eps) and differences of width h are not
        # derivatives). The mask is drawn again too: a row whose mask keeps one element
        # stays nearly constant whatever X is (seeds 3066119045, 1443475858 kept one)
        X = rng.standard_normal((7, SIZES[0]))
        model.dropout_seed = int(rng.integers(1 << 31))
        model.forward(X, training=True, step=11)
        rstd = [r for r in model._work[7].rstd or () if r is not None]
        if all(r.max() < 10 for r in rstd):
            break
    # where a row is still nearly constant (leaky_relu's small negative side), truncation
    # error at h = 1e-4 can pass 1e-6, and the smaller step is the accurate one; a larger step
    # crosses more kinks (skipped parameters): under LayerNorm every parameter of a layer
    # moves every pre-activation of a row, so one within ~h of a kink skips them all (seed
    # 656231104 skipped 21 of 181 at 1e-5). One of the steps must check most parameters
    # (skipping at most a tenth) and agree within 1e-6
    checks = []
    for h in (1e-4, 1e-5, 1e-6):
        checks.append(_gradcheck(model, X, R, act, h=h))
        if checks[-1][1] <= model.n_params // 10 and checks[-1][0] < 1e-6:
            break
    usable = [worst for worst, skipped in checks if skipped <= model.n_params // 10]
    assert usable and min(usable) < 1e-6, checks
    # the mask was live: some activations dropped
    assert any((a == 0).any() for a in model._work[7].A[:-1])


def test_input_gradient_of_a_deep_model(rng):
    """backward's dL/dX through norms, skips and input scaling, against finite differences."""
    model = dn.MLP([4, 5, 5, 3], activation="tanh", dtype="float64", backend="cpu",
                   block="residual", norm="layernorm", dropout=0.2, seed=1)
    model.set_input_scaling(rng.standard_normal(4), rng.uniform(0.5, 2, 4))
    X, R = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    model.forward(X, training=True, step=3)
    dX = model.backward(R).copy()
    h, fd = 1e-6, np.empty_like(X)
    for idx in np.ndindex(X.shape):
        Xp, Xm = X.copy(), X.copy()
        Xp[idx] += h
        Xm[idx] -= h
        fd[idx] = (float((model.forward(Xp, training=True, step=3) * R).sum())
                   - float((model.forward(Xm, training=True, step=3) * R).sum())) / (2 * h)
    np.testing.assert_allclose(dX, fd, rtol=1e-6, atol=1e-8)


def test_fused_model_matches_the_reference_kernels(rng):
    """The same deep model, step and data on the fused CPU table and the reference table
    (float64: through five layers of norms float32's roundings compound past its kernel
    tolerance; the kernels are compared in float32 one by one below)."""
    kw = dict(activation="gelu", dtype="float64", block="residual", norm="layernorm",
              dropout=0.25, seed=4)
    fused = dn.MLP(SIZES, backend="cpu", **kw)
    ref = dn.MLP(SIZES, backend=CPUBackend(kernels="reference"), **kw)
    X = rng.standard_normal((9, SIZES[0]))
    R = rng.standard_normal((9, SIZES[-1]))
    tol = dict(rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(fused.forward(X, training=True, step=5),
                               ref.forward(X, training=True, step=5), **tol)
    np.testing.assert_allclose(fused.backward(R), ref.backward(R), **tol)
    np.testing.assert_allclose(fused.grads, ref.grads, **tol)


# --- kernels: fused against reference ----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (7, 13), (33, 70)])
def test_layernorm_fused_matches_reference(shape, dtype, rng):
    n, m = shape
    # a large mean against the spread: the one-pass shifted sums must not cancel
    X = (rng.standard_normal(shape) * rng.uniform(0.1, 3) + rng.uniform(-50, 50)).astype(dtype)
    gamma, beta = (rng.standard_normal(m).astype(dtype) for _ in range(2))
    outs = []
    for k in (kcpu, reference):
        Y, mean, rstd = np.full(shape, np.nan, dtype), np.full(n, np.nan, dtype), \
            np.full(n, np.nan, dtype)
        k.layernorm_fwd(X, gamma, beta, Y, mean, rstd)
        outs.append((Y, mean, rstd))
    # x - mean loses |mean| / std of the data's ulps, in any LayerNorm: tolerances scale with
    # that condition number (a sum-of-squares variance would lose its square, and fail)
    cond = float(np.max(np.abs(outs[1][1]) * outs[1][2]))
    for got, want in zip(*outs):
        assert got.dtype == dtype
        _close(got, want, dtype, cond * float(np.abs(gamma).max()))
    G, Rskip = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    _, mean, rstd = outs[1]
    for skip in (None, Rskip):
        res = []
        for k in (kcpu, reference):
            dX, dg, db = np.full(shape, np.nan, dtype), np.full(m, np.nan, dtype), \
                np.full(m, np.nan, dtype)
            k.layernorm_bwd(G, X, mean, rstd, gamma, dX, dg, db, skip)
            res.append((dX, dg, db))
        # dX = rstd (g - mean(g) - ...) cancels (to 0 when m = 1): its rounding is relative to
        # rstd |g|, not to the result
        _close(res[0][0], res[1][0], dtype,
               cond * float(np.abs(rstd).max() * np.abs(G * gamma).max()))
        for got, want in zip(res[0][1:], res[1][1:]):
            _close(got, want, dtype, cond * float(np.abs(G).sum(axis=0).max()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", HIDDEN)
def test_activation_dropout_residual_fused_matches_reference(act, dtype, rng):
    n, m = 17, 11
    A0 = (2 * rng.standard_normal((n, m))).astype(dtype)
    b, R, G = rng.standard_normal(m).astype(dtype), rng.standard_normal((n, m)).astype(dtype), \
        rng.standard_normal((n, m)).astype(dtype)
    key = scalar.dropout_key(int(rng.integers(2**63)), int(rng.integers(10**6)), 3)
    keep_z = act in reference.NEEDS_PREACTIVATION
    res = []
    for k in (kcpu, reference):
        A = A0.copy()
        Z = np.full_like(A, np.nan) if keep_z else None
        out = np.full_like(A, np.nan)
        k.bias_act_drop_fwd(act, A, b, Z, 0.05, 0.4, key, R, out)
        dZ, db = np.full_like(A, np.nan), np.full(m, np.nan, dtype)
        k.act_drop_bwd(act, G, A, Z, dZ, db, 0.05, 0.4, key)
        G2 = G.copy()  # in place: dZ is G
        k.act_drop_bwd(act, G2, A, Z, G2, db.copy(), 0.05, 0.4, key)
        res.append((A, out, dZ, db, G2))
    for got, want in zip(*res):
        _close(got, want, dtype)
    # dropped where the mask says (an activation may also be 0 itself: gelu far below 0)
    dropped = ~reference.dropout_mask(np, (n, m), 0.4, key)
    assert dropped.any()
    np.testing.assert_array_equal(res[0][0][dropped], 0)
    np.testing.assert_array_equal(res[0][2][dropped], 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_masks_are_bit_identical_and_have_the_rate(dtype, rng):
    p = float(rng.uniform(0.1, 0.9))
    key = scalar.dropout_key(int(rng.integers(2**63)), 7, 2)
    A, B = np.ones((300, 257), dtype), np.ones((300, 257), dtype)
    kcpu.dropout_fwd(A, p, key)
    reference.dropout_fwd(B, p, key)
    np.testing.assert_array_equal(A, B)
    assert set(np.unique(A)) <= {0.0, dtype(1.0 / (1.0 - p))}
    kept = (A != 0).mean()
    assert abs(kept - (1 - p)) < 4 * np.sqrt(p * (1 - p) / A.size)
    # the scalar definition itself, element by element
    k0, k1 = np.uint64(key & 0xFFFFFFFF), np.uint64(key >> 32)
    t = np.uint64(scalar.dropout_threshold(p))
    for e in rng.integers(0, A.size, 20):
        assert bool(scalar.dropout_keep(np.uint64(e), k0, k1, t)) == bool(A.flat[e] != 0)


def test_masks_differ_by_step_layer_and_seed():
    masks = {}
    for seed, step, layer in ((0, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0)):
        a = np.ones((64, 64), np.float32)
        kcpu.dropout_fwd(a, 0.5, scalar.dropout_key(seed, step, layer))
        masks[seed, step, layer] = a != 0
    keys = list(masks)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            agree = (masks[a] == masks[b]).mean()
            assert 0.4 < agree < 0.6, (a, b, agree)  # independent-looking, not equal


@pytest.mark.parametrize("table", ["reference", "serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_data_parallel_dropout_shard_masks_equal_the_whole_batchs_rows(table, dtype, rng,
                                                                       monkeypatch):
    """A shard (rows r0..r0+k-1 of a batch, ``row0=r0``) gets the whole batch's masks there:
    the ranks of a data-parallel step drop what one process would."""
    kernels = reference if table == "reference" else kcpu
    monkeypatch.setattr(kcpu.build, "PARALLEL_MIN", 0 if table == "parallel" else 1 << 62)
    n, m = int(rng.integers(40, 90)), int(rng.integers(3, 40))
    r0 = int(rng.integers(1, n - 5))
    k = int(rng.integers(1, n - r0 + 1))
    rows = slice(r0, r0 + k)
    p = float(rng.uniform(0.2, 0.7))
    key = scalar.dropout_key(int(rng.integers(2**63)), int(rng.integers(10**6)), 1)
    act = "gelu"  # needs Z: every optional array in use
    A0 = (2 * rng.standard_normal((n, m))).astype(dtype)
    b, R, G = rng.standard_normal(m).astype(dtype), rng.standard_normal((n, m)).astype(dtype), \
        rng.standard_normal((n, m)).astype(dtype)

    def run(A0, R, G, **row0):
        A, Z, out = A0.copy(), np.full_like(A0, np.nan), np.full_like(A0, np.nan)
        kernels.bias_act_drop_fwd(act, A, b, Z, 0.05, p, key, R, out, **row0)
        dZ, db = np.full_like(A0, np.nan), np.full(m, np.nan, dtype)
        kernels.act_drop_bwd(act, G, A, Z, dZ, db, 0.05, p, key, **row0)
        D = A0.copy()
        kernels.dropout_fwd(D, p, key, **row0)
        return A, out, dZ, D

    whole = run(A0, R, G)
    part = run(A0[rows].copy(), R[rows].copy(), G[rows].copy(), row0=r0)
    for got, want in zip(part, whole):
        np.testing.assert_array_equal(got, want[rows])
    # the masks depend on row0: the shard keyed from row 0 drops other elements
    wrong = run(A0[rows].copy(), R[rows].copy(), G[rows].copy())
    assert not np.array_equal(wrong[3], whole[3][rows])


@pytest.mark.parametrize("row0", [-1, 1.5, True, "3", None])
def test_dropout_kernels_reject_a_bad_row0(row0):
    A = np.ones((3, 4))
    for call in (lambda: kcpu.dropout_fwd(A, 0.5, 1, row0),
                 lambda: kcpu.bias_act_drop_fwd("relu", A, np.ones(4), None, 0.0, 0.5, 1,
                                                row0=row0),
                 lambda: kcpu.act_drop_bwd("relu", A.copy(), A, None, A.copy(), np.ones(4),
                                           0.0, 0.5, 1, row0)):
        with pytest.raises(DataError, match="row0 .* must be a non-negative integer"):
            call()


def test_dropout_rate_outside_zero_one_is_a_config_error():
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        kcpu.dropout_fwd(np.ones((2, 2)), 1.0, 0)
    with pytest.raises(ConfigError, match="valid elementwise activations"):
        kcpu.bias_act_drop_fwd("softmax", np.ones((2, 2)), np.ones(2), None, 0.0, 0.5, 0)


# --- the model --------------------------------------------------------------------------------

def test_which_layers_get_skips_norms_and_dropout():
    model = dn.MLP([8, 8, 8, 6, 6, 6, 3], backend="cpu", block="residual", norm="layernorm",
                   dropout=0.1)
    # the first layer (input -> hidden) never has a skip, even at equal widths; a width change
    # is a projection; the output layer never has a skip or dropout
    assert [layer.residual for layer in model.layers] == [False, True, False, True, True, False]
    assert [layer.norm for layer in model.layers] == [False] + [True] * 5
    assert [layer.dropout for layer in model.layers] == [0.1] * 5 + [0.0]
    assert model.n_params == n_parameters(model.layer_sizes, "layernorm")
    names = [p.name for p in model.parameters()]
    assert "layers.1.norm.gamma" in names and "layers.0.norm.gamma" not in names
    np.testing.assert_array_equal(model.layers[1].gamma, 1)
    np.testing.assert_array_equal(model.layers[1].beta, 0)
    plain = dn.MLP([8, 8, 8, 3], backend="cpu")
    assert not any(layer.residual or layer.norm for layer in plain.layers)


def test_plain_model_weights_are_unchanged_by_the_new_options():
    """Norms only add gamma / beta after each layer's W, b: the same seed draws the same W."""
    a = dn.MLP([5, 7, 7, 2], backend="cpu", seed=3)
    b = dn.MLP([5, 7, 7, 2], backend="cpu", seed=3, block="residual", norm="layernorm")
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_array_equal(la.W, lb.W)


@pytest.mark.parametrize("kwargs, match", [
    ({"block": "dense"}, "valid blocks: plain, residual"),
    ({"block": None}, "valid blocks"),
    ({"norm": "batchnorm"}, "valid norms: None, 'layernorm'"),
    ({"dropout": 1.0}, r"dropout must be a rate in \[0, 1\)"),
    ({"dropout": -0.1}, "dropout must be"),
    ({"dropout": float("nan")}, "dropout must be"),
    ({"dropout": True}, "dropout must be"),
    ({"dropout_seed": -1}, "dropout_seed must be a non-negative integer"),
])
def test_bad_deep_options_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        dn.MLP([3, 4, 4, 2], backend="cpu", **kwargs)


def test_bad_training_arguments_are_config_errors():
    model = dn.MLP([3, 4, 2], backend="cpu", dropout=0.5)
    X = np.ones((2, 3), np.float32)
    with pytest.raises(ConfigError, match="training must be True or False"):
        model.forward(X, training="yes")
    with pytest.raises(ConfigError, match="step must be a non-negative integer"):
        model.forward(X, training=True, step=-1)


@pytest.mark.parametrize("block, norm", [("plain", None), ("residual", "layernorm")])
def test_data_parallel_dropout_gradient_is_the_sum_of_the_halves(block, norm, rng):
    """A batch's gradient equals its two halves' (the second with row0 = n/2), as
    the data-parallel all-reduce adds them; keyed from row 0 the second half's masks differ."""
    model = dn.MLP(SIZES, activation="tanh", dtype="float64", backend="cpu", block=block,
                   norm=norm, dropout=0.4, seed=int(rng.integers(1000)))
    model.params[...] += 0.1 * rng.standard_normal(model.n_params)
    n = 2 * int(rng.integers(3, 12))
    X, R = rng.standard_normal((n, SIZES[0])), rng.standard_normal((n, SIZES[-1]))
    step = int(rng.integers(10**6))

    def grad(rows, row0):
        model.forward(X[rows], training=True, step=step, row0=row0)
        model.backward(R[rows])
        return model.grads.copy()

    whole = grad(slice(None), 0)
    halves = grad(slice(0, n // 2), 0) + grad(slice(n // 2, None), n // 2)
    assert np.abs(halves - whole).max() <= 1e-12 * np.abs(whole).max()
    unkeyed = grad(slice(0, n // 2), 0) + grad(slice(n // 2, None), 0)
    assert np.abs(unkeyed - whole).max() > 1e-3 * np.abs(whole).max()


def test_backward_uses_the_forwards_row0(rng):
    """The masks backward recomputes are the forward's: same row0, not the default 0."""
    model = dn.MLP([4, 9, 9, 3], dtype="float64", backend="cpu", dropout=0.5, seed=1)
    X, R = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    model.forward(X, training=True, step=3, row0=17)
    model.backward(R)
    first = model.layers[0]  # below a dropout layer: its gradient passed through the masks
    got = first.dW.copy()
    k = np.unravel_index(np.argmax(np.abs(got)), got.shape)  # a gradient far from 0
    h, values = 1e-6, []
    for d in (h, -h):
        first.W[k] += d
        values.append(float((model.forward(X, training=True, step=3, row0=17) * R).sum()))
        first.W[k] -= d
    fd = (values[0] - values[1]) / (2 * h)
    assert abs(fd - got[k]) <= 1e-6 * abs(fd)


@pytest.mark.parametrize("row0", [-1, 2.0, True])
def test_bad_row0_is_a_config_error(row0):
    model = dn.MLP([3, 4, 2], backend="cpu", dropout=0.5)
    with pytest.raises(ConfigError, match="row0 must be a non-negative integer"):
        model.forward(np.ones((2, 3), np.float32), training=True, row0=row0)


def test_guard_replay_of_a_data_parallel_step_uses_its_row0(rng):
    """The divergence guard replays a rank's step with the shard's row0 (Batch.row0), so the
    replay drops what the step did."""
    from devnet.train import Batch, Step
    from devnet.train.guard import diagnose_step

    X, y = rng.standard_normal((10, 5)), rng.integers(0, 3, 10)
    results = []
    for replay in (False, True, None):
        model = dn.MLP([5, 8, 8, 3], dtype="float64", backend="cpu", dropout=0.5, seed=4)
        opt = dn.optim.SGD(model.parameters(), lr=0.1)
        step = Step(model, dn.losses.get("cross_entropy"), opt)
        if replay is None:  # the replay as it was: keyed from row 0
            assert diagnose_step(step, Batch(X, y, None, np.arange(10)), 6) is None
        elif replay:
            assert diagnose_step(step, Batch(X, y, None, np.arange(10), row0=12), 6) is None
        else:
            step(X, y, None, 6, row0=12)
        results.append(model.params.copy())
    np.testing.assert_array_equal(results[1], results[0])
    assert not np.array_equal(results[2], results[0])


def test_dropout_only_in_training(rng):
    model = dn.MLP([6, 32, 32, 4], backend="cpu", dropout=0.5, seed=2)
    twin = dn.MLP([6, 32, 32, 4], backend="cpu", seed=2)
    X = rng.standard_normal((20, 6)).astype(np.float32)
    infer = model.forward(X).copy()
    np.testing.assert_array_equal(infer, twin.forward(X))
    np.testing.assert_array_equal(model.predict(X), twin.predict(X))
    train = model.forward(X, training=True, step=0).copy()
    assert not np.allclose(train, infer)
    np.testing.assert_array_equal(model.forward(X, training=True, step=0), train)  # same step
    assert not np.array_equal(model.forward(X, training=True, step=1), train)


def test_deep_model_trains_and_evaluates_without_dropout(rng):
    X, y = dn.data.load_digits()
    model = dn.MLP([64, 32, 32, 32, 10], activation="tanh", backend="cpu", block="residual",
                   norm="layernorm", dropout=0.1, seed=0)
    hist = dn.fit(model, X[:600], y[:600], loss="cross_entropy", epochs=8, batch_size=32,
                  lr=3e-3, progress=False)
    assert hist["loss"][-1] < hist["loss"][0]
    res = dn.evaluate(model, X[600:900], y[600:900], loss="cross_entropy")
    assert res["accuracy"] > 0.8
    # evaluate ran without dropout: it equals the loss computed from predict
    again = dn.evaluate(model, X[600:900], y[600:900], loss="cross_entropy")
    assert again == res


# --- checkpoints and resume ---------------------------------------------------------------------

def test_checkpoint_records_the_architecture(tmp_path, rng):
    model = dn.MLP([5, 6, 6, 3], activation="silu", backend="cpu", block="residual",
                   norm="layernorm", dropout=0.2, seed=None)
    model.params[...] += rng.standard_normal(model.n_params).astype(np.float32)
    path = io.save(model, tmp_path / "deep.safetensors")
    meta = io.read_metadata(path)
    assert meta["format_version"] == io.FORMAT_VERSION == 3
    assert {k: meta["model"][k] for k in ("block", "norm", "dropout", "dropout_seed")} == {
        "block": "residual", "norm": "layernorm", "dropout": 0.2,
        "dropout_seed": model.dropout_seed}
    loaded, _ = io.load(path, backend="cpu")
    assert loaded.config() == model.config()
    X = rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(X, training=True, step=9),
                                  model.forward(X, training=True, step=9))
    plain = dn.MLP([5, 6, 6, 3], activation="silu", backend="cpu")
    with pytest.raises(CheckpointError, match="block: checkpoint 'residual', model 'plain'"):
        io.check_architecture(meta["model"], plain, "x")


def test_version_2_checkpoint_still_loads_as_plain(tmp_path, monkeypatch):
    model = dn.MLP([4, 5, 2], backend="cpu", seed=1)
    config = model.config()
    for key in ("block", "norm", "dropout"):
        del config[key]
    monkeypatch.setattr(io_checkpoint, "FORMAT_VERSION", 2)
    monkeypatch.setattr(model, "config", lambda: config)
    path = io.save(model, tmp_path / "v2.safetensors")
    monkeypatch.undo()
    assert io.read_metadata(path)["format_version"] == 2
    loaded, _ = io.load(path, backend="cpu")
    assert (loaded.block, loaded.norm, loaded.dropout) == ("plain", None, 0.0)
    np.testing.assert_array_equal(loaded.params, model.params)
    io.check_architecture(io.read_metadata(path)["model"], loaded, "v2")  # no error


def test_resume_reproduces_the_dropout_masks(tmp_path):
    X, y = dn.data.load_digits()
    X, y = X[:200], y[:200]

    def build(seed):
        return dn.MLP([64, 16, 16, 10], activation="sigmoid", backend="cpu", block="residual",
                      norm="layernorm", dropout=0.3, seed=seed)

    kw = dict(loss="cross_entropy", batch_size=32, progress=False, train_metrics=False)
    straight = build(0)
    dn.fit(straight, X, y, epochs=3, **kw)
    half = build(0)
    ck = tmp_path / "half.safetensors"
    dn.fit(half, X, y, epochs=2, checkpoint=ck, **kw)
    # a fresh model of another seed: weights and dropout seed both come from the checkpoint
    resumed = build(7)
    dn.fit(resumed, X, y, epochs=3, resume_from=ck, **kw)
    assert resumed.dropout_seed == straight.dropout_seed
    np.testing.assert_array_equal(resumed.params, straight.params)


# --- the gradient-flow monitor ------------------------------------------------------------------

def test_gradient_flow_records_every_layer_and_plots(tmp_path):
    X, y = dn.data.load_digits()
    model = dn.MLP([64, *[16] * 8, 10], activation="sigmoid", backend="cpu", seed=0,
                   init="xavier")
    hist = dn.fit(model, X[:300], y[:300], loss="cross_entropy", epochs=2, batch_size=64,
                  progress=False, train_metrics=False, callbacks=[GradientFlow()])
    grads = [hist[f"grad_norm/layers.{i}"] for i in range(9)]
    ratios = [hist[f"update_ratio/layers.{i}"] for i in range(9)]
    assert all(len(g) == 2 and len(r) == 2 for g, r in zip(grads, ratios))
    assert all(r[-1] > 0 for r in ratios)
    # a plain sigmoid stack: the signal fades on the way down
    assert grads[0][-1] < 1e-2 * grads[-1][-1]
    # the RMS over the epoch's steps: the last step's norm alone is a lower bound for no step
    assert all(np.isfinite(g[-1]) and g[-1] > 0 for g in grads)
    path = hist.plot_gradient_flow(tmp_path / "flow.png")
    assert path.stat().st_size > 1000
    with pytest.raises(ConfigError, match="no gradient-flow records"):
        plot_gradient_flow({"x": dn.History()}, tmp_path / "none.png")


def test_gradient_flow_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    hist = dn.History()
    hist.append(0, {"grad_norm/layers.0": 1.0})
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match="pip install matplotlib"):
        hist.plot_gradient_flow(tmp_path / "x.png")
