"""The MLP: the worked example to the digit, finite-difference gradient checks, buffers."""

import numpy as np
import pytest

import devnet as dn
from devnet import io
from devnet.nn import mlp as mlp_module
from devnet.nn.activations import HIDDEN_ACTIVATIONS

LOSS_NAMES = ("mse", "mae", "huber", "cross_entropy", "binary_cross_entropy")


def _targets(loss, rng, n, k):
    if loss == "cross_entropy":
        return rng.integers(0, k, size=n)
    if loss == "binary_cross_entropy":
        return rng.uniform(0, 1, size=(n, k))
    return rng.standard_normal((n, k))


def test_worked_example_to_the_digit():
    """The explainer's example: inputs [5, 6], two ReLU layers, dL/dA2 = -1, SGD lr 0.01."""
    model = dn.MLP([2, 2, 1], activation="relu", output_activation="relu", dtype="float64",
                   backend="cpu")
    l1, l2 = model.layers
    l1.W[...] = [[2, 2], [1, 3]]
    l1.b[...] = [1, 1]
    l2.W[...] = [[0.5], [0]]
    l2.b[...] = [3.5]
    X = np.array([[5.0, 6.0]])
    out = model.forward(X)
    np.testing.assert_array_equal(model._work[1].A[0], [[17, 29]])
    np.testing.assert_array_equal(out, [[12]])
    dX = model.backward(np.array([[-1.0]]))
    np.testing.assert_array_equal(l2.dW, [[-17], [-29]])
    np.testing.assert_array_equal(l2.db, [-1])
    np.testing.assert_array_equal(model._work[1].G[0], [[-0.5, 0]])  # dL/dZ1 = dL/dA1 * relu'
    np.testing.assert_array_equal(l1.dW, [[-2.5, 0], [-3, 0]])
    np.testing.assert_array_equal(l1.db, [-0.5, 0])
    np.testing.assert_array_equal(dX, [[-1.0, -0.5]])  # dL/dX = dL/dZ1 @ W1.T
    opt = dn.optim.SGD(model.parameters(), lr=0.01)
    opt.step()
    np.testing.assert_allclose(l2.W, [[0.67], [0.29]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(l2.b, [3.51], rtol=0, atol=1e-15)


def _numeric_grad(f, x, eps=1e-6):
    """Central differences of scalar f w.r.t. every element of x (modified in place)."""
    g = np.empty_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def _assert_matches_differences(analytic, numeric, loss_value, eps=1e-6):
    """analytic == numeric to 1e-6 relative, beyond the rounding of the central differences.

    Each difference carries up to ~|loss| * 2**-52 / eps of rounding (the loss is rounded at
    both ends), so a gradient that is itself tiny (dL/dX through leaky_relu's 0.01 slope or a
    saturated sigmoid, ~1e-6) is compared against that floor, not against its own size.
    """
    err = np.linalg.norm(analytic - numeric)
    rounding = 4 * np.sqrt(analytic.size) * abs(loss_value) * np.finfo(np.float64).eps / eps
    bound = 1e-6 * (np.linalg.norm(analytic) + np.linalg.norm(numeric)) + rounding
    assert err <= bound, f"|analytic - numeric| = {err:.3g} > {bound:.3g}"


def _check_gradients(model, X, y, loss, sample_weight=None):
    loss = dn.losses.get(loss)

    def value():
        return loss(model.forward(X), y, sample_weight)[0]

    loss_value, dpred = loss(model.forward(X), y, sample_weight)
    dX = model.backward(dpred).copy()
    analytic = model.grads.copy()
    _assert_matches_differences(analytic, _numeric_grad(value, model.params), loss_value)
    _assert_matches_differences(dX, _numeric_grad(value, X), loss_value)


@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("act", HIDDEN_ACTIVATIONS)
def test_gradients_every_activation_and_loss(act, loss, rng):
    n_in, n_out, n = 3, 4, 6
    model = dn.MLP([n_in, 5, n_out], activation=act, dtype="float64", backend="cpu",
                   seed=int(rng.integers(1 << 30)))
    model.params[...] = rng.normal(0, 0.7, model.params.shape)  # non-zero biases too
    X = rng.standard_normal((n, n_in))
    _check_gradients(model, X, _targets(loss, rng, n, n_out), loss)


@pytest.mark.parametrize("out_act", ["sigmoid", "tanh", "softmax", "relu", "gelu", "silu"])
def test_gradients_output_activations(out_act, rng):
    model = dn.MLP([4, 6, 3], activation="tanh", output_activation=out_act, dtype="float64",
                   backend="cpu")
    model.params[...] = rng.normal(0, 0.7, model.params.shape)
    X = rng.standard_normal((5, 4))
    _check_gradients(model, X, rng.standard_normal((5, 3)), "mse")


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_gradients_with_sample_weight(loss, rng):
    model = dn.MLP([3, 4, 2], activation="tanh", dtype="float64", backend="cpu")
    X = rng.standard_normal((7, 3))
    w = rng.uniform(0.1, 3.0, size=7)
    _check_gradients(model, X, _targets(loss, rng, 7, 2), loss, sample_weight=w)


def test_cross_entropy_probability_targets(rng):
    model = dn.MLP([3, 4, 5], activation="silu", dtype="float64", backend="cpu")
    X = rng.standard_normal((6, 3))
    t = rng.dirichlet(np.ones(5), size=6)
    _check_gradients(model, X, t, "cross_entropy")


def test_gradients_random_deep_networks():
    """3-4 layer networks of random widths (hypothesis), every parameter checked."""
    # imported here: without hypothesis only this test skips, not the module (-m gpu included)
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hypothesis.settings(max_examples=15, deadline=None)
    @hypothesis.given(widths=st.lists(st.integers(1, 7), min_size=2, max_size=3),
                      n_in=st.integers(1, 5), n_out=st.integers(1, 4), n=st.integers(1, 6),
                      act=st.sampled_from(HIDDEN_ACTIVATIONS), seed=st.integers(0, 2**31))
    def check(widths, n_in, n_out, n, act, seed):
        rng = np.random.default_rng(seed)
        model = dn.MLP([n_in, *widths, n_out], activation=act, dtype="float64",
                       backend="cpu", seed=seed)
        model.params[...] = rng.normal(0, 0.8, model.params.shape)
        X = rng.standard_normal((n, n_in))
        _check_gradients(model, X, rng.standard_normal((n, n_out)), "huber")

    check()


def test_parameters_are_views_of_one_flat_buffer(backend):
    model = dn.MLP([4, 8, 3, 2], backend=backend)
    params = model.parameters()
    assert [p.name for p in params] == ["layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b",
                                        "layers.2.W", "layers.2.b"]
    assert model.params.size == sum(p.data.size for p in params) == model.n_params
    model.params[...] = 7
    assert all(float(p.data.min()) == 7 for p in params)
    model.grads[...] = 3
    assert all(float(p.grad.max()) == 3 for p in params)
    assert model.layers[0].W.shape == (4, 8) and model.layers[0].b.shape == (8,)


def test_backward_overwrites_gradients(rng):
    model = dn.MLP([3, 4, 2], backend="cpu", dtype="float64")
    X = rng.standard_normal((5, 3))
    dY = rng.standard_normal((5, 2))
    model.forward(X)
    model.backward(dY)
    first = model.grads.copy()
    model.grads[...] = np.nan
    model.forward(X)
    model.backward(dY)
    np.testing.assert_array_equal(model.grads, first)


def test_backward_does_not_modify_dY(rng):
    model = dn.MLP([3, 4, 2], activation="tanh", output_activation="sigmoid", backend="cpu")
    dY = rng.standard_normal((5, 2)).astype(np.float32)
    keep = dY.copy()
    model.forward(rng.standard_normal((5, 3)))
    model.backward(dY)
    np.testing.assert_array_equal(dY, keep)


def test_work_buffers_are_reused_per_batch_size(rng):
    model = dn.MLP([3, 4, 2], backend="cpu")
    a = model.forward(rng.standard_normal((5, 3)))
    b = model.forward(rng.standard_normal((5, 3)))
    assert a is b  # the same preallocated output buffer
    assert model.forward(rng.standard_normal((6, 3))) is not a


def test_seeded_init_is_reproducible_and_he_scaled():
    a, b = dn.MLP([400, 300, 2], seed=3, backend="cpu"), dn.MLP([400, 300, 2], seed=3,
                                                               backend="cpu")
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, dn.MLP([400, 300, 2], seed=4, backend="cpu").params)
    assert abs(a.layers[0].W.std() - np.sqrt(2 / 400)) < 0.003
    assert np.all(a.layers[0].b == 0)
    x = dn.MLP([400, 300, 2], init="xavier_uniform", seed=3, backend="cpu").layers[0].W
    assert np.abs(x).max() <= np.sqrt(6 / 700)


def test_predict_batches_and_returns_numpy(rng):
    model = dn.MLP([3, 5, 2], backend="cpu", dtype="float64")
    X = rng.standard_normal((10, 3))
    full = model.forward(X).copy()
    np.testing.assert_allclose(model.predict(X, batch_size=3), full, rtol=1e-12)
    assert model.predict(X[:0]).shape == (0, 2)


@pytest.mark.parametrize("kwargs,match", [
    ({"layer_sizes": [3]}, "at least two positive integers"),
    ({"layer_sizes": [3, 0, 2]}, "at least two positive integers"),
    ({"layer_sizes": [3, 2.5, 2]}, "at least two positive integers"),
    ({"activation": "swish"}, "valid activations: gelu, identity"),
    ({"activation": "softmax"}, "only valid as output_activation"),
    ({"output_activation": "softplus"}, "unknown activation 'softplus'"),
    ({"init": "orthogonal"}, "valid initializers: glorot"),
    ({"dtype": "float16"}, "valid dtypes: float32, float64"),
    ({"activation": ["relu", "tanh"]}, "2 names for 1 hidden layers"),
])
def test_bad_constructor_arguments(kwargs, match):
    args = {"layer_sizes": [3, 4, 2], **kwargs}
    with pytest.raises(dn.ConfigError, match=match):
        dn.MLP(backend="cpu", **args)


def test_wrong_feature_count_is_a_clear_error(rng):
    model = dn.MLP([3, 4, 2], backend="cpu")
    with pytest.raises(dn.DataError, match=r"shape \(n_samples, 3\)"):
        model.forward(rng.standard_normal((5, 4)))


def test_to_moves_and_keeps_parameters():
    model = dn.MLP([3, 4, 2], backend="cpu")
    before = model.params.copy()
    assert model.to("cpu") is model
    np.testing.assert_array_equal(model.params, before)


@pytest.mark.gpu
def test_cpu_and_gpu_agree_forward_backward(rng):
    X = rng.standard_normal((9, 5))
    dY = rng.standard_normal((9, 3))
    cpu = dn.MLP([5, 7, 3], activation="gelu", dtype="float64", backend="cpu")
    gpu = dn.MLP([5, 7, 3], activation="gelu", dtype="float64", backend="cuda")
    np.testing.assert_allclose(gpu.backend.to_numpy(gpu.forward(X)), cpu.forward(X), rtol=1e-12)
    gpu.backward(dY)
    cpu.backward(dY)
    np.testing.assert_allclose(gpu.backend.to_numpy(gpu.grads), cpu.grads, rtol=1e-10)


@pytest.mark.parametrize("name, value, match", [
    ("W", 1e300, "overflows the model's float32"),
    ("b", np.float64(-4e38), "overflows the model's float32"),
    ("W", np.nan, "must be finite"),
    ("b", [0.0, np.inf, 0.0], "must be finite"),
])
def test_setting_a_parameter_to_values_the_dtype_cannot_hold_is_refused(name, value, match):
    model = dn.MLP([2, 3, 1], backend="cpu", seed=0)
    before = model.params.copy()
    with pytest.raises(dn.DataError, match=match):
        setattr(model.layers[0], name, value)
    np.testing.assert_array_equal(model.params, before)


def test_a_float64_model_holds_values_past_float32_range():
    model = dn.MLP([2, 3, 1], dtype="float64", backend="cpu", seed=0)
    model.layers[0].W = 1e300
    assert (model.layers[0].W == 1e300).all()


F64 = dict(rtol=1e-12, atol=1e-12)


def _rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-30)


def _scaled_model(rng, n_in=4, dtype="float64", backend="cpu"):
    model = dn.MLP([n_in, 6, 3], activation="tanh", dtype=dtype, backend=backend,
                   seed=int(rng.integers(1 << 30)))
    model.params[...] = model.backend.asarray(rng.normal(0, 0.7, model.n_params),
                                              dtype=model.dtype)
    mean = rng.normal(0, 50, n_in)
    scale = rng.uniform(0.5, 20, n_in)
    model.set_input_scaling(mean, scale)
    return model, mean, scale


def _raw_inputs(rng, mean, scale, n=7):
    return mean + scale * rng.standard_normal((n, mean.size))


def test_input_scaling_forward_standardizes_and_leaves_X_alone(rng):
    model, mean, scale = _scaled_model(rng)
    X = _raw_inputs(rng, mean, scale)
    keep = X.copy()
    out = model.forward(X).copy()
    np.testing.assert_array_equal(X, keep)
    plain = dn.MLP([4, 6, 3], activation="tanh", dtype="float64", backend="cpu")
    plain.params[...] = model.params
    np.testing.assert_allclose(out, plain.forward((X - mean) / scale), **F64)
    np.testing.assert_allclose(model.predict(X, batch_size=3), out, **F64)


def test_input_scaling_gradient_matches_finite_differences_float64(rng):
    model, mean, scale = _scaled_model(rng)
    X = _raw_inputs(rng, mean, scale, n=5)
    target = rng.standard_normal((5, 3))
    loss = dn.losses.get("mse")

    def value():
        return loss(model.forward(X), target)[0]

    _, dpred = loss(model.forward(X), target)
    dX = model.backward(dpred).copy()
    analytic = model.grads.copy()
    # eps relative to the raw feature scale: X is O(50), the step must be too
    assert _rel_err(dX, _numeric_grad(value, X, eps=1e-5)) < 1e-6
    assert _rel_err(analytic, _numeric_grad(value, model.params, eps=1e-6)) < 1e-6


@pytest.mark.parametrize("mean,scale,match", [
    (np.zeros(3), np.ones(4), r"mean must have shape \(4,\)"),
    (np.zeros(4), np.ones((1, 4)), r"scale must have shape \(4,\)"),
    (np.zeros(4), np.array([1.0, 0.0, 1.0, 1.0]), r"scale must be > 0.*scale\[1\]"),
    (np.zeros(4), -np.ones(4), "scale must be > 0"),
    (np.array([0, np.nan, 0, 0]), np.ones(4), "mean contains NaN/Inf"),
    (np.zeros(4), np.array([1, 1, np.inf, 1]), "scale contains NaN/Inf"),
    (None, np.ones(4), "mean must be a numeric array"),
    (["a"] * 4, np.ones(4), "mean must be a numeric array"),
])
def test_input_scaling_rejects_bad_statistics(mean, scale, match):
    model = dn.MLP([4, 3], backend="cpu")
    with pytest.raises(dn.DataError, match=match):
        model.set_input_scaling(mean, scale)
    assert model.input_scaling is None


def test_input_scaling_property_returns_float64_copies_and_clears(rng):
    model = dn.MLP([3, 2], backend="cpu")
    assert model.input_scaling is None
    mean, scale = rng.standard_normal(3).astype(np.float32), rng.uniform(1, 2, 3)
    model.set_input_scaling(mean, scale)
    got_mean, got_scale = model.input_scaling
    assert got_mean.dtype == got_scale.dtype == np.float64
    np.testing.assert_array_equal(got_mean, mean.astype(np.float64))
    got_mean[...] = 99
    assert model.input_scaling[0][0] != 99
    model.set_input_scaling(None, None)
    assert model.input_scaling is None


def test_input_scaling_survives_to_another_backend(rng):
    model, mean, scale = _scaled_model(rng)
    X = _raw_inputs(rng, mean, scale)
    before = model.predict(X)
    model.to(dn.get_backend("cpu", kernels="reference"))
    np.testing.assert_array_equal(model.input_scaling[1], scale)
    np.testing.assert_allclose(model.predict(X), before, **F64)


def test_standardization_lost_at_predict_is_saved_in_checkpoint(rng, tmp_path, backend):
    """The input statistics travel with the checkpoint and apply on dn.load."""
    model, mean, scale = _scaled_model(rng, backend=backend)
    X = _raw_inputs(rng, mean, scale)
    path = dn.save(model, tmp_path / "m.safetensors")
    assert io.read_metadata(path)["input_scaling"] is True
    loaded, _ = dn.load(path, backend=backend)
    np.testing.assert_array_equal(loaded.input_scaling[0], mean)
    np.testing.assert_array_equal(loaded.input_scaling[1], scale)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    ck = io.load_checkpoint(path, backend="cpu")
    np.testing.assert_array_equal(ck.model.input_scaling[1], scale)


def test_fit_and_evaluate_see_raw_data_with_input_scaling(rng):
    """fit on raw X with the scaling set == fit on standardized X without it."""
    X = rng.normal(1000, 300, (48, 3))
    y = rng.integers(0, 2, 48)
    Xv, yv = rng.normal(1000, 300, (16, 3)), rng.integers(0, 2, 16)
    mean, scale = X.mean(0), X.std(0)
    seed = int(rng.integers(1 << 30))
    scaled = dn.MLP([3, 8, 2], dtype="float64", backend="cpu", seed=seed)
    scaled.set_input_scaling(mean, scale)
    plain = dn.MLP([3, 8, 2], dtype="float64", backend="cpu", seed=seed)
    args = dict(loss="cross_entropy", epochs=2, batch_size=16, progress=False, seed=seed)
    h1 = dn.fit(scaled, X, y, validation_data=(Xv, yv), **args)
    h2 = dn.fit(plain, (X - mean) / scale, y, validation_data=((Xv - mean) / scale, yv), **args)
    np.testing.assert_allclose(scaled.params, plain.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h1.history["val_loss"], h2.history["val_loss"], rtol=1e-9)
    np.testing.assert_allclose(scaled.predict(Xv), plain.predict((Xv - mean) / scale),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [-1, "a", 1.5, True, [1]])
def test_mlp_bad_seed_is_a_config_error(seed):
    with pytest.raises(dn.ConfigError, match="seed must be a non-negative integer or None"):
        dn.MLP([3, 2], backend="cpu", seed=seed)


def test_mlp_numpy_integer_seed_is_accepted():
    a = dn.MLP([3, 4, 2], backend="cpu", seed=np.int64(7))
    b = dn.MLP([3, 4, 2], backend="cpu", seed=7)
    np.testing.assert_array_equal(a.params, b.params)
    assert type(a.config()["seed"]) is int


@pytest.mark.parametrize("activation", [None, 5, {"relu"}])
def test_mlp_activation_not_a_name_is_a_config_error(activation):
    with pytest.raises(dn.ConfigError, match="valid activations: .*relu"):
        dn.MLP([3, 4, 2], activation=activation, backend="cpu")


@pytest.mark.parametrize("sizes", [[True, 3], [3, False], [3.0, 2], ["3", 2], "34", None, 5,
                                   [3, -2], [np.float64(3), 2]])
def test_mlp_layer_sizes_not_positive_ints_is_a_config_error(sizes):
    with pytest.raises(dn.ConfigError, match="at least two positive integers"):
        dn.MLP(sizes, backend="cpu")


def test_mlp_numpy_int_layer_sizes_are_accepted():
    model = dn.MLP(np.array([3, 4, 2]), backend="cpu")
    assert model.layer_sizes == [3, 4, 2] and all(type(s) is int for s in model.layer_sizes)


@pytest.mark.parametrize("dtype,name", [(np.float32, "float32"), (np.dtype("float64"), "float64"),
                                        ("float32", "float32"), ("f8", "float64")])
def test_mlp_numpy_dtype_spellings_are_accepted(dtype, name):
    model = dn.MLP([3, 2], dtype=dtype, backend="cpu")
    assert model.dtype == np.dtype(name) and model.config()["dtype"] == name


@pytest.mark.parametrize("dtype", [None, np.int32, "float16", "nonsense", 5])
def test_mlp_unknown_dtype_lists_valid_ones(dtype):
    with pytest.raises(dn.ConfigError, match="valid dtypes: float32, float64"):
        dn.MLP([3, 2], dtype=dtype, backend="cpu")


@pytest.mark.parametrize("alpha", [10**400, float("nan"), -0.5, "0.1", True])
def test_mlp_alpha_past_float_range_is_a_config_error(alpha):
    with pytest.raises(dn.ConfigError, match="alpha must be a finite number >= 0"):
        dn.MLP([3, 2], activation="leaky_relu", alpha=alpha, backend="cpu")


def test_mlp_numpy_scalar_alpha_is_accepted():
    assert dn.MLP([3, 2], activation="leaky_relu", alpha=np.float32(0.25),
                  backend="cpu").alpha == 0.25


@pytest.mark.parametrize("batch_size", [0, -3, 1.5, True, None])
def test_predict_batch_size_zero_is_a_config_error(batch_size, rng):
    model = dn.MLP([3, 2], backend="cpu")
    with pytest.raises(dn.ConfigError, match="batch_size must be a positive integer"):
        model.predict(rng.standard_normal((4, 3)), batch_size=batch_size)


def test_backward_before_forward_is_a_devnet_error(rng):
    model = dn.MLP([3, 4, 2], backend="cpu")
    with pytest.raises(dn.DevnetError, match=r"backward\(\) called before forward\(\)"):
        model.backward(rng.standard_normal((5, 2)))


def test_backward_with_another_batch_size_than_forward_is_a_devnet_error(rng):
    model = dn.MLP([3, 4, 2], backend="cpu")
    model.forward(rng.standard_normal((5, 3)))
    with pytest.raises(dn.DevnetError, match=r"dY for 6 samples .* forward\(\) ran on 5"):
        model.backward(rng.standard_normal((6, 2)))


def test_huge_mlp_says_how_many_bytes_before_allocating(monkeypatch):
    def no_alloc(self, *args):
        raise AssertionError("allocated before checking the size")

    monkeypatch.setattr(dn.MLP, "_initial_params", no_alloc)
    monkeypatch.setattr(mlp_module, "_physical_memory", lambda: 2**30)
    sizes = [10**5, 10**5, 10]
    n = 10**5 * 10**5 + 10**5 + 10**5 * 10 + 10
    with pytest.raises(dn.ConfigError, match=f"{2 * 4 * n:,} bytes"):
        dn.MLP(sizes, backend="cpu")


def test_huge_mlp_memory_error_becomes_a_devnet_error(monkeypatch):
    def oom(self):
        raise MemoryError

    monkeypatch.setattr(dn.MLP, "_initial_params", oom)
    monkeypatch.setattr(mlp_module, "_physical_memory", lambda: None)
    with pytest.raises(dn.DevnetError, match=f"{2 * 8 * (3 * 4 + 4):,} bytes"):
        dn.MLP([3, 4], dtype="float64", backend="cpu")
