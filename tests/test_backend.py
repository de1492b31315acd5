"""The device layer: selection, reasons, errors, transfers."""

import logging

import numpy as np
import pytest
from devnet.kernels import reference

import devnet as dn
from devnet.backend import cuda as cuda_backend

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
