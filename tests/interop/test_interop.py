"""devnet.interop: DLPack exchange and PyTorch nn.Sequential weights through safetensors."""

from __future__ import annotations

import numpy as np
import pytest

import devnet as dn
from devnet import interop

torch = pytest.importorskip("torch")


def _sequential(acts=("tanh", "gelu", "relu"), sizes=(6, 16, 12, 8, 3), dtype=torch.float32):
    mods = []
    for i in range(len(sizes) - 1):
        mods.append(torch.nn.Linear(sizes[i], sizes[i + 1], dtype=dtype))
        if i < len(acts):
            name = acts[i]
            mods.append(torch.nn.GELU(approximate="tanh") if name == "gelu"
                        else getattr(torch.nn, interop._TO_TORCH[name])())
    return torch.nn.Sequential(*mods)


def test_torch_sequential_in_memory_round_trip(backend):
    seq = _sequential()
    X = torch.randn(33, 6)
    model = interop.from_torch_sequential(seq, backend=backend)
    assert model.layer_sizes == [6, 16, 12, 8, 3]
    assert model.activations == ["tanh", "gelu", "relu", "identity"]
    expected = seq(X).detach().numpy()
    np.testing.assert_allclose(model.predict(X.numpy()), expected, rtol=1e-4, atol=1e-5)
    back = interop.to_torch_sequential(model)
    np.testing.assert_allclose(back(X).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_safetensors_import_from_torch_state_dict(tmp_path):
    from safetensors.torch import save_file

    seq = _sequential(acts=("relu", "relu", "relu"), dtype=torch.float64)
    path = tmp_path / "seq.safetensors"
    save_file(seq.state_dict(), str(path))
    model = interop.import_torch(path, activation="relu", backend="cpu")
    assert model.dtype == np.float64
    X = torch.randn(10, 6, dtype=torch.float64)
    np.testing.assert_allclose(model.predict(X.numpy()), seq(X).detach().numpy(), rtol=1e-10)
    # W is the transpose of torch's (out, in) weight
    np.testing.assert_array_equal(model.layers[0].W, seq[0].weight.detach().numpy().T)


def test_safetensors_export_loads_into_torch(tmp_path):
    from safetensors.torch import load_file

    model = dn.MLP([5, 9, 4, 2], activation=["leaky_relu", "sigmoid"], backend="cpu",
                   seed=int(np.random.default_rng().integers(1000)), alpha=0.2)
    path = interop.export_torch(model, tmp_path / "m.safetensors")
    seq = interop.to_torch_sequential(model)
    for p in seq.parameters():  # scramble, so the load below must restore them
        torch.nn.init.normal_(p)
    seq.load_state_dict(load_file(str(path)))
    X = np.random.default_rng().normal(size=(17, 5)).astype(np.float32)
    np.testing.assert_allclose(seq(torch.from_numpy(X)).detach().numpy(), model.predict(X),
                               rtol=1e-5, atol=1e-6)
    again = interop.import_torch(path, backend="cpu")  # activations from the metadata
    assert again.activations == model.activations and again.alpha == pytest.approx(0.2)
    np.testing.assert_array_equal(again.predict(X), model.predict(X))


def test_unsupported_modules_are_named():
    seq = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.1),
                              torch.nn.Linear(4, 2))
    with pytest.raises(dn.ConfigError, match="module 1 is a Dropout"):
        interop.from_torch_sequential(seq, backend="cpu")
    with pytest.raises(dn.ConfigError, match="approximate='tanh'"):
        interop.from_torch_sequential(torch.nn.Sequential(torch.nn.Linear(3, 4),
                                                          torch.nn.GELU()), backend="cpu")


def test_bad_safetensors_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 5)
    with pytest.raises(dn.CheckpointError):
        interop.import_torch(bad, backend="cpu")


def test_dlpack_in_is_zero_copy_on_the_cpu():
    t = torch.randn(8, 3)
    a = interop.as_array(t, "cpu")
    assert isinstance(a, np.ndarray) and a.shape == (8, 3)
    t[0, 0] = 123.0
    assert a[0, 0] == 123.0  # shared memory, not a copy
    g = torch.randn(4, 2, requires_grad=True)
    np.testing.assert_array_equal(interop.as_array(g, "cpu"), g.detach().numpy())
    np.testing.assert_array_equal(interop.to_numpy(t), t.numpy())
    np.testing.assert_array_equal(interop.from_dlpack(t, "cpu"), t.numpy())


def test_parameters_export_as_dlpack_views():
    model = dn.MLP([3, 4, 2], backend="cpu", seed=0)
    params = interop.export_parameters(model, "torch")
    assert set(params) == {"layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b"}
    assert tuple(params["layers.0.W"].shape) == (3, 4)
    params["layers.1.b"][1] = 5.0
    assert model.layers[1].b[1] == 5.0  # writes through to the model
    raw = interop.export_parameters(model)
    assert all(hasattr(v, "__dlpack__") for v in raw.values())
    with pytest.raises(dn.ConfigError, match="valid targets"):
        interop.export_parameters(model, "tensorflow")


def test_model_accepts_tensors_converted_at_the_edge():
    model = dn.MLP([4, 8, 1], backend="cpu", seed=0)
    X = torch.randn(16, 4)
    out = model.predict(interop.as_array(X, model.backend))
    np.testing.assert_allclose(out, model.predict(X.numpy()))


def test_jax_round_trip():
    jax = pytest.importorskip("jax", reason="JAX is not installed here")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    j = interop.to_jax(a)
    np.testing.assert_array_equal(np.asarray(j), a)
    np.testing.assert_array_equal(interop.as_array(jax.numpy.asarray(a), "cpu"), a)


def test_fit_evaluate_predict_accept_torch_tensors():
    torch = pytest.importorskip("torch")
    X, y = dn.data.load_digits()
    model = dn.MLP([64, 32, 10], backend="cpu", seed=0)
    twin = dn.MLP([64, 32, 10], backend="cpu", seed=0)
    dn.fit(model, torch.from_numpy(X), torch.from_numpy(y), loss="cross_entropy", epochs=2,
           progress=False)
    dn.fit(twin, X, y, loss="cross_entropy", epochs=2, progress=False)
    np.testing.assert_array_equal(model.params, twin.params)
    got = dn.evaluate(model, torch.from_numpy(X), torch.from_numpy(y), loss="cross_entropy")
    assert got == dn.evaluate(twin, X, y, loss="cross_entropy")
    np.testing.assert_array_equal(dn.predict(model, torch.from_numpy(X[:5])),
                                  dn.predict(twin, X[:5]))


def test_torch_export_keeps_the_input_standardization(tmp_path, rng):
    """Regression: to_torch_sequential / export_torch dropped the model's input scaling, so the
    exported network computed something else on raw inputs."""
    from safetensors.torch import load_file

    model = dn.MLP([5, 7, 3], activation="tanh", dtype="float64", backend="cpu", seed=1)
    model.set_input_scaling(rng.normal(size=5), rng.uniform(0.5, 2.0, size=5))
    X = rng.normal(size=(11, 5))
    want = model.predict(X)
    seq = interop.to_torch_sequential(model)
    np.testing.assert_allclose(seq(torch.from_numpy(X)).detach().numpy(), want, rtol=1e-12,
                               atol=1e-12)
    path = interop.export_torch(model, tmp_path / "m.safetensors")
    seq2 = interop.to_torch_sequential(dn.MLP([5, 7, 3], activation="tanh", dtype="float64",
                                              backend="cpu"))
    seq2.load_state_dict(load_file(str(path)))
    np.testing.assert_allclose(seq2(torch.from_numpy(X)).detach().numpy(), want, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("kwargs", [{"block": "residual"}, {"norm": "layernorm"}])
def test_torch_export_refuses_models_a_linear_stack_cannot_express(tmp_path, kwargs):
    """Regression: residual / LayerNorm models exported their W, b only: a different network."""
    model = dn.MLP([4, 6, 6, 2], backend="cpu", seed=0, **kwargs)
    with pytest.raises(dn.ConfigError, match="only plain MLPs"):
        interop.to_torch_sequential(model)
    with pytest.raises(dn.ConfigError, match="only plain MLPs"):
        interop.export_torch(model, tmp_path / "m.safetensors")


def test_from_torch_sequential_refuses_weights_past_the_chosen_dtype():
    seq = _sequential(sizes=(4, 5, 2), acts=("relu",), dtype=torch.float64)
    with torch.no_grad():
        seq[0].weight[1, 2] = 1e300
    with pytest.raises(dn.DataError, match="overflows the model's float32"):
        interop.from_torch_sequential(seq, backend="cpu", dtype="float32")
    model = interop.from_torch_sequential(seq, backend="cpu", dtype="float64")
    assert model.layers[0].W[2, 1] == 1e300
