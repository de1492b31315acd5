"""Every CUDA kernel, every dtype: devnet's launch parameters are numba-cuda's, byte for byte.

devnet marshals kernel parameters itself (``kernels/cuda/launch.py``'s ``marshal``) instead of
going through numba-cuda's launch. Here each kernel of ``kernels/cuda/`` is launched
through devnet's real ``launch.Kernel`` on real CuPy arrays over made-up device memory (slices of
larger arrays among them), as on a GPU up to the driver call; the parameters it hands to
cuda.core are compared with numba-cuda's own ``_prepare_args`` for the same arguments, as the
bytes cuda.core's ``ParamHolder`` stores for the driver. Runs without a GPU; the stand-ins
are in ``helpers/launch_fakes.py``.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from devnet.backend import cuda as cuda_backend

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or cuda_backend.SIMULATOR:
    pytest.skip("checks the real (non-simulated) path", allow_module_level=True)
pytest.importorskip("numba_cuda")
pytest.importorskip("cuda.core")
pytest.importorskip("cupy")

from devnet.kernels import cuda as kcuda  # noqa: E402
from devnet.kernels.cuda import launch, registry  # noqa: E402
from helpers import ptx_targets as ptx  # noqa: E402
from helpers.launch_fakes import STREAM_PTR, args_for, install  # noqa: E402
from numba import types  # noqa: E402


@pytest.fixture
def fake_launch(monkeypatch, rng):
    """No GPU: the stand-ins of ``helpers.launch_fakes``; (arrays, recorded numba-cuda
    launches)."""
    return install(monkeypatch, rng)


pytestmark = pytest.mark.skipif(
    kcuda.DIRECT_LAUNCH_REASON is not None,
    reason=f"no direct launch here: {kcuda.DIRECT_LAUNCH_REASON}")

# (Kernel class, kernel name, dtype) of every kernel the package launches
_TARGETS = [(launch.Kernel, label) for label, _, _ in
            ptx.PTX_TARGETS + ptx.PTX_HYPER_TARGETS] + \
    [(launch.Kernel, label) for label, _, _ in ptx.DEEP_PTX_TARGETS]


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
    monkeypatch.setattr(launch.Driver, "launch", staticmethod(
        lambda stream, config, kernel, *params: sent.append((stream, params))))
    k = kernel_class(name, dtype)
    args = args_for(k.compiled.signature, arrays, rng)
    c = launch.Call(args[0])
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
