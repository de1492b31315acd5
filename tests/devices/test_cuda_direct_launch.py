"""devnet's direct kernel launch, through the real cuda.core ``launch``, without a GPU.

The launch must reach the driver call itself with nothing on the way (no warning, no
conversion of a foreign stream object): with no driver here, that is cuda.core's
"driver library not found" error, raised from ``cuLaunchKernelEx``. The direct launch runs
only on the numba-cuda versions it was checked on, and a kernel whose parameters differ from
numba-cuda's own goes through numba-cuda's launch instead, with a warning.
"""

from __future__ import annotations

import os
import traceback
import warnings

import numpy as np
import pytest

from devnet.backend import cuda as cuda_backend

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or cuda_backend.SIMULATOR:
    pytest.skip("checks the real (non-simulated) path", allow_module_level=True)
pytest.importorskip("numba_cuda")
pytest.importorskip("cuda.core")
pytest.importorskip("cupy")

from devnet.kernels.cuda import launch as kcuda  # noqa: E402
from helpers.launch_fakes import STREAM_PTR, install  # noqa: E402

DriverNotFound = pytest.importorskip("cuda.pathfinder").DynamicLibNotFoundError


@pytest.fixture
def fake_launch(monkeypatch, rng):
    """No GPU: the stand-ins of ``helpers.launch_fakes``; (arrays, recorded numba-cuda
    launches)."""
    return install(monkeypatch, rng)


pytestmark = pytest.mark.skipif(
    kcuda.DIRECT_LAUNCH_REASON is not None,
    reason=f"no direct launch here: {kcuda.DIRECT_LAUNCH_REASON}")


def _launch(name, args, dtype=np.float32):
    k = kcuda.Kernel(name, dtype)
    c = kcuda.Call(args[0])
    k(c, (1, 1, 1), (32, 1, 1), *args)
    return k, c


def _fwd_args(arrays, rng):
    A = arrays((4, 6), np.float32)
    return [A, arrays((6,), np.float32), A, False, np.float32(0.01)]


def test_a_direct_launch_reaches_the_driver_call_and_nothing_else(fake_launch, rng):
    arrays, numba_launches = fake_launch
    args = _fwd_args(arrays, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DeprecationWarning on the way would raise here
        with pytest.raises(DriverNotFound) as info:
            _launch("bias_act_fwd_relu", args)
    assert "cuLaunchKernelEx" in "".join(traceback.format_tb(info.tb))
    assert numba_launches == []


def test_one_cuda_core_stream_per_cupy_stream(fake_launch, rng, monkeypatch):
    from cuda.core import Stream

    arrays, _ = fake_launch
    seen = []
    monkeypatch.setattr(kcuda.Driver, "launch", staticmethod(
        lambda stream, config, kernel, *params: seen.append(stream)))
    args = _fwd_args(arrays, rng)
    for _ in range(3):
        _launch("bias_act_fwd_relu", args)
    assert len(seen) == 3 and all(s is seen[0] for s in seen)
    assert isinstance(seen[0], Stream) and int(seen[0].handle) == STREAM_PTR


def test_direct_launch_only_on_the_numba_cuda_versions_it_was_checked_on():
    import numba_cuda

    assert kcuda.direct_launch_refusal(numba_cuda.__version__) is None
    lo, hi = kcuda.DIRECT_LAUNCH_VERSIONS
    assert kcuda.direct_launch_refusal(".".join(map(str, lo))) is None
    assert kcuda.direct_launch_refusal(".".join(map(str, hi))) is None
    for version in ("0.30.1", "0.30.5", "0.31.0", "1.0.0", "0.20.0", "dev"):
        assert "outside the versions" in kcuda.direct_launch_refusal(version), version


def test_without_the_direct_launch_numbas_own_launch_runs(fake_launch, rng, monkeypatch):
    arrays, numba_launches = fake_launch
    monkeypatch.setattr(kcuda.Driver, "launch", None)
    monkeypatch.setattr(kcuda.Driver, "Stream", None)
    args = _fwd_args(arrays, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        k, c = _launch("bias_act_fwd_relu", args)
    assert k.direct is False and len(numba_launches) == 1
    (grid, block, stream), _ = numba_launches[0]
    assert int(stream.handle) == STREAM_PTR  # numba-cuda's own stream object


def _drop_meminfo(original):
    def prepare(self, ty, val, stream, retr, kernelargs):
        n = len(kernelargs)
        original(self, ty, val, stream, retr, kernelargs)
        if isinstance(ty, kcuda.types.Array):
            del kernelargs[n]  # an array passed without its meminfo word
    return prepare


def _refuse(original):
    def prepare(self, ty, val, stream, retr, kernelargs):
        raise NotImplementedError(ty, val)
    return prepare


@pytest.mark.parametrize("change", [_drop_meminfo, _refuse], ids=["layout", "raises"])
def test_a_kernel_that_numba_cuda_marshals_otherwise_uses_numbas_launch(
        fake_launch, rng, monkeypatch, change):
    from numba.cuda.dispatcher import _Kernel as NumbaKernel

    arrays, numba_launches = fake_launch
    direct = []
    monkeypatch.setattr(kcuda.Driver, "launch", staticmethod(
        lambda *a: direct.append(a)))
    monkeypatch.setattr(NumbaKernel, "_prepare_args", change(NumbaKernel._prepare_args))
    args = _fwd_args(arrays, rng)
    k = kcuda.Kernel("bias_act_fwd_relu", np.float32)
    with pytest.warns(RuntimeWarning, match="bias_act_fwd_relu: devnet's direct launch does "
                                            "not match this numba-cuda"):
        k(kcuda.Call(args[0]), (1, 1, 1), (32, 1, 1), *args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per kernel
        k(kcuda.Call(args[0]), (1, 1, 1), (32, 1, 1), *args)
    assert direct == [] and len(numba_launches) == 2 and k.direct is False


def test_numbas_parameters_are_compared_on_the_first_launch_only(fake_launch, rng,
                                                                  monkeypatch):
    from numba.cuda.dispatcher import _Kernel as NumbaKernel

    arrays, _ = fake_launch
    direct, prepared = [], []
    original = NumbaKernel._prepare_args

    def counted(self, *a):
        prepared.append(a[0])
        return original(self, *a)

    monkeypatch.setattr(kcuda.Driver, "launch", staticmethod(lambda *a: direct.append(a)))
    monkeypatch.setattr(NumbaKernel, "_prepare_args", counted)
    args = _fwd_args(arrays, rng)
    k = kcuda.Kernel("bias_act_fwd_relu", np.float32)
    for _ in range(3):
        k(kcuda.Call(args[0]), (1, 1, 1), (32, 1, 1), *args)
    assert len(prepared) == 5 and len(direct) == 3 and k.direct is True
