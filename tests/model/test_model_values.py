"""The model, losses and metrics: bad inputs are refused by name (never a raw Numba or NumPy
error, a broadcast or a silent NaN), and the values on good inputs match their definitions
(finite differences, reference kernels) on fresh random data."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import devnet as dn
from devnet import metrics
from devnet.nn.activations import HIDDEN_ACTIVATIONS

TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def _model(sizes=(3, 5, 2), **kw):
    kw.setdefault("backend", "cpu")
    return dn.MLP(list(sizes), **kw)


# --- MLP: construction and inputs ------------------------------------------------------------

def test_big_endian_dtype_is_normalised_not_a_numba_typing_error(rng):
    model = _model(dtype=">f8")
    assert model.dtype == np.dtype("float64") and model.dtype.isnative
    X = rng.standard_normal((4, 3))
    y = model.forward(X).copy()
    assert np.allclose(y, _model(dtype="float64").forward(X))
    assert model.backward(rng.standard_normal((4, 2))).shape == (4, 3)


def test_read_only_dY_is_copied_not_a_numba_typing_error(rng):
    for kw in ({}, dict(output_activation="sigmoid"), dict(block="residual", norm="layernorm")):
        model = _model((3, 4, 4, 2), **kw)
        model.forward(rng.standard_normal((4, 3)).astype(np.float32))
        dY = rng.standard_normal((4, 2)).astype(np.float32)
        expected = model.backward(dY).copy()
        frozen = dY.copy()
        frozen.flags.writeable = False
        np.testing.assert_array_equal(model.backward(frozen), expected)
        np.testing.assert_array_equal(frozen, dY)


NON_NUMERIC = {
    "str": "abc",
    "str array": np.array([["a", "b", "c"]]),
    "object with None": np.array([[1.0, 2.0, None]], dtype=object),
    "None": None,
    "complex": np.ones((2, 3), dtype=complex) * (1 + 2j),
    "datetime": np.zeros((2, 3), dtype="datetime64[s]"),
    "ragged": [[1.0, 2.0, 3.0], [1.0, 2.0]],
}


@pytest.mark.parametrize("case", sorted(NON_NUMERIC))
def test_non_numeric_X_is_a_data_error_not_a_raw_error_or_silent_cast(case):
    model = _model()
    for call in (model.forward, model.predict):
        with pytest.raises(dn.DataError, match="X"):
            call(NON_NUMERIC[case])


@pytest.mark.parametrize("case", ["str", "None", "complex"])
def test_non_numeric_dY_is_a_data_error(case, rng):
    model = _model()
    model.forward(rng.standard_normal((1, 3)))
    with pytest.raises(dn.DataError, match="dY"):
        model.backward(NON_NUMERIC[case])


def test_predict_refuses_nan_instead_of_returning_relu_zeros(rng):
    model = _model()
    X = rng.standard_normal((10, 3)).astype(np.float32)
    X[7, 1] = np.nan
    with pytest.raises(dn.DataError, match="NaN"):
        model.predict(X, batch_size=4)
    X[7, 1] = np.inf
    with pytest.raises(dn.DataError, match="NaN or Inf"):
        model.predict(X)


def test_predict_chunks_equal_one_forward(rng):
    model = _model(dtype="float64")
    X = rng.standard_normal((1001, 3))
    np.testing.assert_allclose(model.predict(X, batch_size=64), model.forward(X),
                               rtol=1e-12, atol=1e-12)
    assert model.predict(np.zeros((0, 3))).shape == (0, 2)


@pytest.mark.parametrize("mean, scale, match", [
    (np.full(3, 1e300), np.ones(3), "beyond the range"),
    (np.zeros(3), np.full(3, 1e-320), "not a normal"),  # 0 in float32: outputs NaN
    (np.zeros(3), np.full(3, 1e-40), "not a normal"),  # subnormal: 1 / scale overflows
])
def test_input_scaling_outside_the_model_dtype_is_a_data_error(mean, scale, match):
    model = _model()
    with pytest.raises(dn.DataError, match=match):
        model.set_input_scaling(mean, scale)
    assert model.input_scaling is None
    _model(dtype="float64").set_input_scaling(np.zeros(3), np.full(3, 1e-40))  # fine in f64


def test_backward_input_grad_must_be_a_bool(rng):
    model = _model()
    model.forward(rng.standard_normal((2, 3)))
    with pytest.raises(dn.ConfigError, match="input_grad"):
        model.backward(rng.standard_normal((2, 2)), input_grad="no")


def test_row0_past_the_kernels_int64_index_is_a_config_error(rng):
    model = _model((3, 4, 2), dropout=0.5)
    with pytest.raises(dn.ConfigError, match="row0"):
        model.forward(rng.standard_normal((2, 3)), training=True, step=1, row0=2**70)


def test_torch_tensor_that_requires_grad_is_accepted_by_forward_and_predict(rng):
    torch = pytest.importorskip("torch")
    model = _model()
    X = rng.standard_normal((4, 3)).astype(np.float32)
    t = torch.from_numpy(X.copy()).requires_grad_(True)
    np.testing.assert_array_equal(model.predict(t), model.predict(X))
    np.testing.assert_array_equal(model.forward(t).copy(), model.forward(X))
    with pytest.raises(dn.DataError, match="bfloat16"):
        model.predict(t.detach().to(torch.bfloat16))


@pytest.mark.parametrize("kw", [{}, dict(block="residual", norm="layernorm", dropout=0.2)])
@pytest.mark.parametrize("how", ["deepcopy", "copy", "pickle"])
def test_copies_keep_parameters_views_of_their_own_flat_buffer(how, kw, rng):
    model = _model((3, 4, 4, 2), activation="tanh", **kw)  # tanh: no all-dead output
    model.params[...] = rng.normal(0.0, 0.5, model.n_params)
    model.set_input_scaling(rng.standard_normal(3), rng.uniform(0.5, 2.0, 3))
    X = rng.standard_normal((5, 3)).astype(np.float32)
    y = model.predict(X)
    clone = {"deepcopy": copy.deepcopy, "copy": copy.copy,
             "pickle": lambda m: pickle.loads(pickle.dumps(m))}[how](model)
    assert clone.backend is model.backend  # same device object (cached by device spec)
    params = clone.parameters()
    assert all(np.shares_memory(p.data, params.data) for p in params)
    assert all(np.shares_memory(p.grad, params.grad) for p in params)
    assert not np.shares_memory(clone.params, model.params)
    np.testing.assert_array_equal(clone.predict(X), y)
    assert clone.config() == model.config() and clone.input_scaling is not None
    params.data *= 2  # what an optimizer does: the copy's forward must see it ...
    assert not np.allclose(clone.predict(X), y)
    np.testing.assert_array_equal(model.predict(X), y)  # ... and the original must not


def test_to_round_trip_keeps_parameters_and_fresh_views(rng):
    model = _model((3, 4, 4, 2), block="residual", norm="layernorm")
    model.set_input_scaling(rng.standard_normal(3), rng.uniform(0.5, 2.0, 3))
    before = model.params.copy()
    X = rng.standard_normal((3, 3)).astype(np.float32)
    y = model.predict(X)
    model.to(dn.get_backend("cpu", kernels="reference")).to("cpu")
    np.testing.assert_array_equal(model.params, before)
    params = model.parameters()
    assert all(np.shares_memory(p.data, model.params) for p in params)
    np.testing.assert_allclose(model.predict(X), y, **TOL["float32"])
    with pytest.raises(dn.DeviceUnavailableError if "cuda:0" not in dn.available_backends()
                       else dn.ConfigError):
        model.to("cuda:7" if "cuda:0" in dn.available_backends() else "cuda")


# --- losses ----------------------------------------------------------------------------------

def test_cross_entropy_with_one_column_is_a_data_error_not_a_zero_loss(rng):
    loss = dn.losses.get("cross_entropy")
    pred = rng.standard_normal((6, 1)).astype(np.float32)
    labels = np.zeros(6, dtype=np.int64)
    with pytest.raises(dn.DataError, match="binary_cross_entropy"):
        loss(pred, labels)
    with pytest.raises(dn.DataError, match="at least 2"):
        loss.forward_backward_(pred, labels, np.empty_like(pred), checked=True)
    with pytest.raises(dn.DataError, match="binary_cross_entropy"):
        dn.fit(_model((3, 4, 1)), rng.standard_normal((8, 3)).astype(np.float32),
               np.zeros(8, dtype=np.int64), loss="cross_entropy", epochs=1, progress=False)


def test_losses_accept_torch_tensors_that_require_grad(rng):
    torch = pytest.importorskip("torch")
    pred = rng.standard_normal((5, 3)).astype(np.float32)
    target = rng.standard_normal((5, 3)).astype(np.float32)
    w = rng.uniform(0.1, 1.0, 5)
    loss = dn.losses.get("mse")
    value, grad = loss(pred, target, w)
    tv, tg = loss(torch.from_numpy(pred).requires_grad_(True),
                  torch.from_numpy(target).requires_grad_(True),
                  torch.from_numpy(w).requires_grad_(True))
    assert tv == pytest.approx(value, rel=1e-6)
    np.testing.assert_allclose(tg, grad, rtol=1e-6)


def test_huber_delta_that_underflows_the_dtype_is_a_config_error(rng):
    loss = dn.losses.get("huber", delta=1e-300)
    pred = rng.standard_normal((4, 2))
    value, _ = loss(pred, pred + 1.0)  # float64: representable, a real loss
    assert value == pytest.approx(1e-300 * (1.0 - 0.5e-300), rel=1e-6)
    with pytest.raises(dn.ConfigError, match="delta"):
        loss(pred.astype(np.float32), pred + 1.0)


# --- metrics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["accuracy", "r2", "mae"])
def test_metrics_on_mismatched_lengths_are_data_errors_not_broadcasts(metric, rng):
    fn = {"accuracy": lambda p, t: metrics.accuracy(p, t, "softmax"),
          "r2": metrics.r2, "mae": metrics.mae}[metric]
    pred = rng.standard_normal((5, 3))
    target = rng.integers(0, 3, 3) if metric == "accuracy" else rng.standard_normal((1, 3))
    with pytest.raises(dn.DataError, match="samples"):
        fn(pred, target)
    with pytest.raises(dn.DataError, match="2-D"):
        fn(pred[:, 0], target)


@pytest.mark.parametrize("metric", ["accuracy", "r2", "mae"])
def test_metrics_of_no_samples_are_data_errors_not_nan_or_a_perfect_r2(metric):
    fn = {"accuracy": lambda p, t: metrics.accuracy(p, t, "softmax"),
          "r2": metrics.r2, "mae": metrics.mae}[metric]
    with pytest.raises(dn.DataError, match="no samples"):
        fn(np.zeros((0, 3)), np.zeros((0, 3)))


def test_accuracy_of_labels_as_a_column_scores_the_labels(rng):
    pred = rng.standard_normal((50, 4))
    labels = rng.integers(0, 4, 50)
    expected = float(np.mean(pred.argmax(1) == labels))
    assert metrics.accuracy(pred, labels.reshape(-1, 1), "softmax") == expected
    assert metrics.accuracy(pred, np.eye(4)[labels], "softmax") == expected
    with pytest.raises(dn.ConfigError, match="valid links"):
        metrics.accuracy(pred, labels, "softmx")


def test_metrics_match_their_definitions(rng):
    pred, target = rng.standard_normal((40, 3)), rng.standard_normal((40, 3))
    assert metrics.mae(pred, target) == pytest.approx(np.abs(pred - target).mean())
    r2 = 1 - ((target - pred) ** 2).sum(0) / ((target - target.mean(0)) ** 2).sum(0)
    assert metrics.r2(pred, target) == pytest.approx(r2.mean())
    multi = (rng.uniform(size=(40, 3)) > 0.5).astype(float)
    hits = ((pred > 0) == (multi > 0.5)).all(1).mean()
    assert metrics.accuracy(pred, multi, "sigmoid") == pytest.approx(hits)


# --- correctness on good inputs --------------------------------------------------------------

def _fd_check(model, X, loss, target, rng):
    """Central differences of the loss w.r.t. every parameter and X, against backward."""
    model.params[...] = rng.normal(0.0, 0.6, model.params.shape)  # non-zero biases: no kinks
    for layer in model.layers:
        if layer.norm:
            layer.gamma[...] = rng.uniform(0.5, 1.5, layer.gamma.shape)
    _, dpred = loss(model.forward(X).copy(), target)
    dX = model.backward(dpred).copy()
    analytic = model.grads.copy()

    def numeric(buf):
        out = np.empty(buf.size)
        flat = buf.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + 1e-6
            plus = loss(model.forward(X).copy(), target)[0]
            flat[i] = old - 1e-6
            minus = loss(model.forward(X).copy(), target)[0]
            flat[i] = old
            out[i] = (plus - minus) / 2e-6
        return out.reshape(buf.shape)

    for got, want in ((analytic, numeric(model.params)), (dX, numeric(X))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("deep", [{}, dict(norm="layernorm"), dict(block="residual"),
                                  dict(block="residual", norm="layernorm")],
                         ids=["plain", "layernorm", "residual", "residual+layernorm"])
@pytest.mark.parametrize("act", HIDDEN_ACTIVATIONS)
def test_model_gradients_match_float64_finite_differences(act, deep, rng):
    model = _model((3, 4, 4, 3), activation=act, dtype="float64", alpha=0.1,
                   seed=int(rng.integers(1 << 30)), **deep)
    X = rng.standard_normal((5, 3))
    _fd_check(model, X, dn.losses.get("cross_entropy"), rng.integers(0, 3, 5), rng)


LOSS_TARGETS = {
    "mse": lambda rng, n, k: rng.standard_normal((n, k)),
    "mae": lambda rng, n, k: rng.standard_normal((n, k)),
    "huber": lambda rng, n, k: rng.standard_normal((n, k)) * 2,
    "cross_entropy": lambda rng, n, k: rng.integers(0, k, n),
    "binary_cross_entropy": lambda rng, n, k: rng.uniform(size=(n, k)),
    "poisson": lambda rng, n, k: rng.poisson(2.0, (n, k)).astype(float),
}


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", sorted(LOSS_TARGETS))
def test_loss_gradients_match_float64_finite_differences(name, weighted, rng):
    n, k = 7, 3
    loss = dn.losses.get(name)
    pred = rng.standard_normal((n, k))
    target = LOSS_TARGETS[name](rng, n, k)
    w = rng.uniform(0.1, 2.0, n) if weighted else None
    _, grad = loss(pred, target, w)
    numeric = np.empty_like(pred)
    for idx in np.ndindex(pred.shape):
        p = pred.copy()
        p[idx] += 1e-6
        plus = loss(p, target, w)[0]
        p[idx] -= 2e-6
        numeric[idx] = (plus - loss(p, target, w)[0]) / 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n, width", [(1, 1), (1, 257), (257, 1), (3, 257)])
@pytest.mark.parametrize("deep", [{}, dict(block="residual", norm="layernorm"),
                                  dict(dropout=0.4)], ids=["plain", "deep", "dropout"])
def test_fused_cpu_model_matches_reference_kernels_on_odd_shapes(deep, n, width, dtype, rng):
    reference = dn.get_backend("cpu", kernels="reference")
    out = "softmax" if width > 1 else "sigmoid"
    seed = int(rng.integers(1 << 30))
    training = "dropout" in deep
    for act in HIDDEN_ACTIVATIONS:
        fused = _model((width, width, width, width), activation=act, output_activation=out,
                       dtype=dtype, seed=seed, **deep)
        oracle = _model((width, width, width, width), activation=act, output_activation=out,
                        dtype=dtype, seed=seed, backend=reference, **deep)
        X = rng.standard_normal((n, width)).astype(dtype)
        y = fused.forward(X, training=training, step=3).copy()
        np.testing.assert_allclose(y, oracle.forward(X, training=training, step=3),
                                   **TOL[dtype])
        dY = rng.standard_normal(y.shape).astype(dtype)
        np.testing.assert_allclose(fused.backward(dY), oracle.backward(dY), **TOL[dtype])
        np.testing.assert_allclose(fused.grads, oracle.grads, **TOL[dtype])


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy"])
def test_predict_proba_rows_are_probabilities(loss, rng):
    model = _model((4, 6, 5), seed=int(rng.integers(1 << 30)))
    X = (rng.standard_normal((300, 4)) * rng.choice([1.0, 1e3])).astype(np.float32)
    proba = dn.predict_proba(model, X, loss=loss)
    assert proba.shape == (300, 5) and np.isfinite(proba).all()
    assert proba.min() >= 0 and proba.max() <= 1
    if loss == "cross_entropy":
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


# --- layer access and a forward fed its own output ----------------------------------------------

def test_assigning_a_layer_weight_writes_into_the_flat_buffer_not_a_private_array(rng):
    model = _model((3, 4, 4, 2), norm="layernorm")
    W = rng.standard_normal((3, 4)).astype(np.float32)
    model.layers[0].W = W  # a plain rebinding would leave the optimizer updating a stale copy
    assert np.shares_memory(model.layers[0].W, model.params)
    np.testing.assert_array_equal(model.layers[0].W, W)
    model.layers[0].W += 1.0
    np.testing.assert_array_equal(model.layers[0].W, W + 1.0)
    model.layers[1].b = 0.25
    model.layers[1].gamma = np.full(4, 2.0)
    assert np.all(model.layers[1].b == 0.25) and np.all(model.layers[1].gamma == 2.0)
    params = model.parameters()
    params.data[...] = 0.0  # what an optimizer sees is what forward reads
    assert not model.layers[0].W.any() and not model.layers[1].gamma.any()
    for bad in (np.ones((4, 3)), None, "W"):
        with pytest.raises(dn.DataError, match=r"layers\.0\.W"):
            model.layers[0].W = bad


@pytest.mark.parametrize("kw", [{}, dict(block="residual", norm="layernorm")])
def test_forward_of_its_own_output_keeps_the_input_for_backward(kw, rng):
    # model.forward(model.forward(X)): the input IS the output buffer this forward overwrites;
    # backward then read the overwritten input for the first layer's dW
    model = _model((4, 4, 4), activation="tanh", dtype="float64", **kw)
    model.params[...] = rng.normal(0.0, 0.5, model.n_params)
    X = rng.standard_normal((5, 4))
    dY = rng.standard_normal((5, 4))
    y = model.forward(X).copy()
    expected_out = model.forward(y).copy()
    expected_dx = model.backward(dY).copy()
    expected = model.grads.copy()
    again = model.forward(model.forward(X))
    np.testing.assert_allclose(again, expected_out, **TOL["float64"])
    np.testing.assert_allclose(model.backward(dY), expected_dx, **TOL["float64"])
    np.testing.assert_allclose(model.grads, expected, **TOL["float64"])
    model.forward(X)
    model.forward(model.layer_outputs()[0][:, :4])  # a view of a work buffer too
    model.backward(dY)
    np.testing.assert_allclose(model.grads[:20], _grads_for(model, X, dY)[:20],
                               **TOL["float64"])


def _grads_for(model, X, dY):
    """The gradients of forward(first layer's output of X) by a fresh copy of the input."""
    clone = copy.deepcopy(model)
    clone.forward(X)
    h = clone.layer_outputs()[0][:, :4].copy()
    clone.forward(h)
    clone.backward(dY)
    return clone.grads.copy()


@pytest.mark.parametrize("door", ["call", "forward_backward_"])
def test_loss_overflowing_its_dtype_on_finite_inputs_is_an_error_not_inf(door):
    # found by tests/train/test_fuzz.py: uint64 targets near 2**64 are finite in float32, but their
    # squared error is not (an mse of inf with a finite gradient, returned silently)
    loss = dn.losses.get("mse")
    pred = np.array([[0.3]], np.float32)
    target = np.array([[2**64 - 1]], np.uint64)
    with pytest.raises(dn.DataError, match="overflowed float32"):
        if door == "call":
            loss(pred, target)
        else:
            loss.forward_backward_(pred, target, np.empty_like(pred))
    value, _ = loss(pred.astype(np.float64), target)  # float64 holds it
    assert np.isfinite(value)
