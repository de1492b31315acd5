"""A NumPy-backed stand-in for the part of CuPy devnet uses: tests and CI only.

Over 400 lines: a stand-in for every CuPy name devnet uses, checked against cupy's own.

With ``DEVNET_CUDA_SIMULATOR=1`` the CUDA backend imports this module as ``cupy`` (and its
``cupyx``) and Numba runs the kernels on its CUDA simulator, so the whole CUDA backend (device
contexts, streams, events, pinned staging, kernels, ``matmul(out=)``) runs without a GPU.

It behaves like CuPy where a bug could hide: ``ndarray`` is not a NumPy array and refuses
implicit conversion (``np.asarray(a)`` raises, as CuPy does: use ``.get()`` / ``asnumpy``); each
array belongs to the device that was current when it was made (``DEVICE_COUNT`` simulated
devices), and ``__cuda_array_interface__`` / ``.data.ptr`` expose its host buffer. Results are
NumPy's, not CuPy's bit for bit; random streams differ from CuPy's.

``tests/test_cuda_sim_drift.py`` checks every name and Python-readable signature here against
the installed ``cupy`` package.
"""

from __future__ import annotations

import builtins
import itertools
import os
import threading
import time
import types
import weakref

import numpy as np

__version__ = "14.0.0+devnet-sim"
DEVICE_COUNT = int(os.environ.get("DEVNET_CUDA_SIMULATOR_DEVICES", "2"))
# id(NumPy buffer) -> its stand-in array, while that lives (see _wrap)
_WRAPPERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
# device allocations made so far (new buffers, not views): the launch benchmark's counter
ALLOCATIONS = [0]
IMPLICIT_CONVERSION = ("Implicit conversion to a NumPy array is not allowed. Please use "
                       "`.get()` to construct a NumPy array explicitly.")


def _unwrap(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x, device=None):
    """NumPy results as stand-in arrays on ``device`` (default: the current one); a result
    that is an argument's own buffer (``out=``, in-place methods) comes back as that array."""
    if isinstance(x, np.ndarray) and not isinstance(x, ndarray):
        known = _WRAPPERS.get(id(x))
        if known is not None and known._a is x:
            return known
        return ndarray._from(x, device)
    if isinstance(x, np.generic):
        return ndarray._from(np.asarray(x), device)
    if isinstance(x, tuple):
        return tuple(_wrap(v, device) for v in x)
    if isinstance(x, list):
        return [_wrap(v, device) for v in x]
    return x


def _check_devices(args):
    """CuPy refuses operands on another device than the current one: so do we."""
    current = runtime.getDevice()
    for a in args:
        if isinstance(a, ndarray) and a._device != current:
            raise ValueError(f"The device where the array resides ({a._device}) is different "
                             f"from the current device ({current}).")
        if isinstance(a, (list, tuple)):
            _check_devices(a)


def _numpy_function(name, namespace=np):
    fn = getattr(namespace, name)

    def call(*args, **kwargs):
        _check_devices(args)
        _check_devices(tuple(kwargs.values()))
        return _wrap(fn(*_unwrap(args), **_unwrap(kwargs)))

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{namespace.__name__}.{name} on the stand-in's arrays."
    return call


# --- devices, streams, events --------------------------------------------------------------------

_tls = threading.local()


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
        # (free, total) bytes: the simulated device's memory, all free (nothing is tracked)
        total = _Runtime.getDeviceProperties(_Runtime.getDevice())["totalGlobalMem"]
        return total, total

    @staticmethod
    def driverGetVersion():  # noqa: N802
        return 12090

    @staticmethod
    def runtimeGetVersion():  # noqa: N802
        return 12090


runtime = _Runtime()


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
        pass

    def __enter__(self):
        self._previous.append(runtime.getDevice())
        runtime.setDevice(self.id)
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


class Stream:
    """``cupy.cuda.Stream``: work runs at once, so a stream only carries its pointer."""

    null: Stream

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = 0 if null else next(_stream_ptrs)
        self.device_id = runtime.getDevice()
        self._previous = []

    def synchronize(self):
        pass

    def record(self, event=None):
        event = Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event):
        pass

    def use(self):
        _current_streams()[runtime.getDevice()] = self
        return self

    def __enter__(self):
        self._previous.append(get_current_stream())
        return self.use()

    def __exit__(self, *exc):
        self._previous.pop().use()

    def __repr__(self):
        return f"<Stream {self.ptr:#x} (device {self.device_id})>"


def _current_streams():
    streams = getattr(_tls, "streams", None)
    if streams is None:
        streams = _tls.streams = {}
    return streams


def get_current_stream(device_id=None):
    """The current stream of the current device (its null stream unless one was made current)."""
    device = runtime.getDevice() if device_id is None else device_id
    stream = _current_streams().get(device)
    if stream is None:
        with Device(device):
            stream = Stream(null=True)
        _current_streams()[device] = stream
    return stream


class Event:
    """``cupy.cuda.Event``: records the host clock (the stand-in's work is synchronous)."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.disable_timing = disable_timing
        self._time = None

    def record(self, stream=None):
        self._time = time.perf_counter()

    def synchronize(self):
        pass

    @property
    def done(self):
        return True


def get_elapsed_time(start_event, end_event):
    """Milliseconds between two recorded events."""
    if start_event._time is None or end_event._time is None:
        raise runtime.CUDARuntimeError("cudaErrorInvalidResourceHandle: event not recorded")
    return (end_event._time - start_event._time) * 1e3


class _MemoryPointer:
    """``ndarray.data``: the device pointer of the first element and its device."""

    __slots__ = ("ptr", "device_id")

    def __init__(self, ptr, device_id):
        self.ptr = ptr
        self.device_id = device_id

    @property
    def device(self):
        return Device(self.device_id)


cuda = types.ModuleType("cupy.cuda")
cuda.runtime = runtime
cuda.Device = Device
cuda.Stream = Stream
cuda.Event = Event
cuda.get_current_stream = get_current_stream
cuda.get_elapsed_time = get_elapsed_time
cuda.MemoryPointer = _MemoryPointer
Stream.null = Stream(null=True)


# --- arrays --------------------------------------------------------------------------------------

def _operator(name):
    def op(self, *args):
        _check_devices((self, *args))
        return _wrap(getattr(self._a, name)(*_unwrap(args)), self._device)

    op.__name__ = name
    return op


def _inplace(name):
    def op(self, other):
        _check_devices((self, other))
        getattr(self._a, name)(_unwrap(other))
        return self

    op.__name__ = name
    return op


class ndarray:  # noqa: N801 (CuPy's name)
    """A device array: a NumPy array that lives on one simulated device and stays there."""

    __slots__ = ("_a", "_device", "__weakref__")
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        ALLOCATIONS[0] += 1
        self._a = np.empty(shape, dtype, order=order)
        self._device = runtime.getDevice()
        _WRAPPERS[id(self._a)] = self

    @classmethod
    def _from(cls, a: np.ndarray, device=None):
        if a.base is None:  # a new buffer, not a view: what a device allocation would be
            ALLOCATIONS[0] += 1
        self = object.__new__(cls)
        self._a = a
        self._device = runtime.getDevice() if device is None else device
        _WRAPPERS[id(a)] = self
        return self

    # what CuPy refuses
    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT_CONVERSION)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _check_devices(inputs)
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs)))

    def __array_function__(self, func, types_, args, kwargs):
        _check_devices(args)
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    # device-side attributes
    @property
    def data(self):
        return _MemoryPointer(self._a.__array_interface__["data"][0], self._device)

    @property
    def device(self):
        return Device(self._device)

    @property
    def __cuda_array_interface__(self):
        a = self._a
        return {"shape": a.shape, "typestr": a.dtype.str,
                "data": (a.__array_interface__["data"][0], False),
                "strides": None if a.flags.c_contiguous else a.strides, "version": 3,
                "stream": 1}

    def get(self, stream=None, order="C", out=None, blocking=True):
        if out is not None:
            np.copyto(out, self._a)
            return out
        return np.array(self._a, order=order)

    def copy(self, order="C"):
        """A copy on the current device, as CuPy's: from another device too (a peer copy)."""
        return ndarray._from(np.array(self._a, order=order, copy=True))

    def set(self, arr, stream=None):
        if isinstance(arr, ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.shape != self._a.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self._a.shape}, "
                             f"new shape: {arr.shape}")
        np.copyto(self._a, arr)

    # shape, dtype, flags, methods: NumPy's, results wrapped
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            def method(*args, **kwargs):
                _check_devices(args)
                return _wrap(attr(*_unwrap(args), **_unwrap(kwargs)), self._device)

            return method
        return _wrap(attr, self._device) if isinstance(attr, np.ndarray) else attr

    @property
    def T(self):  # noqa: N802
        return ndarray._from(self._a.T, self._device)

    def __getitem__(self, key):
        return ndarray._from(np.asarray(self._a[_unwrap(key)]), self._device)

    def __setitem__(self, key, value):
        _check_devices((value,))
        if isinstance(value, np.ndarray) and not isinstance(value, ndarray):
            raise TypeError(IMPLICIT_CONVERSION.replace(" Please use `.get()` to construct "
                                                        "a NumPy array explicitly.", ""))
        self._a[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray._from(np.asarray(v), self._device) for v in self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __complex__(self):
        return complex(self._a)

    def __repr__(self):
        return repr(self._a).replace("array(", "array(", 1)

    def __str__(self):
        return str(self._a)

    __hash__ = None


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "lshift", "rshift"):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _operator(f"__r{_name}__"))
    setattr(ndarray, f"__i{_name}__", _inplace(f"__i{_name}__"))
for _name in ("neg", "pos", "abs", "invert", "lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))


# --- module functions ----------------------------------------------------------------------------

# NumPy functions with CuPy namesakes that devnet (or its tests) call through ``xp``.
NUMPY_FUNCTIONS = (
    "abs", "absolute", "add", "all", "allclose", "any", "arange", "argmax", "argmin",
    "array_equal", "clip", "concatenate", "copyto", "cos", "count_nonzero", "divide", "dot",
    "empty", "empty_like", "exp", "expm1", "full", "full_like", "isfinite", "isinf", "isnan",
    "linspace", "log", "log1p", "logaddexp", "matmul", "max", "maximum", "mean", "min", "minimum",
    "multiply", "ones", "ones_like", "prod", "ravel", "reshape", "sign", "sin", "sqrt", "square",
    "stack", "std", "subtract", "sum", "tanh", "unique", "where", "zeros", "zeros_like",
)
for _name in NUMPY_FUNCTIONS:
    globals()[_name] = _numpy_function(_name)
# dtypes, as CuPy re-exports them
for _name in ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint32", "uint64",
              "float16", "float32", "float64", "dtype", "inf", "nan", "pi", "newaxis"):
    globals()[_name] = getattr(np, _name)


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    """``a`` on the current device (a copy of a host array; no copy of a device one)."""
    if isinstance(a, ndarray):
        _check_devices((a,))
        if not copy and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        return ndarray._from(a._a.astype(dtype or a.dtype, order=order or "K"))
    if copy is False:
        raise ValueError("a host array cannot be used on the device without a copy")
    return ndarray._from(np.array(a, dtype=dtype, order=order or "K"))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        _check_devices((obj,))
        obj = obj._a
    return ndarray._from(np.array(obj, dtype=dtype, copy=copy, order=order, ndmin=ndmin))


def ascontiguousarray(a, dtype=None):
    a = asarray(a, dtype)
    if a._a.flags.c_contiguous:
        return a
    return ndarray._from(np.ascontiguousarray(a._a))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    """A host copy of ``a`` (a NumPy array is returned as it is)."""
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out)
    if out is not None:
        np.copyto(out, a)
        return out
    return np.asarray(a, order=order)


def get_array_module(*args):
    """This module when any argument is a stand-in array, else NumPy."""
    import sys

    # builtins.any: this module's own ``any`` is NumPy's
    return sys.modules[__name__] if builtins.any(isinstance(a, ndarray) for a in args) else np


def from_dlpack(array, *, device=None, copy=None):
    raise TypeError("the CUDA simulator's stand-in does not exchange DLPack capsules")


class _Generator:
    """``cupy.random.Generator`` over NumPy's: its draws, on the current device."""

    def __init__(self, bit_generator):
        self._rng = np.random.Generator(bit_generator)

    def __getattr__(self, name):
        attr = getattr(self._rng, name)
        if not callable(attr):
            return attr

        def draw(*args, **kwargs):
            return _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))

        return draw


def default_rng(seed=None):
    return _Generator(np.random.PCG64(seed))


linalg = types.ModuleType("cupy.linalg")
linalg.norm = _numpy_function("norm", np.linalg)


random = types.ModuleType("cupy.random")
random.default_rng = default_rng
random.Generator = _Generator


# --- cupyx -------------------------------------------------------------------------------------

def empty_pinned(shape, dtype=float, order="C"):
    """A host array standing in for page-locked memory."""
    return np.empty(shape, dtype, order=order)


def zeros_pinned(shape, dtype=float, order="C"):
    return np.zeros(shape, dtype, order=order)


cupyx = types.ModuleType("cupyx")
cupyx.empty_pinned = empty_pinned
cupyx.zeros_pinned = zeros_pinned
