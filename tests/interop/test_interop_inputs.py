"""devnet.interop refuses what it cannot convert by name (a DataError, ConfigError or
CheckpointError, never a raw torch or safetensors error) and keeps values it can convert."""

from __future__ import annotations

import numpy as np
import pytest

import devnet as dn
from devnet import interop

TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def _model(sizes=(3, 5, 2), **kw):
    kw.setdefault("backend", "cpu")
    return dn.MLP(list(sizes), **kw)


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("case", ["bfloat16", "sparse", "meta", "conj"])
def test_as_array_of_an_unconvertible_tensor_is_a_data_error(case):
    torch = _torch()
    t = {"bfloat16": lambda: torch.ones(2, 3, dtype=torch.bfloat16),
         "sparse": lambda: torch.ones(2, 3).to_sparse(),
         "meta": lambda: torch.empty(2, 3, device="meta"),
         "conj": lambda: torch.ones(2, 3, dtype=torch.complex64).conj()}[case]()
    with pytest.raises(dn.DataError, match="cannot convert"):
        interop.as_array(t, "cpu")


@pytest.mark.parametrize("value", ["abc", None, np.array(["a", "b"]), [object(), object()]])
def test_as_array_of_non_numbers_is_a_data_error(value):
    with pytest.raises(dn.DataError):
        interop.as_array(value, "cpu")


def test_as_array_keeps_a_grad_tensors_values(rng):
    torch = _torch()
    X = rng.standard_normal((4, 3))
    t = torch.from_numpy(X.copy()).requires_grad_(True)
    np.testing.assert_array_equal(interop.as_array(t, "cpu"), X)
    np.testing.assert_array_equal(interop.as_array(torch.from_numpy(X.copy()).T, "cpu"), X.T)


def test_softmax_over_the_batch_dimension_is_refused():
    torch = _torch()
    nn = torch.nn
    with pytest.raises(dn.ConfigError, match="dim=0"):
        interop.from_torch_sequential(nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=0)),
                                      backend="cpu")
    model = interop.from_torch_sequential(nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=-1)),
                                          backend="cpu")
    assert model.output_activation == "softmax"


def test_leaky_relu_slopes_that_differ_are_refused_not_unified(rng):
    torch = _torch()
    nn = torch.nn
    seq = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.1), nn.Linear(4, 4), nn.LeakyReLU(0.3),
                        nn.Linear(4, 2))
    with pytest.raises(dn.ConfigError, match="slopes"):
        interop.from_torch_sequential(seq, backend="cpu")
    seq = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2), nn.Linear(4, 4), nn.LeakyReLU(0.2),
                        nn.Linear(4, 2)).double()
    model = interop.from_torch_sequential(seq, backend="cpu")
    X = rng.standard_normal((6, 3))
    np.testing.assert_allclose(model.predict(X), seq(torch.from_numpy(X)).detach().numpy(),
                               **TOL["float64"])


def test_non_finite_torch_weights_are_refused():
    torch = _torch()
    lin = torch.nn.Linear(3, 4)
    with torch.no_grad():
        lin.weight[1, 2] = float("nan")
    with pytest.raises(dn.ConfigError, match="NaN"):
        interop.from_torch_sequential(torch.nn.Sequential(lin), backend="cpu")


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_torch_weights_widen_to_float32(half, rng):
    torch = _torch()
    seq = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    seq = seq.to(getattr(torch, half))
    model = interop.from_torch_sequential(seq, backend="cpu")
    assert model.dtype == np.float32
    np.testing.assert_array_equal(model.layers[0].W, seq[0].weight.detach().float().numpy().T)
    X = rng.standard_normal((4, 3)).astype(np.float32)
    expected = seq.float()(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(model.predict(X), expected, **TOL["float32"])


@pytest.mark.parametrize("what", ["Linear", "LSTM", "int"])
def test_from_torch_sequential_of_a_non_sequence_is_a_config_error(what):
    torch = _torch()
    obj = {"Linear": lambda: torch.nn.Linear(3, 2), "LSTM": lambda: torch.nn.LSTM(3, 2),
           "int": lambda: 5}[what]()
    with pytest.raises(dn.ConfigError, match="nn.Sequential"):
        interop.from_torch_sequential(obj, backend="cpu")


def _save(tmp_path, tensors, metadata=None):
    from safetensors.numpy import save_file

    path = tmp_path / "seq.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


def _linear(n_out=4, n_in=3, dtype=np.float32, prefix=""):
    return {f"{prefix}0.weight": np.ones((n_out, n_in), dtype),
            f"{prefix}0.bias": np.ones(n_out, dtype)}


@pytest.mark.parametrize("metadata", [
    {"devnet.activations": "not json"},
    {"devnet.activations": '["identity"]', "devnet.alpha": "x"},
    {"devnet.activations": '{"a": 1}'},
    {"devnet.activations": "[1]"},
])
def test_import_torch_with_bad_metadata_is_a_checkpoint_error(metadata, tmp_path):
    with pytest.raises(dn.CheckpointError, match="metadata"):
        interop.import_torch(_save(tmp_path, _linear(), metadata), backend="cpu")


def test_import_torch_of_two_modules_keys_is_refused_not_merged(tmp_path):
    tensors = {**_linear(prefix="enc."), **_linear(2, 4, prefix="dec.")}
    with pytest.raises(dn.CheckpointError, match="more than one module"):
        interop.import_torch(_save(tmp_path, tensors), backend="cpu")


@pytest.mark.parametrize("case", ["1-D weight", "int weights", "nan weights"])
def test_import_torch_of_bad_weights_is_a_devnet_error(case, tmp_path):
    tensors = {"1-D weight": {"0.weight": np.ones(4, np.float32),
                              "0.bias": np.ones(4, np.float32)},
               "int weights": _linear(dtype=np.int32),
               "nan weights": {**_linear(), "0.bias": np.array([0, np.nan, 0, 0], np.float32)}
               }[case]
    with pytest.raises(dn.DevnetError):
        interop.import_torch(_save(tmp_path, tensors), backend="cpu")


def test_import_torch_of_float16_weights_builds_a_float32_model(tmp_path):
    model = interop.import_torch(_save(tmp_path, _linear(dtype=np.float16)), backend="cpu")
    assert model.dtype == np.float32


@pytest.mark.parametrize("fn", ["export_parameters", "to_torch_sequential", "export_torch"])
def test_interop_of_something_not_a_model_is_a_config_error(fn, tmp_path):
    args = (tmp_path / "m.safetensors",) if fn == "export_torch" else ()
    if fn == "to_torch_sequential":
        _torch()
    with pytest.raises(dn.ConfigError, match="devnet MLP"):
        getattr(interop, fn)(object(), *args)


def test_export_torch_into_a_missing_folder_is_a_checkpoint_error(tmp_path):
    with pytest.raises(dn.CheckpointError, match="cannot write"):
        interop.export_torch(_model(), tmp_path / "missing" / "m.safetensors")


def test_to_torch_of_a_list_is_a_data_error():
    _torch()
    with pytest.raises(dn.DataError, match="to_torch"):
        interop.to_torch([1.0, 2.0])
