"""What a CUDA launch needs from a GPU, stood in for on a machine without one.

devnet's real launch path (``launch.Kernel``, ``launch.Call``, ``marshal``), numba-cuda's real
``_Kernel._prepare_args`` and cuda.core's real ``launch`` run; only these stand in:

- ``numba.cuda.jit``: a dispatcher whose one overload is a real numba-cuda ``_Kernel`` that was
  not compiled, its kernel handle ``Kernel.from_handle(0x1000)`` (no driver needed to build it);
  launching through the dispatcher (numba-cuda's own launch) is recorded instead;
- CuPy's current device and stream (they ask the runtime): device 0, stream ``STREAM_PTR``;
- numba-cuda's stream objects (they need a context): built straight from the handle;
- numba-cuda's ``_to_strided_memory_view`` (CuPy's DLPack export asks the driver): a view
  with the pointer the test says the array starts at, and no strides (numba-cuda then
  derives C strides itself);
- ``_Call.dev``, the device-array views for numba-cuda's own launch (CuPy's
  ``__cuda_array_interface__`` asks the driver): the arrays themselves.

Arrays are real ``cupy.ndarray``s over ``UnownedMemory`` at made-up device addresses.
"""

from __future__ import annotations

import types

import numpy as np

STREAM_PTR = 0x5000
KERNEL_HANDLE = 0x1000


class FakeDispatcher:
    """What ``cuda.jit(sig, cache=True)(pyfunc)`` returns, with launches recorded."""

    def __init__(self, sig, launches):
        from cuda.core import Kernel
        from numba.cuda.dispatcher import _Kernel as NumbaKernel

        compiled = object.__new__(NumbaKernel)
        compiled.extensions = []
        compiled.signature = sig
        kernel = Kernel.from_handle(KERNEL_HANDLE)
        compiled._codelibrary = types.SimpleNamespace(
            get_cufunc=lambda: types.SimpleNamespace(kernel=kernel))
        self.overloads = {sig.args: compiled}
        self.launches = launches

    def __getitem__(self, config):
        def launch(*args):
            self.launches.append((config, args))
        return launch


class DeviceArrays:
    """Real CuPy arrays over made-up device memory; each one's start address is known."""

    def __init__(self, rng, base=0x7F0000000000):
        self.rng = rng
        self.next = base
        self.starts: dict[int, int] = {}  # id(array) -> its first element's address
        self.keep = []

    def __call__(self, shape, dtype, view=True):
        """An array of ``shape``; with ``view``, a C-contiguous slice of a larger one."""
        import cupy
        from cupy.cuda.memory import MemoryPointer, UnownedMemory

        dtype = np.dtype(dtype)
        skip = int(self.rng.integers(1, 4)) if view else 0
        rows = (shape[0] + skip,) + tuple(shape[1:])
        nbytes = int(np.prod(rows)) * dtype.itemsize
        mem = UnownedMemory(self.next, nbytes, None, device_id=0)
        whole = cupy.ndarray(rows, dtype, MemoryPointer(mem, 0))
        a = whole[skip:] if view else whole
        self.starts[id(a)] = self.next + skip * int(np.prod(rows[1:])) * dtype.itemsize
        self.next += (nbytes + 511) // 256 * 256
        self.keep.append(a)
        return a

    def smv(self, obj, stream=0, copy=True, user_explicit=False):
        """numba-cuda's ``_to_strided_memory_view``, from the recorded start address."""
        from numba.cuda.cudadrv.devicearray import _StridedLayoutShim, _StridedMemoryViewShim

        layout = _StridedLayoutShim(strides_in_bytes=None, is_contiguous_c=True,
                                    is_contiguous_f=obj.ndim <= 1, is_contiguous_any=True)
        return _StridedMemoryViewShim(ptr=self.starts[id(obj)], shape=tuple(obj.shape),
                                      dtype=obj.dtype, size=obj.size, _layout=layout), False


def args_for(sig, arrays, rng, n=None, m=None):
    """Arguments matching ``sig``: every array a device array (views among them), scalars
    of the types devnet passes."""
    from numba import types as nt

    n = int(rng.integers(1, 40)) if n is None else n
    m = int(rng.integers(1, 9)) if m is None else m
    out = []
    for t in sig.args:
        if isinstance(t, nt.Array):
            shape = (n, m) if t.ndim == 2 else (int(rng.integers(1, 50)),)
            out.append(arrays(shape, str(t.dtype), view=bool(rng.integers(0, 2))))
        elif t == nt.boolean:
            out.append(bool(rng.integers(0, 2)))
        elif isinstance(t, nt.Integer):
            out.append(np.dtype(str(t)).type(rng.integers(0, 2**31)))
        else:
            out.append(np.dtype(str(t)).type(rng.standard_normal()))
    return out


def install(monkeypatch, rng):
    """The stand-ins above, set with ``monkeypatch``; returns (arrays, recorded numba-cuda
    launches)."""
    from cuda.bindings import driver as binding
    from devnet.kernels.cuda import launch as kcuda
    from numba import cuda
    from numba.cuda.cudadrv import devicearray
    from numba.cuda.cudadrv import driver as ndriver

    launches = []
    arrays = DeviceArrays(rng)

    real_jit = cuda.jit

    def jit(sig=None, **kwargs):
        if kwargs.get("device"):  # device functions are built without a GPU
            return real_jit(sig, **kwargs) if sig is not None else real_jit(**kwargs)
        return lambda pyfunc: FakeDispatcher(sig, launches)

    runtime = types.SimpleNamespace(getDevice=lambda: 0)
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=runtime, get_current_stream=lambda: types.SimpleNamespace(ptr=STREAM_PTR)))
    monkeypatch.setattr(cuda, "jit", jit)
    monkeypatch.setattr(cuda, "external_stream",
                        lambda ptr: ndriver.Stream(binding.CUstream(ptr), external=True))
    monkeypatch.setattr(kcuda, "_cupy", fake_cupy)
    monkeypatch.setattr(kcuda, "_STREAMS", {})
    monkeypatch.setattr(kcuda, "_NUMBA_STREAMS", {}, raising=False)
    monkeypatch.setattr(devicearray, "_to_strided_memory_view", arrays.smv)
    monkeypatch.setattr(kcuda.Call, "dev", lambda self, a: a)
    return arrays, launches
