"""devnet's direct kernel launch, through the real cuda.core ``launch``, without a GPU.

devnet marshals kernel parameters itself (``kernels/cuda/launch.py``'s ``marshal``) instead of
going through numba-cuda's launch. Each kernel of ``kernels/cuda/`` is launched through the
real ``launch.Kernel`` on real CuPy arrays over made-up device memory (slices of larger arrays
among them), as on a GPU up to the driver call: the parameters it hands to cuda.core must be
numba-cuda's own ``_prepare_args`` for the same arguments, as the bytes cuda.core's
``ParamHolder`` stores for the driver. The launch must reach the driver call itself with
nothing on the way (no warning, no conversion of a foreign stream object): with no driver
here, that is cuda.core's "driver library not found" error, raised from ``cuLaunchKernelEx``.
The direct launch runs only on the numba-cuda versions it was checked on, and a kernel whose
parameters differ from numba-cuda's own goes through numba-cuda's launch instead, with a
warning. The stand-ins are in ``helpers/launch_fakes.py``.
"""

from __future__ import annotations

import ctypes
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
from devnet.kernels.cuda import registry  # noqa: E402
from helpers import ptx_targets as ptx  # noqa: E402
from helpers.launch_fakes import STREAM_PTR, args_for, install  # noqa: E402
from numba import types  # noqa: E402

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


# (Kernel class, kernel name, dtype) of every kernel the package launches
_TARGETS = [(kcuda.Kernel, label) for label, _, _ in
            ptx.PTX_TARGETS + ptx.PTX_HYPER_TARGETS] + \
    [(kcuda.Kernel, label) for label, _, _ in ptx.DEEP_PTX_TARGETS]


def _param_bytes(holder, params):
    """What cuda.core's ``ParamHolder`` stores for each parameter, read back."""
    pointers = (ctypes.c_void_p * len(params)).from_address(holder.ptr)
    out = []
    for p, ptr in zip(params, pointers):
        if isinstance(p, (bool, np.bool_)):
            size = 1
        elif isinstance(p, (int, float)):
            size = 8  # intptr_t, double
        elif isinstance(p, np.generic):
            size = p.itemsize
        else:
            size = ctypes.sizeof(p)
        out.append(ctypes.string_at(ptr, size))
    return out


def test_every_kernel_is_covered():
    names = {label.split("[")[0] for _, label in _TARGETS}
    assert set(registry.SPECS) == names
    assert len(_TARGETS) == 2 * len(names) - 1  # opt_advance: float64 only


@pytest.mark.parametrize("kernel_class, label", _TARGETS, ids=[t[1] for t in _TARGETS])
def test_launch_parameters_are_numba_cudas_byte_for_byte(fake_launch, rng, monkeypatch,
                                                         kernel_class, label):
    from cuda.core import Stream
    from cuda.core._kernel_arg_handler import ParamHolder

    arrays, numba_launches = fake_launch
    name, dtype = label[:-1].split("[")
    sent = []
    monkeypatch.setattr(kcuda.Driver, "launch", staticmethod(
        lambda stream, config, kernel, *params: sent.append((stream, params))))
    k = kernel_class(name, dtype)
    args = args_for(k.compiled.signature, arrays, rng)
    c = kcuda.Call(args[0])
    k(c, (1, 1, 1), (32, 1, 1), *args)  # the first launch also checks against numba-cuda
    assert k.direct is True and numba_launches == []
    (stream, ours), = sent
    assert isinstance(stream, Stream) and int(stream.handle) == STREAM_PTR
    theirs = kcuda.numba_params(k.compiled, args, stream)
    assert [type(p) for p in ours] == [type(p) for p in theirs]
    assert _param_bytes(ParamHolder(list(ours)), ours) == \
        _param_bytes(ParamHolder(theirs), theirs)
    # each array's data pointer is where it starts (a view: past its base's first rows)
    starts = [arrays.starts[id(a)] for a in args if id(a) in arrays.starts]
    ptrs = []
    i = 0
    for t in k.compiled.signature.args:
        if isinstance(t, types.Array):
            ptrs.append(ours[i + 4])
            i += 5 + 2 * t.ndim
        else:
            i += 1
    assert ptrs == starts and i == len(ours)
