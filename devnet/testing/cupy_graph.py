"""Stream capture, CUDA graphs and the low-level cuBLAS GEMMs for the CuPy stand-in.

Between ``Stream.begin_capture()`` and ``end_capture()`` the capturing stream runs nothing:
each kernel launch (``launch_kernel``), CuPy operation into an existing array and cuBLAS GEMM is
recorded with its arguments (``Op``), and ``Graph.launch`` replays them in order. As on a GPU,
a capture refuses (``CaptureError``) an allocation, a host synchronisation or copy, an operation
without ``out=``, and ``cublas.setStream`` (the handle must be bound before the capture).
``trace(stream)`` records the same ``Op`` list for eager work, for tests to compare.

``cublas`` mirrors ``cupy_backends.cuda.libs.cublas``'s names, signatures and constants. Its
GEMMs take raw device pointers: each operand must lie in a live allocation (``register``), so
one out of bounds is an error, not a read of stray memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import types
from typing import NamedTuple

import numpy as np

from devnet.testing import cupy_sim_cuda as _cuda

CaptureError = _cuda.CaptureError


class Op(NamedTuple):
    """One recorded operation: ``kind`` ("kernel", "cupy", "cublas"), its name, and its
    arguments as values (an array: ``("array", pointer, shape, strides, dtype)``)."""

    kind: str
    name: str
    args: tuple


def describe(value):
    """``value`` as comparable data: arrays as in ``Op``, scalars by value, containers element
    by element."""
    buf = getattr(value, "_buf", value)  # a stand-in array: its host buffer
    if isinstance(buf, np.ndarray):
        return ("array", buf.__array_interface__["data"][0], buf.shape, buf.strides,
                buf.dtype.str)
    if isinstance(value, (list, tuple)):
        return tuple(describe(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, describe(v)) for k, v in sorted(value.items()))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, ctypes._SimpleCData):
        return value.value
    if isinstance(value, np.dtype):
        return value.str
    return value


# CuPy functions that call cuBLAS through CuPy's handle, which CuPy refuses during a capture
# (it rebinds the handle to the current stream on every call)
CUPY_CUBLAS = frozenset({"matmul", "dot", "vdot", "inner", "tensordot", "ndarray.dot",
                         "norm"})


@contextlib.contextmanager
def trace(stream):
    """``with trace(stream) as ops:`` appends an ``Op`` for each operation run on ``stream``,
    eagerly or by a graph launch."""
    q = stream._here()
    ops: list[Op] = []
    _cuda.TRACES.setdefault(q, []).append(ops)
    try:
        yield ops
    finally:
        _cuda.TRACES[q].remove(ops)


def run(kind, name, args, thunk, reads=(), writes=(), queue=None, what="used"):
    """Run ``thunk`` (an operation reading ``reads`` and writing ``writes``, host buffers of
    device arrays) on ``queue`` (default: the current stream); recorded instead while that
    stream captures. Returns the thunk's result, or in a capture the written buffer(s)."""
    q = _cuda.current_queue() if queue is None else queue
    op = Op(kind, name, describe(args))
    cap = _cuda.CAPTURES.get(q)
    if cap is None:
        _cuda.enqueue(reads, writes, q, what)
        for ops in _cuda.TRACES.get(q, ()):
            ops.append(op)
        return thunk()
    if name in CUPY_CUBLAS:
        raise CaptureError(f"cupy.{name} calls cuBLAS through CuPy's handle, which CuPy "
                           "refuses during stream capture: call the low-level GEMM on a "
                           "handle bound to the stream before the capture")
    if not writes:
        raise CaptureError(f"{kind} {name} during stream capture on the {q!r} writes no "
                           "existing array: its result would be allocated (CUDA refuses "
                           "allocations in a capture); pass out=")
    with _cuda.lock:
        _cuda.check_use(reads, q, what)
        _cuda.check_use(writes, q, "overwritten")
    cap.ops.append(op)
    cap.thunks.append(thunk)
    cap.reads.extend(reads)
    cap.writes.extend(writes)
    return writes[0] if len(writes) == 1 else tuple(writes)


def launch_kernel(name, grid, block, args, kernel):
    """A simulated kernel launch on the current stream: ``kernel(host_args)`` runs it on the
    arrays' host buffers (every array argument is read and may be written)."""
    host = [getattr(a, "_buf", a) for a in args]
    arrays = [a for a in host if isinstance(a, np.ndarray)]
    run("kernel", name, (grid, block, *args), lambda: kernel(host), arrays, arrays,
        what="passed to a kernel")


def check_alloc() -> None:
    """CaptureError when the current stream is capturing (an allocation would be made)."""
    q = _cuda.current_queue()
    if q in _cuda.CAPTURES:
        raise CaptureError(f"a device allocation on the {q!r} during stream capture: "
                           "allocate every buffer before the capture begins")


# --- device memory by address (for the pointer-taking cuBLAS calls) ---------------------------

_MEMORY = _cuda.BufferTable()  # address -> (weakref to the root buffer, nbytes, device)


def register(buf: np.ndarray, device: int) -> None:
    """Record a new device allocation (a root NumPy buffer) and its device."""
    _MEMORY.put(buf.__array_interface__["data"][0], buf, buf.nbytes, device)


def _memory(ptr: int, nbytes: int, device: int, what: str) -> np.ndarray:
    """The bytes [ptr, ptr + nbytes) of a live allocation on ``device`` (a uint8 view)."""
    for addr, (ref, size, dev) in _MEMORY.items():
        buf = ref()
        if buf is not None and addr <= ptr and ptr + nbytes <= addr + size:
            if dev != device:
                raise ValueError(f"cuBLAS: {what} is on device {dev}, the handle's is {device}")
            flat = buf.reshape(-1).view(np.uint8)
            return flat[ptr - addr:ptr - addr + nbytes]
    raise ValueError(f"cuBLAS: {what} ({nbytes} bytes at {ptr:#x}) lies in no live device "
                     "allocation (CUBLAS_STATUS_INVALID_VALUE or an illegal address on a GPU)")


def _matrix(ptr, dtype, rows, cols, ld, device, what):
    """The column-major rows x cols matrix at ``ptr`` with leading dimension ``ld``."""
    if ld < max(1, rows):
        raise ValueError(f"cuBLAS: {what}'s leading dimension {ld} < max(1, {rows}) "
                         "(CUBLAS_STATUS_INVALID_VALUE)")
    size = dtype.itemsize
    flat = _memory(ptr, (ld * (cols - 1) + rows) * size, device, what).view(dtype)
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (size, ld * size))


class _Handle:
    __slots__ = ("device", "queue", "pointer_mode")

    def __init__(self, device):
        self.device, self.queue, self.pointer_mode = device, _cuda._legacy_queue(device), 0


_HANDLES: dict[int, _Handle] = {}
_handle_ids = itertools.count(0x7000, 0x10)


def _handle(handle) -> _Handle:
    h = _HANDLES.get(handle)
    if h is None:
        raise ValueError(f"cuBLAS: {handle!r} is not a live handle (CUBLAS_STATUS_NOT_"
                         "INITIALIZED)")
    return h


def _create():
    """cublasCreate on the current device (allocates: refused during a capture)."""
    check_alloc()
    handle = next(_handle_ids)
    _HANDLES[handle] = _Handle(_cuda.runtime.getDevice())
    return handle


def _set_stream(handle, stream):
    h = _handle(handle)
    if _cuda.current_queue() in _cuda.CAPTURES or \
            any(q.device == h.device for q in _cuda.CAPTURES):
        raise CaptureError("cublas.setStream while a stream of its device is capturing (CuPy "
                           "refuses cuBLAS calls in a capture): bind the handle before "
                           "begin_capture()")
    if stream == 0:
        h.queue = _cuda._legacy_queue(h.device)
        return
    for q in list(_cuda._ALL_QUEUES):
        if q.ptr == stream and q.device == h.device:
            h.queue = q
            return
    raise ValueError(f"cuBLAS: no stream {stream:#x} on device {h.device}")


def _scalar(h, ptr, dtype, what):
    """alpha / beta: read from device memory (pointer mode device) or the host."""
    if h.pointer_mode == 1:
        return _memory(ptr, dtype.itemsize, h.device, what).view(dtype)[0]
    return dtype.type(ctypes.c_double.from_address(ptr).value if dtype == np.float64
                      else ctypes.c_float.from_address(ptr).value)


def _gemm(dtype, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    """C <- alpha op(A) op(B) + beta C, column-major (op: 0 = N, 1 = T), on the handle's
    stream."""
    h = _handle(handle)
    if _cuda.runtime.getDevice() != h.device:
        raise ValueError(f"cuBLAS: a handle of device {h.device} used on device "
                         f"{_cuda.runtime.getDevice()}")
    if transa not in (0, 1) or transb not in (0, 1) or min(m, n, k) < 0:
        raise ValueError("cuBLAS: invalid op or size (CUBLAS_STATUS_INVALID_VALUE)")
    dt = np.dtype(dtype)
    a = _matrix(A, dt, *((m, k) if transa == 0 else (k, m)), lda, h.device, "A")
    b = _matrix(B, dt, *((k, n) if transb == 0 else (n, k)), ldb, h.device, "B")
    c = _matrix(C, dt, m, n, ldc, h.device, "C")
    scalars = [_memory(p, dt.itemsize, h.device, w) for p, w in ((alpha, "alpha"),
                                                                 (beta, "beta"))
               if h.pointer_mode == 1]
    roots = [_cuda.root(x) for x in (a, b, *scalars)]

    def gemm():  # alpha and beta are read when the GEMM runs, as on the device
        al, be = _scalar(h, alpha, dt, "alpha"), _scalar(h, beta, dt, "beta")
        prod = (a if transa == 0 else a.T) @ (b if transb == 0 else b.T)
        c[...] = al * prod if be == 0 else al * prod + be * c

    run("cublas", f"{'s' if dt == np.float32 else 'd'}gemm",
        (handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc), gemm,
        roots, [_cuda.root(c)], h.queue)


def _sgemm(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    _gemm(np.float32, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)


def _dgemm(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    _gemm(np.float64, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)


def _set_pointer_mode(handle, mode):
    if mode not in (0, 1):
        raise ValueError(f"cuBLAS: pointer mode {mode!r} (CUBLAS_STATUS_INVALID_VALUE)")
    _handle(handle).pointer_mode = mode


def _destroy(handle):
    _handle(handle)
    del _HANDLES[handle]


def _get_stream(handle):
    return _handle(handle).queue.ptr


def _get_pointer_mode(handle):
    return _handle(handle).pointer_mode


cublas = types.ModuleType("cupy_backends.cuda.libs.cublas")
cublas.__doc__ = "The stand-in's cupy_backends.cuda.libs.cublas: the calls devnet makes."
cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_T = 0, 1
cublas.CUBLAS_POINTER_MODE_HOST, cublas.CUBLAS_POINTER_MODE_DEVICE = 0, 1
for _name, _fn in (("create", _create), ("destroy", _destroy), ("setStream", _set_stream),
                   ("getStream", _get_stream), ("setPointerMode", _set_pointer_mode),
                   ("getPointerMode", _get_pointer_mode), ("sgemm", _sgemm), ("dgemm", _dgemm)):
    _fn.__name__ = _fn.__qualname__ = _name
    setattr(cublas, _name, _fn)
