"""The device layer: selection, reasons, errors, transfers."""

import logging

import numpy as np
import pytest
from devnet.kernels import reference

import devnet as dn
from devnet import backend as backend_mod
from devnet.backend import cuda as cuda_backend
from devnet.optim import SGD

NO_CUDA = cuda_backend.unavailable_reason()


def test_cpu_backend_api(rng):
    be = dn.get_backend("cpu")
    assert be.name == "cpu" and be.xp is np and be.device == "cpu"
    a = be.asarray(rng.standard_normal((3, 4)), dtype="float32")
    assert a.dtype == np.float32 and a.flags.c_contiguous
    assert isinstance(be.to_numpy(a), np.ndarray)
    assert be.rng(1).standard_normal() == np.random.default_rng(1).standard_normal()
    be.synchronize()
    for name in reference.KERNEL_NAMES:
        assert callable(getattr(be.kernels, name))


def test_backend_instance_passes_through():
    be = dn.get_backend("cpu")
    assert dn.get_backend(be) is be
    assert dn.get_backend("CPU") is be


def test_reference_kernel_set():
    be = dn.get_backend("cpu", kernels="reference")
    assert be.kernels.source == "devnet.kernels.reference"
    with pytest.raises(dn.ConfigError, match="fused, reference"):
        dn.get_backend("cpu", kernels="fast")


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "gpu0", "cuda:-1"])
def test_unknown_device_lists_valid(spec, monkeypatch):
    monkeypatch.delenv("DEVNET_DEVICE", raising=False)
    with pytest.raises(dn.ConfigError, match="valid devices: auto, cpu, cuda, cuda:N"):
        dn.get_backend(spec)


def test_available_backends_lists_cpu_first():
    devices = dn.available_backends()
    assert devices[0] == "cpu"
    assert all(d.startswith("cuda:") for d in devices[1:])


@pytest.mark.skipif(NO_CUDA is None, reason="a GPU is present")
def test_auto_without_gpu_picks_cpu_and_logs_why(caplog, monkeypatch):
    monkeypatch.delenv("DEVNET_DEVICE", raising=False)
    from devnet import backend as backend_mod

    backend_mod._cache.clear()
    with caplog.at_level(logging.INFO, logger="devnet"):
        be = dn.get_backend("auto")
    assert be.name == "cpu"
    assert be.reason == NO_CUDA
    lines = [r.getMessage() for r in caplog.records if r.name == "devnet"]
    assert len(lines) == 1 and "using cpu" in lines[0] and NO_CUDA in lines[0]


@pytest.mark.skipif(NO_CUDA is None, reason="a GPU is present")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_gpu_raises_with_reason(spec):
    with pytest.raises(dn.DeviceUnavailableError, match="unavailable") as info:
        dn.get_backend(spec)
    assert NO_CUDA.split(" (")[0] in str(info.value)


def test_env_var_overrides_auto(monkeypatch):
    from devnet import backend as backend_mod

    backend_mod._cache.clear()
    monkeypatch.setenv("DEVNET_DEVICE", "cpu")
    assert dn.get_backend("auto").name == "cpu"
    monkeypatch.setenv("DEVNET_DEVICE", "quantum")
    with pytest.raises(dn.ConfigError, match="quantum"):
        dn.get_backend("auto")


def test_missing_cupy_reason_is_recorded(monkeypatch):
    monkeypatch.setattr(cuda_backend, "cupy", None)
    monkeypatch.setattr(cuda_backend, "IMPORT_ERROR", "CuPy is not installed (test)")
    assert cuda_backend.unavailable_reason() == "CuPy is not installed (test)"
    assert cuda_backend.device_count() == 0
    with pytest.raises(dn.DeviceUnavailableError, match="CuPy is not installed"):
        cuda_backend.CUDABackend(0)


def test_importing_devnet_never_needs_cupy():
    import subprocess
    import sys

    code = ("import sys; sys.modules['cupy'] = None; import devnet as dn; "
            "from devnet.backend import cuda; print(cuda.unavailable_reason())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "CuPy is not installed" in out.stdout


@pytest.mark.gpu
def test_cuda_backend_roundtrip(rng):
    be = dn.get_backend("cuda")
    a = rng.standard_normal((5, 3))
    d = be.asarray(a, dtype="float64")
    assert be.is_array(d)
    np.testing.assert_array_equal(be.to_numpy(d), a)


def _data(rng, n=96, n_in=5, k=3):
    return rng.standard_normal((n, n_in)).astype("float32"), rng.integers(0, k, n)


@pytest.mark.skipif(NO_CUDA is None, reason="a GPU is present: auto picks it")
def test_auto_and_cpu_were_two_backends_so_to_cpu_silently_froze_training(rng, monkeypatch):
    monkeypatch.delenv("DEVNET_DEVICE", raising=False)
    assert dn.get_backend("auto") is dn.get_backend("cpu") is dn.get_backend(" CPU ")
    model = dn.MLP([5, 8, 3], backend="auto", seed=0)
    opt = SGD(model.parameters(), lr=0.1)
    grads = model.grads
    model.to("cpu")  # the device it is on: a no-op, not a new gradient buffer
    assert model.grads is grads
    X, y = _data(rng)
    before = model.params.copy()
    dn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=16, progress=False)
    assert not np.array_equal(before, model.params)


@pytest.mark.parametrize("spec", ["cuda:\u0663", "cuda:\uff11", "cuda:99999999999999999999"])
def test_device_index_took_non_ascii_digits_and_unbounded_numbers(spec):
    with pytest.raises(dn.ConfigError, match="valid devices: auto, cpu, cuda, cuda:N"):
        backend_mod.parse_device(spec)


def test_env_var_was_ignored_for_auto_spelled_in_capitals_and_not_named(monkeypatch):
    monkeypatch.setenv("DEVNET_DEVICE", "quantum")
    for spec in ("auto", "AUTO", " Auto ", None):
        with pytest.raises(dn.ConfigError, match="DEVNET_DEVICE.*quantum.*valid devices"):
            dn.get_backend(spec)
    monkeypatch.setenv("DEVNET_DEVICE", " CPU ")
    assert dn.get_backend("AUTO") is dn.get_backend("cpu")


@pytest.mark.parametrize("value", [[1, 2], None, "x"])
def test_backend_of_a_non_array_was_an_attribute_error(value):
    with pytest.raises(dn.ConfigError, match="NumPy or CuPy array"):
        backend_mod.backend_of(value)


@pytest.mark.parametrize("a, dtype", [([1, 2], "bogus"), ([[1], [2, 3]], None)])
def test_cpu_asarray_of_bad_input_was_a_raw_numpy_error(a, dtype):
    with pytest.raises(dn.DataError, match="cannot make"):
        dn.get_backend("cpu").asarray(a, dtype=dtype)


@pytest.mark.parametrize("seed", [-1, "a", 1.5, True])
def test_cpu_rng_with_a_bad_seed_was_a_raw_numpy_error(seed):
    with pytest.raises(dn.ConfigError, match="seed must be a non-negative integer"):
        dn.get_backend("cpu").rng(seed)
