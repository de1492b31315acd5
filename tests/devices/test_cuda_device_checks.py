"""The CUDA backend's own checks, run without a GPU and without the simulator.

``unavailable_reason`` must refuse a machine where kernels cannot be built (Numba's deprecated
built-in CUDA target, a missing NVVM) before "auto" picks CUDA; the launch wrapper must refuse
arrays whose dtype or layout differ from the compiled signature, because the direct launch
skips the dispatcher's typing (and the simulator re-types every call, so only these tests see
the check work as it does on a GPU).
"""

from __future__ import annotations

import os
import types

import numpy as np
import pytest

import devnet as dn
from devnet.backend import cuda as cuda_backend

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or cuda_backend.SIMULATOR:
    pytest.skip("checks the real (non-simulated) path", allow_module_level=True)


class _FakeRuntime:
    @staticmethod
    def getDeviceCount():  # noqa: N802
        return 2


class _FakeDevice:
    def __init__(self, index):
        self.index = index

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CuPy that sees two devices; the numba checks' caches emptied."""
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=_FakeRuntime,
                                                            Device=_FakeDevice))
    monkeypatch.setattr(cuda_backend, "cupy", fake)
    monkeypatch.setattr(cuda_backend, "_NUMBA_REASON", [])
    monkeypatch.setattr(cuda_backend, "_COMPILE_REASON", {})
    return fake


def test_numba_cuda_is_the_target_here():
    assert cuda_backend._numba_cuda_reason() is None


def test_numbas_builtin_cuda_target_is_refused(monkeypatch, tmp_path):
    import numba_cuda

    monkeypatch.setattr(numba_cuda, "__file__", str(tmp_path / "numba_cuda" / "__init__.py"))
    reason = cuda_backend._numba_cuda_reason()
    assert "deprecated built-in CUDA target" in reason and "numba-cuda[cu12]" in reason


def test_auto_does_not_pick_cuda_when_numba_cuda_is_missing(fake_gpu, monkeypatch):
    monkeypatch.setattr(cuda_backend, "_numba_cuda_reason",
                        lambda: "numba-cuda is not installed (test)")
    assert cuda_backend.unavailable_reason(0) == "numba-cuda is not installed (test)"
    with pytest.raises(dn.DeviceUnavailableError, match="numba-cuda is not installed"):
        cuda_backend.CUDABackend(0)


def test_a_kernel_that_does_not_compile_is_the_reason_and_is_cached(fake_gpu, monkeypatch):
    from numba import cuda

    calls = []

    def broken_jit(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("libNVVM cannot be found (test)")

    monkeypatch.setattr(cuda_backend, "_numba_cuda_reason", lambda: None)
    monkeypatch.setattr(cuda, "jit", broken_jit)
    first = cuda_backend.unavailable_reason(1)
    assert first.startswith("numba-cuda cannot compile a kernel for cuda:1")
    assert "libNVVM cannot be found" in first
    assert cuda_backend.unavailable_reason(1) == first and len(calls) == 1
    assert cuda_backend.unavailable_reason(2).startswith("no CUDA device 2")


def test_no_cuda_device_ordinal_checked_before_numba(fake_gpu):
    assert cuda_backend.unavailable_reason(5) == \
        "no CUDA device 5: this machine has 2 (cuda:0 .. cuda:1)"


# --- the launch wrapper's signature check, on the real _Kernel.check ----------------------------

def _kernel_without_compiling(name, dtype):
    """A ``launch.Kernel`` whose check is the real one, without compiling (that needs a GPU)."""
    from devnet.kernels.cuda import launch, registry

    k = object.__new__(launch.Kernel)
    k.name = name
    sig = registry.signature(name, launch.FLOAT_TYPES[np.dtype(dtype)])
    k.arrays = launch.array_specs(sig)
    fn = registry.pyfunc(name, dtype)
    k.argnames = fn.__code__.co_varnames[:fn.__code__.co_argcount]
    return k


def test_launch_check_refuses_float64_on_a_float32_kernel(rng):
    k = _kernel_without_compiling("bias_act_fwd_relu", np.float32)
    A = rng.standard_normal((4, 3)).astype(np.float32)
    b64 = rng.standard_normal(3)
    k.check((A, b64.astype(np.float32), A, False, np.float32(0.01)))  # the right types pass
    with pytest.raises(dn.DataError, match=r"argument 'b' must be a C-contiguous 1-D float32 "
                                           r"array, got a 1-D float64"):
        k.check((A, b64, A, False, np.float32(0.01)))


def test_launch_check_refuses_a_strided_view(rng):
    k = _kernel_without_compiling("act_bwd_tanh", np.float64)
    G = rng.standard_normal((5, 8))
    view = G[:, ::2]
    part = np.empty(64)
    with pytest.raises(dn.DataError, match=r"argument 'G' .* not C-contiguous \(strides"):
        k.check((view, view.copy(), view.copy(), view.copy(), part, 0.01))
    with pytest.raises(dn.DataError, match="argument 'db'|argument 'part'"):
        k.check((G, G, G, G, part.reshape(8, 8), 0.01))


def test_launch_check_refuses_wrong_label_dtype(rng):
    k = _kernel_without_compiling("softmax_xent_label_i64", np.float32)
    L = rng.standard_normal((4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 4).astype(np.int32)
    with pytest.raises(dn.DataError, match="argument 'T' must be a C-contiguous 1-D int64"):
        k.check((L, labels, L, L[0], False, np.float32(1.0), np.empty(4)))


# --- marshalling (its bytes against numba-cuda's: devices/test_cuda_launch_params.py) -------

def test_marshal_refuses_an_array_of_another_device(rng):
    from devnet.kernels.cuda import launch as kcuda
    from devnet.kernels.cuda import registry
    from numba import types

    from devnet.testing import cupy_sim

    sig = registry.signature("sgd_step", types.float32)
    with cupy_sim.cuda.Device(1):
        g = cupy_sim.asarray(rng.standard_normal(5).astype(np.float32))
    p = cupy_sim.asarray(rng.standard_normal(5).astype(np.float32))
    with pytest.raises(dn.DataError, match="cuda:1 was passed to a kernel launching on cuda:0"):
        kcuda.marshal(kcuda.scalar_packers(sig), (p, g, np.float32(0.1), np.float32(0)), 0)


def test_a_kernel_is_registered_only_with_its_declared_arguments():
    """The CUDA signatures come from each kernel's declaration: a template whose parameters
    are not the declared ones, in order, is refused when it is registered."""
    from devnet.kernels.cuda import registry
    from devnet.kernels.cuda.device import FLOAT_TYPES
    from devnet.kernels.table import decl

    def template(A, b, alpha):
        pass

    with pytest.raises(TypeError, match=r"template arguments \('A', 'b', 'alpha'\) are not "
                                        r"the declared \('A', 'alpha', 'b'\)"):
        registry.register("misdeclared", template, decl("A[n,m] rw", "alpha", "b[m]"))
    assert "misdeclared" not in registry.SPECS
    sig = registry.signature("bias_act_fwd_relu", FLOAT_TYPES[np.dtype(np.float32)])
    assert [str(t) for t in sig.args] == ["array(float32, 2d, C)", "array(float32, 1d, C)",
                                          "array(float32, 2d, C)", "bool", "float32"]
