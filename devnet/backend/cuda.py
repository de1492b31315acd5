"""The CUDA backend: CuPy arrays, cuBLAS matmuls and Numba-CUDA kernels.

Importing this module never fails: without CuPy, numba-cuda or a usable GPU it records why, and
``CUDABackend(...)`` raises DeviceUnavailableError with that reason.

Device state is per backend, never global: every operation of a ``CUDABackend`` (allocations,
transfers, matmuls, each kernel of its table) runs under its own device and stream
(``scope()``), whatever device is current around it, in any thread.

``DEVNET_CUDA_SIMULATOR=1`` (tests and CI only) builds this backend over Numba's CUDA simulator
and ``devnet.testing.cupy_sim`` (slowly: keep data tiny).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

import numpy as np

from devnet.backend.base import KERNEL_SETS, Backend, Clock
from devnet.errors import DeviceUnavailableError, lookup
from devnet.kernels import table as kernel_names

SIMULATOR = os.environ.get("DEVNET_CUDA_SIMULATOR") == "1"

if SIMULATOR:
    from devnet.testing import cupy_sim as cupy
    from devnet.testing.cupy_graph import cublas

    cupyx = cupy.cupyx
    # every ``import cupy`` in devnet (get_xp, the kernel launcher) then finds the stand-in
    sys.modules.update({"cupy": cupy, "cupy.cuda": cupy.cuda, "cupy.random": cupy.random,
                        "cupy.linalg": cupy.linalg, "cupyx": cupyx})
    IMPORT_ERROR: str | None = None
else:
    try:
        import cupy
        import cupyx

        IMPORT_ERROR = None
    except Exception as exc:  # ModuleNotFoundError, or a broken CUDA install raising on import
        cupy = cupyx = None
        IMPORT_ERROR = ("CuPy is not installed (pip install 'devnet-mlp[cuda12]' or "
                        "'devnet-mlp[cuda13]')" if isinstance(exc, ModuleNotFoundError) else
                        f"CuPy failed to import ({type(exc).__name__}: {exc})")


def device_count() -> int:
    """Number of CUDA devices CuPy sees (0 without CuPy or a driver)."""
    if cupy is None:
        return 0
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no driver
        return 0


def _trivial_kernel(a):  # compiled once per device to prove the kernel toolchain works
    a[0] = 1.0


_NUMBA_REASON: list = []  # [the cached numba_cuda_reason()]
_COMPILE_REASON: dict[int, str | None] = {}


def numba_cuda_reason() -> str | None:
    """Why Numba cannot build devnet's kernels here (cached), or None when it can.

    devnet's kernels need the ``numba-cuda`` package: without it ``from numba import cuda``
    falls back to Numba's deprecated built-in target, which fails only at the first launch.
    """
    if not _NUMBA_REASON:
        _NUMBA_REASON.append(_numba_cuda_reason())
    return _NUMBA_REASON[0]


def _numba_cuda_reason() -> str | None:
    hint = "pip install 'numba-cuda[cu12]' or 'numba-cuda[cu13]' (the cuda12 / cuda13 extras)"
    try:
        import numba_cuda
        from numba import cuda
    except ImportError:
        return f"numba-cuda is not installed ({hint})"
    except Exception as exc:
        return f"numba.cuda failed to import ({type(exc).__name__}: {exc})"
    package = os.path.dirname(os.path.abspath(numba_cuda.__file__))
    if not os.path.abspath(getattr(cuda, "__file__", "")).startswith(package + os.sep):
        return (f"numba.cuda is Numba's deprecated built-in CUDA target ({cuda.__file__}), "
                f"not numba-cuda's ({package}); {hint}")
    from numba.cuda.core import config

    simulated = bool(config.ENABLE_CUDASIM)  # read once, when numba.cuda was imported
    if simulated != SIMULATOR:
        return ("DEVNET_CUDA_SIMULATOR and NUMBA_ENABLE_CUDASIM disagree: set "
                "DEVNET_CUDA_SIMULATOR=1 before numba is imported, and NUMBA_ENABLE_CUDASIM "
                "only with it")
    return None


def kernel_compile_reason(index: int) -> str | None:
    """Why a trivial kernel does not compile and load on ``cuda:index`` (cached per device)."""
    if index not in _COMPILE_REASON:
        try:
            from numba import cuda

            with cupy.cuda.Device(index):
                kernel = cuda.jit("void(float32[::1])")(_trivial_kernel)
                if not SIMULATOR:  # link and load the cubin on this device too
                    next(iter(kernel.overloads.values()))._codelibrary.get_cufunc()
            _COMPILE_REASON[index] = None
        except Exception as exc:  # NVVM missing, unsupported compute capability, ...
            _COMPILE_REASON[index] = (f"numba-cuda cannot compile a kernel for cuda:{index} "
                                      f"({type(exc).__name__}: {str(exc).strip()[:300]})")
    return _COMPILE_REASON[index]


def unavailable_reason(index: int = 0) -> str | None:
    """Why ``cuda:index`` cannot be used, or None when it can.

    Checks, in order: CuPy imports; it sees a driver and the device; numba-cuda (not Numba's
    built-in target) is the CUDA target in use; a trivial kernel compiles there (cached).
    """
    if cupy is None:
        return IMPORT_ERROR
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cudaErrorNoDevice, cudaErrorInsufficientDriver, ...
        return f"CuPy found no usable CUDA driver or device ({type(exc).__name__}: {exc})"
    if count == 0:
        return "CuPy sees no CUDA device"
    if not 0 <= index < count:
        return f"no CUDA device {index}: this machine has {count} (cuda:0 .. cuda:{count - 1})"
    return numba_cuda_reason() or kernel_compile_reason(index)


class _Scope:
    """``with scope:`` makes a device and a stream current, restoring the previous ones.

    Re-entrant and per thread (a ``fit`` in another thread keeps its own stack); the device
    is switched only when another one is current (one cheap runtime query otherwise). The
    stream is the backend's own unless ``CUDABackend.on_stream`` named another for this thread.
    """

    __slots__ = ("index", "stream", "_tls")

    def __init__(self, index, stream):
        self.index = index
        self.stream = stream
        self._tls = threading.local()

    def __enter__(self):
        runtime = cupy.cuda.runtime
        previous = runtime.getDevice()
        tls = self._tls.__dict__
        stream = tls.get("stream") or self.stream
        tls.setdefault("stack", []).append((previous, stream))
        if previous != self.index:
            runtime.setDevice(self.index)
        stream.__enter__()  # CuPy's current stream is per thread and per device
        return self

    def __exit__(self, *exc):
        previous, stream = self._tls.stack.pop()
        stream.__exit__(*exc)
        if previous != self.index:
            cupy.cuda.runtime.setDevice(previous)


def _cublas():
    """The low-level cuBLAS bindings (None and the reason when they do not load)."""
    if SIMULATOR:
        return cublas, None
    try:
        from cupy_backends.cuda.libs import cublas as lib
    except Exception as exc:  # libcublas missing: cupy.matmul would fail the same way
        return None, f"CuPy's cuBLAS bindings did not load ({type(exc).__name__}: {exc})"
    return lib, None


class _Gemm:
    """``out <- a @ b`` with cuBLAS sgemm / dgemm on a handle of this backend's own: safe to
    capture in a CUDA graph, which CuPy's matmul is not (it rebinds its handle to the current
    stream on every call, and refuses cuBLAS calls during a capture).

    One handle per thread (a cuBLAS handle serves one stream at a time), made on first use and
    bound to a stream only when the stream changes (``bind`` before a capture: nothing
    allocates or rebinds inside it). alpha = 1 and beta = 0 are read from device memory
    (pointer mode device), allocated once. Row-major through the usual transpose: C = A B is
    C^T = B^T A^T in cuBLAS's column-major view.
    """

    def __init__(self, lib, device):
        self.lib, self.device = lib, device
        self._tls = threading.local()
        self._ones = {np.dtype(t): cupy.asarray(np.array([1, 0], t))
                      for t in (np.float32, np.float64)}
        # written on the current stream; the GEMM reads them on any stream of the device
        cupy.cuda.Device(device).synchronize()

    def _handle(self, stream_ptr: int):
        tls = self._tls.__dict__
        handle = tls.get("handle")
        if handle is None:
            handle = tls["handle"] = self.lib.create()
            self.lib.setPointerMode(handle, self.lib.CUBLAS_POINTER_MODE_DEVICE)
            tls["bound"] = None
        if tls["bound"] != stream_ptr:
            self.lib.setStream(handle, stream_ptr)
            tls["bound"] = stream_ptr
        return handle

    def bind(self, stream) -> None:
        """Bind this thread's handle to ``stream`` (under the device; before a capture)."""
        self._handle(stream.ptr)

    @staticmethod
    def _operand(x):
        """(op, leading dimension) of a row-major operand in column-major terms, or None."""
        if x.flags.c_contiguous:
            return 0, max(1, x.shape[1])  # its transpose, untransposed
        if x.flags.f_contiguous:
            return 1, max(1, x.shape[0])
        return None

    def covers(self, a, b, out) -> bool:
        """True when the GEMM takes these arrays: 2-D, one float dtype, on this device, out
        C-contiguous and apart from a and b, every size positive."""
        dt = out.dtype
        if not (a.ndim == b.ndim == out.ndim == 2 and a.dtype == b.dtype == dt and
                dt in self._ones and out.flags.c_contiguous and
                out.shape == (a.shape[0], b.shape[1]) and a.shape[1] == b.shape[0] and
                min(*a.shape, b.shape[1]) > 0 and self._operand(a) and self._operand(b)):
            return False
        lo, hi = out.data.ptr, out.data.ptr + out.nbytes
        for x in (a, b):
            if x.data.device_id != self.device or \
                    (x.data.ptr < hi and lo < x.data.ptr + x.nbytes):
                return False
        return True

    def __call__(self, a, b, out):
        """``out <- a @ b`` on the current stream (arrays ``covers`` takes)."""
        (op_a, lda), (op_b, ldb) = self._operand(a), self._operand(b)
        (m, k), n = a.shape, b.shape[1]
        ones = self._ones[out.dtype]
        alpha = ones.data.ptr  # beta: the next element
        gemm = self.lib.sgemm if out.dtype == np.float32 else self.lib.dgemm
        gemm(self._handle(cupy.cuda.get_current_stream().ptr), op_b, op_a, n, m, k, alpha,
             b.data.ptr, ldb, a.data.ptr, lda, alpha + ones.itemsize, out.data.ptr, n)
        return out


class _OnDevice:
    """A kernel-table entry that runs under its backend's device and stream."""

    __slots__ = ("fn", "scope", "__name__", "__wrapped__")

    def __init__(self, fn, scope):
        self.fn = self.__wrapped__ = fn
        self.scope = scope
        self.__name__ = getattr(fn, "__name__", "kernel")

    def __call__(self, *args, **kwargs):
        with self.scope:
            return self.fn(*args, **kwargs)


class CUDABackend(Backend):
    """CuPy + Numba-CUDA on one GPU. ``kernels="reference"`` runs the xp-generic oracle.

    The backend owns a stream on its device (blocking with respect to the legacy default
    stream, so CuPy work queued outside ``scope()`` stays ordered with it).
    """

    name = "cuda"

    def __init__(self, index: int = 0, kernels: str = "fused"):
        lookup(KERNEL_SETS, kernels, "kernel set")
        reason = unavailable_reason(index)
        if reason:
            raise DeviceUnavailableError(f"cuda:{index} is unavailable: {reason}")
        self.index = index
        self.device = f"cuda:{index}"
        self.simulated = SIMULATOR
        self.xp = cupy
        self._device = cupy.cuda.Device(index)
        lib, self.gemm_reason = _cublas()
        with self._device:
            self.stream = cupy.cuda.Stream(non_blocking=False)
            self._gemm = None if lib is None else _Gemm(lib, index)
        self._scope = _Scope(index, self.stream)
        self._stagers: dict[tuple, _Stager] = {}
        self._load_kernels(kernels, "devnet.kernels.cuda")
        for table in (self.kernels, self.raw_kernels):
            for name in kernel_names.KERNEL_NAMES:
                setattr(table, name, _OnDevice(getattr(table, name), self._scope))

    def scope(self):
        """A context manager running what it encloses on this backend's device and stream."""
        return self._scope

    def thread_limits(self):
        """The training loop's context: this backend's device and stream."""
        return self._scope

    def is_array(self, a) -> bool:
        """True when ``a`` is a CuPy array on this backend's GPU (one on another GPU is not:
        ``asarray`` copies it here)."""
        return isinstance(a, cupy.ndarray) and a.data.device_id == self.index

    def asarray(self, a, dtype=None):
        with self._scope:
            if isinstance(a, cupy.ndarray) and a.data.device_id != self.index:
                # cupy.asarray hands an array of another GPU back as it is, for kernels here
                # to read across devices; ndarray.copy() copies it onto the current device,
                # on this device's stream, which nothing orders after the other GPU's work:
                # wait for that work (whichever stream wrote the array) first
                cupy.cuda.Device(a.data.device_id).synchronize()
                a = a.copy()
            return cupy.ascontiguousarray(cupy.asarray(a, dtype=dtype))

    def to_numpy(self, a) -> np.ndarray:
        if not isinstance(a, cupy.ndarray):
            return np.asarray(a)
        with self._scope:
            return cupy.asnumpy(a)

    def rng(self, seed=None):
        with self._scope:
            return cupy.random.default_rng(seed)

    def take_rows(self, a, idx, out):
        """``out <- a[idx]`` (rows) on this backend's device: host arrays (a staged feed)
        as NumPy does, device arrays with CuPy's take (it has no bounds mode)."""
        if isinstance(a, np.ndarray):
            return super().take_rows(a, idx, out)
        with self._scope:
            return a.take(idx, axis=0, out=out)

    def empty(self, shape, dtype):
        with self._scope:
            return cupy.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        with self._scope:
            return cupy.zeros(shape, dtype=dtype)

    def matmul(self, a, b, out):
        """``out <- a @ b`` with cuBLAS on this backend's device and current stream: the
        capture-safe GEMM (``_Gemm``) for 2-D float operands, CuPy's matmul otherwise."""
        with self._scope:
            if self._gemm is not None and self._gemm.covers(a, b, out):
                return self._gemm(a, b, out)
            return cupy.matmul(a, b, out=out)

    # --- CUDA graphs (devnet.train.graph) ---------------------------------------------------

    def graph_reason(self) -> str | None:
        """Why a training step cannot be captured as a CUDA graph here, or None."""
        if self.kernel_set == "reference":
            return "the reference kernels allocate their temporaries on every call"
        return self.gemm_reason

    def capture_stream(self):
        """A new non-blocking stream on this device (capture needs one)."""
        with self._device:
            return cupy.cuda.Stream(non_blocking=True)

    def event(self):
        """A new event on this device (no timing), to order one stream after another."""
        with self._device:
            return cupy.cuda.Event(disable_timing=True)

    @contextlib.contextmanager
    def on_stream(self, stream):
        """A context in which this thread's ``scope()`` runs on ``stream`` instead of the
        backend's own stream (a stream of this device), and is entered."""
        tls = self._scope._tls.__dict__
        saved, tls["stream"] = tls.get("stream"), stream
        try:
            with self._scope as scope:
                yield scope
        finally:
            tls["stream"] = saved

    def bind_gemm(self, stream) -> None:
        """Bind this thread's cuBLAS handle to ``stream`` before a capture on it."""
        if self._gemm is not None:
            with self._scope:
                self._gemm.bind(stream)

    def upload(self, host: np.ndarray, slot: str):
        """Copy a host batch to the device asynchronously, through pinned memory.

        Each slot keeps two pinned host buffers and two device buffers used in turn, with an
        event per pair: the host waits only until the copy made two uploads ago has finished,
        so gathering batch k+1 on the host overlaps the GPU's work on batch k.
        """
        key = (slot, host.dtype.str, host.shape[1:])
        with self._scope:
            stager = self._stagers.get(key)
            if stager is None or stager.capacity < host.shape[0]:
                stager = self._stagers[key] = _Stager(host.shape, host.dtype)
            return stager.put(host, self.stream)

    def clock(self, sync: bool = True) -> _EventClock:
        """Start timing a region with CUDA events on this backend's stream (see Backend.clock)."""
        return _EventClock(self, sync)

    def synchronize(self) -> None:
        """Wait for all work queued on this backend's device (every stream)."""
        with self._device:
            self._device.synchronize()

    @property
    def device_name(self) -> str:
        props = cupy.cuda.runtime.getDeviceProperties(self.index)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)


class _EventClock(Clock):
    """``Backend.clock()`` on a GPU: device time between two events on the backend's stream.

    The stream blocks with the legacy default stream, so CuPy work queued outside
    ``scope()`` before ``stop()`` is inside the region too. ``host_s`` is the host's time.
    """

    __slots__ = ("_start", "_end")

    def __init__(self, backend: CUDABackend, sync: bool = True):
        super().__init__(backend, sync)
        with backend._device:
            self._start = cupy.cuda.Event()
            self._start.record(backend.stream)
        self._end = None

    def stop(self) -> _EventClock:
        """Record the end event (idempotent, does not wait); returns self."""
        if self._end is None:
            self._t1 = time.perf_counter()
            with self.backend._device:
                self._end = cupy.cuda.Event()
                self._end.record(self.backend.stream)
        return self

    def elapsed(self) -> float:
        """Seconds of device time from start to ``stop()``, waiting for the end event."""
        self.stop()
        self._end.synchronize()
        return cupy.cuda.get_elapsed_time(self._start, self._end) / 1e3


class _Stager:
    """Double-buffered pinned-host -> device copies for one batch slot (see ``upload``).

    Made and used under its backend's scope: buffers on that device.
    """

    def __init__(self, shape, dtype):
        self.capacity = shape[0]
        self.pinned = [cupyx.empty_pinned(shape, dtype) for _ in range(2)]
        self.dev = [cupy.empty(shape, dtype) for _ in range(2)]
        self.done = [None, None]
        self.turn = 0

    def put(self, host: np.ndarray, stream):
        i = self.turn = 1 - self.turn
        if self.done[i] is not None:
            self.done[i].synchronize()  # the copy out of pinned[i] two uploads ago is over
        n = host.shape[0]
        np.copyto(self.pinned[i][:n], host)
        self.dev[i][:n].set(self.pinned[i][:n], stream=stream)
        self.done[i] = stream.record()
        return self.dev[i][:n]
