"""A NumPy-backed stand-in for the part of CuPy devnet uses (``DEVNET_CUDA_SIMULATOR=1``).

The CUDA backend imports it as ``cupy`` and Numba simulates the kernels, so the whole CUDA
backend runs without a GPU. It is never looser than CuPy, so code that passes here does not
fail on a GPU for a reason the stand-in hid:

* ``ndarray`` is not a NumPy array: implicit conversion (``np.asarray(a)``) raises, and so does a
  host NumPy array as an operand of device arithmetic (CuPy: ``TypeError: Unsupported type``).
* Each array belongs to the device that was current when it was made (``DEVICE_COUNT``
  simulated devices); operands on another device raise (CuPy may instead go through peer
  access). A stream is entered only on its own device; ``set`` takes only the same dtype.
* Methods, functions, ``Generator`` draws and their keywords are only those of the installed
  CuPy (``cupy_surface``): no ``where=`` in a reduction, no ``Generator.normal``.
* Work is queued on streams (``cupy_sim_cuda``): a use of an array, or a write to a pinned
  buffer, that nothing orders after the work it depends on raises ``StreamOrderError``.
* A stream captures (``begin_capture``; ``cupy_graph``): its work is recorded, not run, and an
  allocation, a host copy or synchronisation, or CuPy's own cuBLAS call there raises.

``__cuda_array_interface__`` / ``.data.ptr`` expose the host buffer. Results are NumPy's, not
CuPy's bit for bit; random streams differ from CuPy's.

``tests/devices/test_cuda_sim_drift.py`` checks every name and signature here against the installed
``cupy`` package; ``tests/devices/test_cupy_standin.py`` checks each rule above.
"""

from __future__ import annotations

import builtins
import sys
import types
import weakref

import numpy as np

from devnet.testing import cupy_graph as _graph
from devnet.testing import cupy_sim_cuda as _cuda
from devnet.testing import cupy_surface as _surface

__version__ = "14.0.0+devnet-sim"
DEVICE_COUNT = _cuda.DEVICE_COUNT
# id(NumPy buffer) -> its stand-in array, while that lives (see _wrap)
_WRAPPERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
ALLOCATIONS = [0]  # device allocations (new buffers, not views), for benchmarks to count
IMPLICIT_CONVERSION = "Implicit conversion to a NumPy array is not allowed."
# ndarray methods that write their array (the others return new arrays or views)
IN_PLACE = frozenset({"fill", "sort", "put", "partition"})
# ndarray methods that copy to the host, synchronously (as ``get()``)
HOST_READS = frozenset({"item", "tolist", "tobytes", "tofile", "dump", "dumps"})
# ndarray methods that may return a view (no device work, on any device)
VIEWS = frozenset({"reshape", "view", "transpose", "swapaxes", "squeeze", "ravel",
                   "diagonal"})
# ndarray methods whose index arguments may be host arrays
HOST_INDICES = frozenset({"take", "put"})

runtime = _cuda.runtime
StreamOrderError = _cuda.StreamOrderError
cuda = types.ModuleType("cupy.cuda")
for _name in ("runtime", "Device", "Stream", "Event", "get_current_stream", "get_elapsed_time",
              "MemoryPointer", "Graph"):
    setattr(cuda, _name, getattr(_cuda, _name))


def _unwrap(x):
    if isinstance(x, ndarray):
        return x._buf
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x, device=None):
    """NumPy results as stand-in arrays on ``device`` (default: the current one); a result
    that is an argument's own buffer (``out=``, in-place methods) comes back as that array.
    A result in memory the stand-in did not track yet is new: written by the current stream."""
    if isinstance(x, np.ndarray) and not isinstance(x, ndarray):
        known = _WRAPPERS.get(id(x))
        if known is not None and known._buf is x:
            return known
        _cuda.mark_new(x)
        return ndarray._from(x, device)
    if isinstance(x, np.generic):
        return ndarray._from(np.asarray(x), device)
    if isinstance(x, tuple):
        return tuple(_wrap(v, device) for v in x)
    if isinstance(x, list):
        return [_wrap(v, device) for v in x]
    return x


def _operands(args, host_ok=False, sequences=True):
    """The buffers of the stand-in arrays among ``args`` (lists and tuples searched when
    ``sequences``), after CuPy's checks: each on the current device, no host NumPy array
    among them (``TypeError: Unsupported type``), no list as an operand."""
    current = runtime.getDevice()
    found = []

    def visit(a, top):
        if isinstance(a, ndarray):
            if a._device != current:
                raise ValueError(f"The device where the array resides ({a._device}) is "
                                 f"different from the current device ({current}).")
            found.append(a._buf)
        elif isinstance(a, np.ndarray):
            if not host_ok:
                raise TypeError(f"Unsupported type {type(a)}: a host NumPy array in device "
                                f"arithmetic (copy it with cupy.asarray first)")
        elif isinstance(a, (list, tuple)):
            if not sequences and top:
                raise TypeError(f"Unsupported type {type(a)}")
            for v in a:
                visit(v, False)

    for a in args:
        visit(a, True)
    return found


def _names(params):
    """The named parameters, and whether there is a variadic one."""
    names = [p for p in params if not p.startswith("*")]
    return names, len(names) < len(params)


def _check_call(owner, name, params, args, kwargs):
    """CuPy's parameters, not NumPy's: unknown keywords and extra positionals raise."""
    names, variadic = _names(params)
    if not variadic and len(args) > len(names):
        raise TypeError(f"{owner}.{name}() takes at most {len(names)} arguments "
                        f"({len(args)} given)")
    for key in kwargs:
        if key not in names:
            raise TypeError(f"{owner}.{name}() got an unexpected keyword argument {key!r} "
                            f"(CuPy's takes {', '.join(params) or 'none'})")


def _outs(params, args, kwargs):
    """The ``out`` argument of a call, given by keyword or by position."""
    if "out" in kwargs:
        return [kwargs["out"]]
    names, variadic = _names(params)
    if "out" in names and not variadic:
        i = names.index("out")
        if i < len(args):
            return [args[i]]
    return []


def _numpy_function(name, namespace=np):
    """``cupy.<name>``: NumPy's function, with CuPy's parameters and operand rules, queued on
    the current stream."""
    fn = getattr(namespace, name)
    params = _surface.FUNCTIONS.get(name) if namespace is np else None
    ufunc = namespace is np and params is None
    if ufunc:
        params = ("*args", *_surface.UFUNC_KEYWORDS)

    def call(*args, **kwargs):
        if params is not None:
            _check_call("cupy", name, params, args, kwargs)
        outs = _operands(_outs(params or (), args, kwargs))
        # a ufunc's operands are arrays or scalars, never lists (CuPy: Unsupported type)
        reads = _operands(args, sequences=not ufunc) + _operands(tuple(kwargs.values()))
        return _wrap(_graph.run("cupy", name, (args, kwargs),
                                lambda: fn(*_unwrap(args), **_unwrap(kwargs)), reads, outs))

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{namespace.__name__}.{name} on the stand-in's arrays."
    return call


def copyto(dst, src, casting="same_kind", where=None):
    """``cupy.copyto``: a host source only as a one-element array (CuPy's rule)."""
    if not isinstance(dst, ndarray):
        raise TypeError(f"copyto's destination must be a cupy.ndarray, not {type(dst)}")
    if isinstance(src, np.ndarray) and not isinstance(src, ndarray):
        if src.size != 1:
            raise ValueError("non-scalar numpy.ndarray cannot be used for copyto")
        src = src.reshape(()).item()
    extra = {} if where is None else {"where": _unwrap(where)}
    _graph.run("cupy", "copyto", (dst, src, casting, where),
               lambda: np.copyto(dst._buf, _unwrap(src), casting=casting, **extra),
               _operands((src, where)), _operands((dst,)))


def _operator(name, inplace=False):
    """``ndarray.<name>``: a new array, or with ``inplace`` this one, written."""
    def op(self, *args):
        reads = _operands((self, *args), sequences=False)
        result = _graph.run("cupy", name, (self, *args),
                            lambda: getattr(self._buf, name)(*_unwrap(args)), reads,
                            (self._buf,) if inplace else ())
        return self if inplace else _wrap(result, self._device)

    op.__name__ = name
    return op


# --- arrays --------------------------------------------------------------------------------------

class ndarray:  # noqa: N801 (CuPy's name)
    """A device array: a NumPy array that lives on one simulated device and stays there."""

    __slots__ = ("_buf", "_device", "__weakref__")
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        self._adopt(np.empty(shape, dtype, order=order), None)

    @classmethod
    def _from(cls, a: np.ndarray, device=None):
        self = object.__new__(cls)
        self._adopt(a, device)
        return self

    def _adopt(self, a: np.ndarray, device):
        self._buf = a
        self._device = runtime.getDevice() if device is None else device
        if a.base is None:  # a new buffer, not a view: what a device allocation would be
            _graph.check_alloc()
            ALLOCATIONS[0] += 1
            _cuda.mark_new(a)
            _graph.register(a, self._device)
        _WRAPPERS[id(a)] = self

    @property
    def _a(self):
        """The host buffer as a simulated kernel's argument: the launch, queued on the current
        stream, reads and writes it, so it must be ordered after the buffer's last write."""
        _cuda.enqueue((self._buf,), (self._buf,), what="passed to a kernel")
        return self._buf

    # what CuPy refuses
    def __array__(self, dtype=None, copy=None):
        raise TypeError(f"{IMPLICIT_CONVERSION} Please use `.get()` to construct a NumPy "
                        "array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """A NumPy ufunc on device arrays runs as CuPy's namesake: only ufuncs CuPy has, with
        its keywords, its operand rules."""
        name = ufunc.__name__
        if name not in _surface.FUNCTIONS or getattr(np, name, None) is not ufunc:
            return NotImplemented
        if method == "__call__":
            params = _surface.FUNCTIONS[name] or ("*args", *_surface.UFUNC_KEYWORDS)
            _check_call("cupy", name, params, inputs, kwargs)
        outs = _operands(kwargs.get("out") or ())
        reads = _operands(inputs, sequences=False)
        return _wrap(_graph.run("cupy", f"{name}.{method}", (inputs, kwargs),
                                lambda: getattr(ufunc, method)(*_unwrap(inputs),
                                                               **_unwrap(kwargs)),
                                reads, outs))

    def __array_function__(self, func, types_, args, kwargs):
        """``np.<f>(device array)`` runs ``cupy.<f>``; NotImplemented (so NumPy raises
        TypeError) for a function CuPy, or the stand-in, lacks."""
        name = getattr(func, "__name__", "")
        if name not in _surface.FUNCTIONS or getattr(np, name, None) is not func:
            return NotImplemented
        return globals()[name](*args, **kwargs)

    # device-side attributes
    @property
    def data(self):
        return _cuda.MemoryPointer(self._buf.__array_interface__["data"][0], self._device)

    @property
    def device(self):
        return _cuda.Device(self._device)

    @property
    def __cuda_array_interface__(self):
        a = self._buf
        return {"shape": a.shape, "typestr": a.dtype.str,
                "data": (a.__array_interface__["data"][0], False),
                "strides": None if a.flags.c_contiguous else a.strides, "version": 3,
                "stream": 1}

    def _host_queue(self, stream):
        # CuPy copies on the given or the current stream, on the array's device (the null
        # stream there is that device's legacy default stream)
        stream = _cuda.get_current_stream() if stream is None else stream
        return stream._queue_on(self._device)

    def _read_to_host(self, stream=None):
        _cuda.host_read((self._buf,), self._host_queue(stream))
        return self._buf

    def get(self, stream=None, order="C", out=None, blocking=True):
        if blocking:
            self._read_to_host(stream)
        else:
            _cuda.enqueue((self._buf,), (), self._host_queue(stream), "read by the host")
        if out is not None:
            np.copyto(out, self._buf)
            return out
        return np.array(self._buf, order=order)

    def copy(self, order="C"):
        """A copy on the current device, as CuPy's: from another device too (a peer copy,
        queued on the current stream: the source's writes must be ordered before it)."""
        _cuda.enqueue((self._buf,), what="copied")
        return ndarray._from(np.array(self._buf, order=order, copy=True))

    def set(self, arr, stream=None):
        """Copy host ``arr`` (same dtype and shape) into this array on ``stream`` (default: the
        current one); from pinned memory the copy is asynchronous: ``arr`` must not be written
        until the stream has been synchronised past it."""
        if not isinstance(arr, np.ndarray) or isinstance(arr, ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self._buf.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self._buf.dtype} array")
        if arr.shape != self._buf.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self._buf.shape}, "
                             f"new shape: {arr.shape}")
        if not (self._buf.flags.c_contiguous or self._buf.flags.f_contiguous):
            raise RuntimeError("Cannot set to non-contiguous array")
        q = _cuda.enqueue((), (self._buf,), self._host_queue(stream))
        _cuda.mark_pinned_read(arr, q)
        np.copyto(self._buf, arr)

    # shape, dtype, flags, methods: NumPy's where CuPy has them (cupy_surface.NDARRAY)
    def __getattr__(self, name):
        if name not in _surface.NDARRAY:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        params = _surface.NDARRAY[name]
        attr = getattr(self._buf, name)
        if params is None:
            return _wrap(attr, self._device) if isinstance(attr, np.ndarray) else attr

        def method(*args, **kwargs):
            _check_call("cupy.ndarray", name, params, args, kwargs)
            if name in VIEWS:  # a view runs nothing on the device (a copy would)
                result = attr(*_unwrap(args), **_unwrap(kwargs))
                if _cuda.root(result) is _cuda.root(self._buf):
                    return ndarray._from(result, self._device)
            if name in HOST_READS:
                self._read_to_host()
            outs = _operands(_outs(params, args, kwargs))
            writes = [self._buf, *outs] if name in IN_PLACE else outs
            reads = _operands((self, args, tuple(kwargs.values())),
                              host_ok=name in HOST_INDICES)
            return _wrap(_graph.run("cupy", f"ndarray.{name}", (self, args, kwargs),
                                    lambda: attr(*_unwrap(args), **_unwrap(kwargs)),
                                    reads, writes), self._device)

        method.__name__ = name
        return method

    @property
    def T(self):  # noqa: N802
        return ndarray._from(self._buf.T, self._device)

    def __getitem__(self, key):
        reads = _operands((key,), host_ok=True)
        result = self._buf[_unwrap(key)]
        if isinstance(result, np.ndarray) and _cuda.root(result) is _cuda.root(self._buf):
            return ndarray._from(result, self._device)  # a view: no device work
        # a gather (CuPy: a kernel on the current stream; an element: a 0-d view, read later)
        _graph.run("cupy", "ndarray.__getitem__", (self, key), lambda: None,
                   [self._buf, *reads])
        return ndarray._from(np.asarray(result), self._device)

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray) and not isinstance(value, ndarray):
            raise TypeError(IMPLICIT_CONVERSION)
        # a fill or copy kernel on the current device: the array must be there too
        _operands((self,))
        reads = _operands((key, value), host_ok=True)
        _graph.run("cupy", "ndarray.__setitem__", (self, key, value),
                   lambda: self._buf.__setitem__(_unwrap(key), _unwrap(value)),
                   reads, (self._buf,))

    def __len__(self):
        return len(self._buf)

    def __iter__(self):
        return (self[i] for i in range(len(self._buf)))

    __hash__ = None


def _host_conversion(convert):
    def method(self):  # a synchronous copy to the host, as CuPy's
        return convert(self._read_to_host())

    method.__name__ = f"__{convert.__name__}__"
    return method


for _convert in (float, int, bool, complex, repr, str):
    setattr(ndarray, f"__{_convert.__name__}__", _host_conversion(_convert))


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "lshift", "rshift"):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _operator(f"__r{_name}__"))
    setattr(ndarray, f"__i{_name}__", _operator(f"__i{_name}__", inplace=True))
for _name in ("neg", "pos", "abs", "invert", "lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))


# --- module functions ----------------------------------------------------------------------------

# NumPy functions with CuPy namesakes that devnet (or its tests) call through ``xp``, with
# CuPy's parameters (cupy_surface.FUNCTIONS)
NUMPY_FUNCTIONS = tuple(_surface.FUNCTIONS)
for _name in NUMPY_FUNCTIONS:
    if _name != "copyto":
        globals()[_name] = _numpy_function(_name)
# dtypes, as CuPy re-exports them
for _name in ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint32", "uint64",
              "float16", "float32", "float64", "dtype", "inf", "nan", "pi", "newaxis"):
    globals()[_name] = getattr(np, _name)


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    """``a`` on the current device (a copy of a host array; no copy of a device one)."""
    if isinstance(a, ndarray):
        _cuda.enqueue(_operands((a,)))
        if not copy and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        return ndarray._from(a._buf.astype(dtype or a.dtype, order=order or "K"))
    if copy is False:
        raise ValueError("a host array cannot be used on the device without a copy")
    return ndarray._from(np.array(a, dtype=dtype, order=order or "K"))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        _cuda.enqueue(_operands((obj,)))
        obj = obj._buf
    return ndarray._from(np.array(obj, dtype=dtype, copy=copy, order=order, ndmin=ndmin))


def ascontiguousarray(a, dtype=None):
    a = asarray(a, dtype)
    if a._buf.flags.c_contiguous:
        return a
    return ndarray._from(np.ascontiguousarray(a._buf))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    """A host copy of ``a`` (a NumPy array is returned as it is)."""
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    if out is not None:
        np.copyto(out, a)
        return out
    return np.asarray(a, order=order)


def get_array_module(*args):
    """This module when any argument is a stand-in array, else NumPy."""
    # builtins.any: this module's own ``any`` is NumPy's
    return sys.modules[__name__] if builtins.any(isinstance(a, ndarray) for a in args) else np


def from_dlpack(array, *, device=None, copy=None):
    raise TypeError("the CUDA simulator's stand-in does not exchange DLPack capsules")


# NumPy's Generator methods that take ``dtype`` / ``out`` as CuPy's do; the others draw
# float64 and the result is cast
_NUMPY_DRAW_DTYPE = frozenset({"random", "standard_normal", "standard_exponential",
                               "standard_gamma", "integers"})
_NUMPY_DRAW_OUT = frozenset({"random", "standard_normal", "standard_exponential",
                             "standard_gamma"})


class _Generator:
    """``cupy.random.Generator`` over NumPy's: only CuPy's methods and parameters
    (cupy_surface.GENERATOR: no ``normal``, ``permutation``, ``shuffle`` or ``choice``), its
    draws on the current device."""

    def __init__(self, bit_generator):
        self._rng = np.random.Generator(bit_generator)

    def __getattr__(self, name):
        if name not in _surface.GENERATOR:
            raise AttributeError(f"'cupy.random.Generator' object has no attribute {name!r} "
                                 f"(CuPy's draws: {', '.join(sorted(_surface.GENERATOR))})")
        params = _surface.GENERATOR[name]
        fn = getattr(self._rng, name)

        def draw(*args, **kwargs):
            _check_call("cupy.random.Generator", name, params, args, kwargs)
            bound = {**dict(zip(params, args)), **kwargs}
            _operands(bound.values())
            out = bound.pop("out", None)
            dtype = None if name in _NUMPY_DRAW_DTYPE else bound.pop("dtype", None)
            if out is not None:
                if not isinstance(out, ndarray) or name not in _NUMPY_DRAW_OUT:
                    raise TypeError(f"out must be a cupy.ndarray, not {type(out)}")
                _cuda.enqueue((), _operands((out,)))
                fn(**_unwrap(bound), out=out._buf)
                return out
            _cuda.enqueue()
            result = fn(**_unwrap(bound))
            return _wrap(np.asarray(result, dtype=dtype) if dtype is not None else result)

        draw.__name__ = name
        return draw


def default_rng(seed=None):
    return _Generator(np.random.PCG64(seed))


linalg = types.ModuleType("cupy.linalg")
linalg.norm = _numpy_function("norm", np.linalg)


random = types.ModuleType("cupy.random")
random.default_rng = default_rng
random.Generator = _Generator


# --- cupyx -------------------------------------------------------------------------------------

cupyx = types.ModuleType("cupyx")
cupyx.empty_pinned, cupyx.zeros_pinned = _cuda.empty_pinned, _cuda.zeros_pinned
