"""The Backend base class: what every device offers the rest of devnet."""

from __future__ import annotations

import importlib
import time
from contextlib import nullcontext
from types import ModuleType, SimpleNamespace

import numpy as np

from devnet.kernels import reference
from devnet.kernels import table as kernel_names

#: the kernel sets: the device's compiled kernels, or the xp-generic oracle
KERNEL_SETS = {"fused": 0, "reference": 0}


def kernel_table(module: ModuleType, unchecked: bool = False) -> SimpleNamespace:
    """Collect ``kernel_names.KERNEL_NAMES`` from ``module`` into a namespace: the public
    entries, or with ``unchecked`` each entry's ``unchecked`` kernel (the same kernel without
    the O(1) argument checks; an entry without one, e.g. the reference oracle's, as it is)."""
    missing = [n for n in kernel_names.KERNEL_NAMES if not hasattr(module, n)]
    if missing:
        raise ImportError(f"{module.__name__} lacks kernels: {', '.join(missing)}")
    entries = {n: getattr(module, n) for n in kernel_names.KERNEL_NAMES}
    if unchecked:
        entries = {n: getattr(f, "unchecked", f) for n, f in entries.items()}
    return SimpleNamespace(**entries, source=module.__name__)


class Clock:
    """Host wall-clock timing of one region (``Backend.clock()``): perf_counter after a sync.

    ``stop()`` ends the region (synchronising the device first); ``elapsed()`` stops it if
    still running and returns seconds. ``host_s`` is the host time from start to stop.
    """

    __slots__ = ("backend", "sync", "_t0", "_t1")

    def __init__(self, backend: Backend, sync: bool = True):
        self.backend, self.sync = backend, sync
        if sync:
            backend.synchronize()
        self._t0 = time.perf_counter()
        self._t1: float | None = None

    def stop(self) -> Clock:
        """End the region now (idempotent); returns self."""
        if self._t1 is None:
            self.backend.synchronize()  # the host clock must see the device's work finish
            self._t1 = time.perf_counter()
        return self

    @property
    def host_s(self) -> float:
        return (self._t1 if self._t1 is not None else time.perf_counter()) - self._t0

    def elapsed(self) -> float:
        """Seconds from start to ``stop()`` (stopping now if not yet stopped)."""
        self.stop()
        return self._t1 - self._t0


class Backend:
    """One device: its array module ``xp``, its kernel table, and transfers at the edges.

    Outside ``devnet.backend`` code never tests ``name``: it uses ``xp`` and ``kernels``
    (or ``raw_kernels``).
    """

    name: str = "base"  #: "cpu" or "cuda"
    device: str = "base"  #: "cpu" or "cuda:N"
    xp: ModuleType = np
    #: the public kernel entries: each checks its arguments' shapes, dtypes and layout in O(1)
    kernels: SimpleNamespace
    #: the same kernels without those checks, for devnet's own calls on buffers it allocated
    #: to agree (on a small model the checks cost more than the kernels)
    raw_kernels: SimpleNamespace
    reason: str = ""  #: why this backend was chosen (set by ``get_backend("auto")``)

    def asarray(self, a, dtype=None):
        """``a`` as a C-contiguous array on this device (no copy when it already is one)."""
        raise NotImplementedError

    def assign(self, dst, src) -> None:
        """``dst[...] = src`` in place, on this backend's device: ``src`` (host or device, any
        device) is converted to ``dst``'s dtype first. Every write of host data into a model's
        or optimizer's buffers goes through here, inside ``scope()`` (a write to cuda:1 while
        cuda:0 is current fails on CuPy, or crosses devices)."""
        with self.scope():
            dst[...] = self.asarray(src, dtype=dst.dtype)

    def to_numpy(self, a) -> np.ndarray:
        """``a`` as a NumPy array on the host."""
        raise NotImplementedError

    def rng(self, seed=None):
        """A random Generator on this device, seeded."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until all work queued on this device is done (call before reading a clock)."""

    def clock(self, sync: bool = True) -> Clock:
        """Start timing a region: ``t = be.clock(); ...; seconds = t.elapsed()``.

        On the CPU this is ``perf_counter`` read after ``synchronize()``; on a GPU, CUDA
        events recorded on the backend's stream (device time of the work queued between).
        ``sync=False`` skips the synchronisation at the start (per-op timing inside a
        region already synchronised); ``t.stop()`` then ends a region without waiting on a
        GPU, and ``t.elapsed()`` waits for it.
        """
        return Clock(self, sync)

    def is_array(self, a) -> bool:
        """True when ``a`` already lives on this device as an ``xp.ndarray``."""
        return isinstance(a, self.xp.ndarray)

    def upload(self, host: np.ndarray, slot: str):
        """``host`` (a C-contiguous NumPy batch) on the device, for the step about to run.

        ``slot`` names a reusable staging buffer ("x", "y", ...): the result stays valid until
        the upload after next to the same slot. On the host this is ``host`` itself.
        """
        return host

    def take_rows(self, a, idx, out):
        """``out <- a[idx]`` (rows), ``idx`` known to be in range (the caller checked it).

        NumPy's ``mode="clip"``: the default "raise" buffers ``out`` and checks each index,
        1.7x slower for 128 rows of 784 float32 (NumPy's ``take`` notes).
        """
        return np.take(a, idx, axis=0, out=out, mode="clip")

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def matmul(self, a, b, out):
        """``out <- a @ b`` with BLAS / cuBLAS, no temporary."""
        return self.xp.matmul(a, b, out=out)

    def scope(self):
        """A context manager running what it encloses on this backend's device (no-op here).

        Code that calls ``xp`` directly (not through the backend) does so inside it.
        """
        return nullcontext()

    def thread_limits(self):
        """A context manager that keeps the device's thread pools from fighting (no-op here)."""
        return nullcontext()

    def _load_kernels(self, kernels: str, fused: str) -> None:
        """Set ``kernels`` and ``raw_kernels`` from the reference oracle or module ``fused``
        (imported only when chosen: it compiles the device's kernels)."""
        self.kernel_set = kernels
        module = reference if kernels == "reference" else importlib.import_module(fused)
        self.kernels = kernel_table(module)
        self.raw_kernels = kernel_table(module, unchecked=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.device} kernels={self.kernels.source}>"
