"""Batches for the Step: one interface, two ways to get the data onto the device.

``HostFeed`` gathers each batch on the host and uploads it (``backend.upload``: pinned,
double-buffered on a GPU, so gathering batch k+1 overlaps the GPU's work on batch k).
``DeviceFeed`` uploads the data once and gathers each batch on the device (one index upload per
epoch). ``make_feed`` picks: on the CPU the device memory is the host's, so the data is used in
place (DeviceFeed, no copy); on a GPU the data goes up once when it fits comfortably in free
device memory, else it is staged batch by batch.
"""

from __future__ import annotations

import numpy as np

from devnet.errors import ConfigError, lookup
from devnet.train.step import Batch

# a resident data set may take this fraction of the free device memory: the rest is for the
# model, its work buffers, the optimizer state and the caller's other arrays
RESIDENT_FRACTION = 0.25

FEEDS = ("auto", "host", "device")


class Feed:
    """Batches ``(x, y, w, rows)`` of (X, y, w) on the device by position in an epoch's order.

    ``start_epoch(order)``: the epoch's sample order (host int array, or None: 0..n-1);
    ``batch(lo, hi)``: positions lo..hi-1 of it. A batch stays valid until the next-but-one
    ``batch`` call (the step consumes it first).
    """

    def __init__(self, backend, X, y, w, capacity: int):
        self.backend, self.n = backend, len(X)
        self.capacity = max(1, min(int(capacity), self.n))
        self.order: np.ndarray | None = None

    def start_epoch(self, order: np.ndarray | None) -> None:
        if order is not None:
            order = np.asarray(order)
            # one pass per epoch, so that the gathers can skip their per-batch bounds checks
            if order.ndim != 1 or order.dtype.kind not in "iu":
                raise ConfigError(f"an epoch order must be a 1-D integer array, got "
                                  f"{order.dtype} of shape {order.shape}")
            if order.size and (order.min() < 0 or order.max() >= self.n):
                raise ConfigError(f"an epoch order holds indices outside [0, {self.n}): "
                                  f"{order.min()}..{order.max()}")
        self.order = order

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """The sample indices of positions lo..hi-1 (host)."""
        return np.arange(lo, hi) if self.order is None else self.order[lo:hi]

    def batch(self, lo: int, hi: int) -> Batch:
        raise NotImplementedError


class HostFeed(Feed):
    """Gathers on the host into staging buffers, then ``backend.upload`` per array."""

    def __init__(self, backend, X, y, w, capacity: int):
        super().__init__(backend, X, y, w, capacity)
        self.X, self.y, self.w = X, y, w
        m = self.capacity
        self._x = np.empty((m, *X.shape[1:]), X.dtype)
        self._y = np.empty((m, *y.shape[1:]), y.dtype)
        self._w = None if w is None else np.empty(m, w.dtype)

    def batch(self, lo: int, hi: int) -> Batch:
        be, nb = self.backend, hi - lo
        if self.order is None:  # contiguous rows: upload the slices themselves
            xb, yb = self.X[lo:hi], self.y[lo:hi]
            wb = None if self.w is None else self.w[lo:hi]
        else:
            idx = self.order[lo:hi]
            xb = be.take_rows(self.X, idx, self._x[:nb])
            yb = be.take_rows(self.y, idx, self._y[:nb])
            wb = None if self.w is None else be.take_rows(self.w, idx, self._w[:nb])
        return Batch(be.upload(xb, "x"), be.upload(yb, "y"),
                     None if wb is None else be.upload(wb, "w"), self.rows(lo, hi))


class DeviceFeed(Feed):
    """The whole data set on the device (uploaded once); batches gathered there."""

    def __init__(self, backend, X, y, w, capacity: int):
        super().__init__(backend, X, y, w, capacity)
        m = self.capacity
        with backend.scope():
            self.X, self.y = backend.asarray(X), backend.asarray(y)
            self.w = None if w is None else backend.asarray(w)
            self._x = backend.empty((m, *X.shape[1:]), X.dtype)
            self._y = backend.empty((m, *y.shape[1:]), y.dtype)
            self._w = None if w is None else backend.empty(m, w.dtype)
        self._order_d = None

    def start_epoch(self, order: np.ndarray | None) -> None:
        super().start_epoch(order)
        # one index upload per epoch (on the CPU: the array itself)
        self._order_d = None if order is None else self.backend.asarray(order)

    def batch(self, lo: int, hi: int) -> Batch:
        nb = hi - lo
        if self._order_d is None:  # contiguous rows: views, no gather
            return Batch(self.X[lo:hi], self.y[lo:hi],
                         None if self.w is None else self.w[lo:hi], self.rows(lo, hi))
        with self.backend.scope():
            idx = self._order_d[lo:hi]
            be = self.backend
            xb = be.take_rows(self.X, idx, self._x[:nb])
            yb = be.take_rows(self.y, idx, self._y[:nb])
            wb = None if self.w is None else be.take_rows(self.w, idx, self._w[:nb])
        return Batch(xb, yb, wb, self.rows(lo, hi))


def free_device_memory(backend) -> int | None:
    """Free bytes on the backend's device; None when the device is the host (no copy needed).

    Uses ``backend.free_memory()`` when the backend has it; else CuPy's ``memGetInfo`` under
    the backend's scope; 0 (stage from the host: always safe) when neither answers.
    """
    query = getattr(backend, "free_memory", None)
    if callable(query):
        return query()
    if backend.xp is np:  # NumPy arrays: the "device" memory is the host's
        return None
    try:
        with backend.scope():
            free, _total = backend.xp.cuda.runtime.memGetInfo()
        return int(free)
    except Exception:  # a stand-in or driver without the query: assume nothing is free
        return 0


def make_feed(backend, X, y, w=None, capacity: int | None = None, kind: str = "auto") -> Feed:
    """The feed for host arrays (X, y, w) on ``backend``; ``capacity``: the largest batch.

    kind: "auto" (device-resident when the data takes at most ``RESIDENT_FRACTION`` of the
    free device memory, or the device is the host), "host" or "device".
    """
    kind = lookup({k: k for k in FEEDS}, kind, "feed")
    if not isinstance(X, np.ndarray) or not isinstance(y, np.ndarray):
        raise ConfigError("make_feed takes host (NumPy) arrays X and y")
    capacity = len(X) if capacity is None else capacity
    if kind == "auto":
        free = free_device_memory(backend)
        need = X.nbytes + y.nbytes + (0 if w is None else w.nbytes)
        kind = "device" if free is None or need <= RESIDENT_FRACTION * free else "host"
    cls = DeviceFeed if kind == "device" else HostFeed
    return cls(backend, X, y, w, capacity)
