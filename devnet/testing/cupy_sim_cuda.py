"""``cupy.cuda`` for the CuPy stand-in: devices, streams, events, and the order work runs in.

The stand-in computes at once, on the host, so nothing here ever waits. It keeps instead the
order a GPU would impose, so that a missing synchronisation fails in CI:

* every stream (per device, the legacy default stream included) is a ``_Queue`` of numbered
  operations; an event records a position in one queue;
* each device buffer remembers the queue and position of its last write (``mark_written``), and
  a use of it (``check_use``) on another queue must be ordered after that write: by the legacy
  default stream's implicit ordering with blocking streams of its device, a ``wait_event`` on an
  event recorded after it, or a host synchronisation (``synchronize``, a blocking ``get``,
  ``done``);
* a pinned host buffer remembers the asynchronous copy that reads it; a host write to it before
  that copy is known to be complete raises.

A use that no rule orders raises ``StreamOrderError``: on a GPU it would be a data race. Not
tracked: a device write on one stream after another stream's read of the buffer.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import weakref

import numpy as np

DEVICE_COUNT = int(os.environ.get("DEVNET_CUDA_SIMULATOR_DEVICES", "2"))
_tls = threading.local()
lock = threading.RLock()
# queue -> its stream capture in progress (devnet.testing.cupy_graph)
CAPTURES: dict = {}


class StreamOrderError(RuntimeError):
    """A device buffer used, or a pinned buffer written, before the work it depends on was
    ordered before the use: a data race on a GPU."""


class CaptureError(RuntimeError):
    """Work that a CUDA stream capture cannot hold (an allocation, a host synchronisation or
    copy), or that the stand-in does not capture, queued while the stream captures."""


def _refuse_in_capture(q, what):
    if q in CAPTURES:
        raise CaptureError(f"work that is {what} on the {q!r} during stream capture: a capture "
                           "holds only kernel launches, GEMMs and operations into existing "
                           "arrays (no allocation, no host copy or synchronisation)")


class _Runtime:
    """``cupy.cuda.runtime``: the calls devnet makes."""

    class CUDARuntimeError(RuntimeError):
        pass

    @staticmethod
    def getDeviceCount():  # noqa: N802 (CuPy's name)
        return DEVICE_COUNT

    @staticmethod
    def getDevice():  # noqa: N802
        return getattr(_tls, "device", 0)

    @staticmethod
    def setDevice(device):  # noqa: N802
        if not 0 <= device < DEVICE_COUNT:
            raise _Runtime.CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        _tls.device = device

    @staticmethod
    def getDeviceProperties(device):  # noqa: N802
        return {"name": b"devnet CUDA simulator", "multiProcessorCount": 2,
                "totalGlobalMem": 1 << 30, "major": 9, "minor": 0}

    @staticmethod
    def memGetInfo():  # noqa: N802
        """(free, total) bytes: all free (the stand-in does not track device memory)."""
        return 1 << 30, 1 << 30

    driverGetVersion = runtimeGetVersion = staticmethod(lambda: 12090)  # noqa: N815


runtime = _Runtime()


# --- queues: the order work would run in ---------------------------------------------------------

class _Queue:
    """One CUDA stream on one device: ``n`` operations queued, the first ``done`` of them known
    complete to the host, and ``waited[q]``: how much of queue ``q`` it waited for."""

    __slots__ = ("device", "ptr", "blocking", "n", "done", "waited", "__weakref__")

    def __init__(self, device, ptr, blocking):
        self.device, self.ptr, self.blocking = device, ptr, blocking
        self.n = self.done = 0
        self.waited: dict[_Queue, int] = {}

    @property
    def legacy(self):
        return self.ptr == 0

    def orders_after(self, q, pos):
        """True when work queued here from now on runs after position ``pos`` of ``q``."""
        if q is self or q.done >= pos or self.waited.get(q, 0) >= pos:
            return True
        # the legacy default stream waits for, and is waited for by, every blocking stream of
        # its device (cudaStreamNonBlocking streams opt out)
        return q.device == self.device and (self.legacy and q.blocking or
                                            q.legacy and self.blocking)

    def __repr__(self):
        kind = "legacy default stream" if self.legacy else f"stream {self.ptr:#x}"
        return f"{kind} of device {self.device}"


_LEGACY: dict[int, _Queue] = {}
_ALL_QUEUES: weakref.WeakSet = weakref.WeakSet()


def _legacy_queue(device):
    if device not in _LEGACY:
        _LEGACY[device] = _Queue(device, 0, blocking=True)
        _ALL_QUEUES.add(_LEGACY[device])
    return _LEGACY[device]


def current_queue():
    """The queue of the current stream of the current device."""
    return get_current_stream()._queue_on(runtime.getDevice())


class BufferTable(dict):
    """key -> (weakref to a buffer, *info); entries of dead buffers are swept as it grows."""

    sweep_at = 4096

    def put(self, key, buf, *info):
        if len(self) > self.sweep_at:
            for k, e in list(self.items()):
                if e[0]() is None:
                    del self[k]
            self.sweep_at = max(4096, 4 * len(self))
        self[key] = (weakref.ref(buf), *info)

    def live(self, buf):
        """The entry of ``buf`` (keyed by its id), or None."""
        e = self.get(id(buf))
        return e if e is not None and e[0]() is buf else None


_WRITES = BufferTable()  # id(root buffer) -> (ref, queue, position) of its last device write
_PINNED_READS = BufferTable()  # id(root pinned buffer) -> (ref, queue, position) of its copy


def root(a: np.ndarray) -> np.ndarray:
    """The buffer that owns ``a``'s memory (views share their base's writes)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _describe(buf):
    return f"a {buf.dtype} buffer of shape {buf.shape}"


def check_use(bufs, queue, what="used"):
    """Raise StreamOrderError unless ``queue`` is ordered after the last write of each buffer
    (NumPy arrays of the stand-in's device arrays)."""
    for b in bufs:
        e = _WRITES.live(root(b))
        if e is not None and not queue.orders_after(e[1], e[2]):
            raise StreamOrderError(
                f"{_describe(b)} written on the {e[1]!r} is {what} on the {queue!r} with "
                f"nothing ordering it after that write: synchronize, or wait_event on an event "
                f"recorded after the write")


def enqueue(reads=(), writes=(), queue=None, what="used"):
    """Queue one operation on ``queue`` (default: the current stream) that reads ``reads`` and
    writes ``writes``; returns the queue."""
    q = current_queue() if queue is None else queue
    _refuse_in_capture(q, what)
    with lock:
        check_use(reads, q, what)
        check_use(writes, q, "overwritten")
        q.n += 1
        for b in writes:
            mark_written(b, q, q.n)
    return q


def mark_written(buf, queue=None, pos=None):
    """Record that ``buf`` was last written by operation ``pos`` of ``queue`` (default: a new
    operation of the current stream, such as the allocation or upload that made ``buf``)."""
    q = current_queue() if queue is None else queue
    r = root(buf)
    with lock:
        if pos is None:
            q.n += 1
            pos = q.n
        _WRITES.put(id(r), r, q, pos)


def mark_new(buf):
    """``mark_written(buf)`` unless its last write is already known."""
    if _WRITES.live(root(buf)) is None:
        mark_written(buf)


def _complete(q, pos=None, waited=None):
    """The host knows ``q``'s work up to ``pos`` (default: all queued) is complete, and with
    it the work of other queues it had waited for by then (``waited``, default: so far)."""
    with lock:
        q.done = max(q.done, q.n if pos is None else pos)
        for other, p in list((q.waited if waited is None else waited).items()):
            other.done = max(other.done, p)


def host_read(bufs, queue):
    """A blocking device-to-host copy of ``bufs`` on ``queue``: ordered after their writes,
    then the host waits for the queue (``stream.synchronize()``)."""
    enqueue(bufs, (), queue, "read by the host")
    _complete(queue)


# --- devices, streams, events --------------------------------------------------------------------

class Device:
    """``cupy.cuda.Device``: ``with Device(i):`` makes ``i`` current and restores the previous."""

    def __init__(self, device=None):
        self.id = runtime.getDevice() if device is None else int(device)
        if not 0 <= self.id < DEVICE_COUNT:
            raise runtime.CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        self._previous = []

    def use(self):
        runtime.setDevice(self.id)

    def synchronize(self):
        """Waits for all work on this device: every queue of it is complete."""
        for q in list(CAPTURES):
            if q.device == self.id:
                _refuse_in_capture(q, "waited for by Device.synchronize")
        with lock:
            for q in list(_ALL_QUEUES):
                if q.device == self.id:
                    q.done = q.n

    def __enter__(self):
        self._previous.append(runtime.getDevice())
        self.use()
        return self

    def __exit__(self, *exc):
        runtime.setDevice(self._previous.pop())

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(("Device", self.id))

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


_stream_ptrs = itertools.count(0x1000, 0x100)


def _check_stream_device(device_id):
    """CuPy's check_stream_device_match: a stream is made current only on its own device."""
    current = runtime.getDevice()
    if device_id not in (-1, current):
        raise RuntimeError(f"The device that the stream is created on ({device_id}) does not "
                           f"match with the current device ({current})")


class Stream:
    """``cupy.cuda.Stream``: a queue of work on one device (the null stream: device -1, the
    legacy default stream of whichever device is current, as CuPy's ``Stream.null``)."""

    null: Stream

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        if null:
            self.ptr, self.device_id, self._queue = 0, -1, None
        else:
            self.ptr = next(_stream_ptrs)
            self.device_id = runtime.getDevice()
            self._queue = _Queue(self.device_id, self.ptr, blocking=not non_blocking)
            _ALL_QUEUES.add(self._queue)
        self._previous = []

    def _queue_on(self, device):
        return _legacy_queue(device) if self._queue is None else self._queue

    def _here(self):
        return self._queue_on(runtime.getDevice())

    def synchronize(self):
        _refuse_in_capture(self._here(), "waited for by Stream.synchronize")
        _complete(self._here())

    def begin_capture(self, mode=None):
        """Record, instead of running, the work queued on this stream (cupy_graph.run)."""
        q = self._here()
        if q.legacy or q.blocking:
            raise runtime.CUDARuntimeError(
                "cudaErrorStreamCaptureUnsupported: capture needs a non-blocking stream "
                "(cupy.cuda.Stream(non_blocking=True)), not the legacy default stream or a "
                "stream that synchronises with it")
        with lock:
            if q in CAPTURES:
                raise runtime.CUDARuntimeError(f"cudaErrorIllegalState: the {q!r} is already "
                                               "capturing")
            CAPTURES[q] = Capture()

    def end_capture(self):
        """Stop capturing; returns the ``Graph`` of the recorded work."""
        q = self._here()
        with lock:
            cap = CAPTURES.pop(q, None)
        if cap is None:
            raise runtime.CUDARuntimeError(f"cudaErrorIllegalState: the {q!r} is not capturing")
        return Graph._made(cap)

    def is_capturing(self):
        return self._here() in CAPTURES

    @property
    def done(self):
        """True: the stand-in's work is finished; the host now knows it."""
        self.synchronize()
        return True

    def record(self, event=None):
        event = Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event):
        """Work queued here from now on runs after the event's position in its queue."""
        if event._at is None:
            return  # an event never recorded: nothing to wait for, as in CUDA
        _refuse_in_capture(self._here(), "an event waited for (not captured by the stand-in)")
        q, (other, pos, waited) = self._here(), event._at
        with lock:
            for o, p in (*waited.items(), (other, pos)):
                if o is not q and q.waited.get(o, 0) < p:
                    q.waited[o] = p

    def use(self):
        _check_stream_device(self.device_id)
        _current_streams()[runtime.getDevice()] = self
        return self

    def __enter__(self):
        _check_stream_device(self.device_id)
        self._previous.append((runtime.getDevice(), get_current_stream()))
        return self.use()

    def __exit__(self, *exc):
        device, previous = self._previous.pop()
        _current_streams()[device] = previous

    def __eq__(self, other):
        return isinstance(other, Stream) and other.ptr == self.ptr

    def __hash__(self):
        return self.ptr

    def __repr__(self):
        return f"<Stream {self.ptr:#x} (device {self.device_id})>"


Stream.null = Stream(null=True)


def _current_streams():
    return _tls.__dict__.setdefault("streams", {})


def get_current_stream(device_id=-1):
    """The current stream of the device (default: the current one); ``Stream.null`` unless
    another one was made current there."""
    device = runtime.getDevice() if device_id == -1 else device_id
    return _current_streams().get(device, Stream.null)


class Event:
    """``cupy.cuda.Event``: a position in one device's stream, and the host clock then.

    Made on the current device; recording it on a stream of another device fails, as in CUDA.
    """

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        if interprocess and not disable_timing:
            raise ValueError("Timing must be disabled for interprocess events")
        self.disable_timing = disable_timing
        self.device_id = runtime.getDevice()
        self._at = None  # (queue, position, what that queue had waited for)
        self._time = None

    def record(self, stream=None):
        stream = get_current_stream() if stream is None else stream
        device = runtime.getDevice() if stream.device_id == -1 else stream.device_id
        if device != self.device_id:
            raise runtime.CUDARuntimeError(
                f"cudaErrorInvalidResourceHandle: an event of device {self.device_id} recorded "
                f"on a stream of device {device}")
        q = stream._queue_on(device)
        _refuse_in_capture(q, "an event recorded (not captured by the stand-in)")
        with lock:
            self._at = (q, q.n, dict(q.waited))
        self._time = time.perf_counter()

    def synchronize(self):
        if self._at is not None:
            _complete(*self._at)

    @property
    def done(self):
        """True: the recorded work is finished (the stand-in ran it); the host now knows it."""
        self.synchronize()
        return True

    def _complete(self):
        return self._at is None or self._at[0].done >= self._at[1]


def get_elapsed_time(start_event, end_event):
    """Milliseconds between two recorded events; both must be complete (cudaErrorNotReady
    otherwise: synchronize the end event first)."""
    if start_event._time is None or end_event._time is None:
        raise runtime.CUDARuntimeError("cudaErrorInvalidResourceHandle: event not recorded")
    if start_event.disable_timing or end_event.disable_timing:
        raise runtime.CUDARuntimeError("cudaErrorInvalidResourceHandle: an event without "
                                       "timing")
    if not (start_event._complete() and end_event._complete()):
        raise runtime.CUDARuntimeError("cudaErrorNotReady: device not ready (an event is not "
                                       "complete: synchronize it first)")
    return (end_event._time - start_event._time) * 1e3


class MemoryPointer:
    """``ndarray.data``: the device pointer of the first element and its device."""

    __slots__ = ("ptr", "device_id")

    def __init__(self, ptr, device_id):
        self.ptr = ptr
        self.device_id = device_id

    @property
    def device(self):
        return Device(self.device_id)


# --- pinned host memory --------------------------------------------------------------------------

class PinnedArray(np.ndarray):
    """A host array standing in for page-locked memory: a host write to it while an
    asynchronous copy out of it may still be running raises StreamOrderError."""

    def __setitem__(self, key, value):
        _check_pinned_write(self)
        super().__setitem__(key, value)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        def plain(a):
            return a.view(np.ndarray) if isinstance(a, PinnedArray) else a

        for o in out or ():
            if isinstance(o, PinnedArray):
                _check_pinned_write(o)
        if out is not None:
            kwargs["out"] = tuple(map(plain, out))
        return getattr(ufunc, method)(*map(plain, inputs), **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        if func is np.copyto:
            dst = args[0] if args else kwargs.get("dst")
            if isinstance(dst, PinnedArray):
                _check_pinned_write(dst)
        return super().__array_function__(func, types, args, kwargs)

    def fill(self, value):
        _check_pinned_write(self)
        super().fill(value)


def _check_pinned_write(a):
    e = _PINNED_READS.live(root(a))
    if e is not None and e[1].done < e[2]:
        raise StreamOrderError(
            f"a host write to pinned {_describe(a)} while the asynchronous copy out of it "
            f"queued on the {e[1]!r} may still be running: synchronize that stream, or an "
            f"event recorded after the copy, first")


def mark_pinned_read(host: np.ndarray, queue):
    """An asynchronous copy out of ``host`` was queued on ``queue`` (a pinned source only:
    CUDA copies pageable memory before the call returns)."""
    if isinstance(host, PinnedArray):
        r = root(host)
        _PINNED_READS.put(id(r), r, queue, queue.n)


def empty_pinned(shape, dtype=float, order="C"):
    """A host array standing in for page-locked memory."""
    return np.empty(shape, dtype, order=order).view(PinnedArray)


def zeros_pinned(shape, dtype=float, order="C"):
    return np.zeros(shape, dtype, order=order).view(PinnedArray)


# --- stream capture and graphs: the state cupy_graph.run records into --------------------------

class Capture:
    """What one stream's capture has recorded (``cupy_graph.run`` appends to it)."""

    __slots__ = ("ops", "thunks", "reads", "writes")

    def __init__(self):
        self.ops, self.thunks, self.reads, self.writes = [], [], [], []


TRACES: dict = {}  # queue -> the lists eager work on it is appended to (cupy_graph.trace)


class Graph:
    """``cupy.cuda.Graph``: what a capture recorded; ``launch`` replays it on a stream.

    ``ops``: the recorded operations with their arguments (the stand-in's, for tests).
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("a Graph is made by stream capture (Stream.end_capture())")

    @classmethod
    def _made(cls, cap: Capture):
        self = object.__new__(cls)
        self.ops = tuple(cap.ops)
        self._thunks = tuple(cap.thunks)
        self._reads, self._writes = tuple(cap.reads), tuple(cap.writes)
        return self

    def launch(self, stream=None):
        """Run the recorded work, in order, on ``stream`` (default: the current one)."""
        stream = get_current_stream() if stream is None else stream
        q = stream._here()
        enqueue(self._reads, self._writes, q, "used by a graph launch")
        for ops in TRACES.get(q, ()):
            ops.extend(self.ops)
        for thunk in self._thunks:
            thunk()

    def upload(self, stream=None):
        """Nothing to upload in the stand-in."""
