"""How the CUDA kernels are launched: compiled once per dtype, checked, marshalled, and put on
the current stream of the current device (the backend's ``scope()``).

- Each kernel is compiled on first use for one signature per dtype (``registry``) and launched
  without the dispatcher's per-call type inference: each launch checks its arrays against the
  signature, marshals the parameters itself (numba-cuda's ``_prepare_args`` layout) and calls
  cuda.core's ``launch``. That direct launch runs only on the numba-cuda versions it was
  checked on (``DIRECT_LAUNCH_VERSIONS``) and while a kernel's first launch finds the same
  parameters as numba-cuda's own; elsewhere numba-cuda's launch runs.
- ``Call`` holds a public call's device, stream and reused scratch: float64 partial sums, int32
  ticket counters, and a ring of loss values per stream (``LOSS_RING``): no allocation per step.
"""

from __future__ import annotations

import functools

import numpy as np
from devnet.kernels.cuda import registry
from devnet.kernels.cuda.device import BLOCKS_PER_SM, FLOAT_TYPES, NT, SIM_MAX_BLOCKS, SIMULATOR
from numba import cuda, types

from devnet.errors import DataError


def array_specs(sig):
    """(position, dtype, ndim) of each array argument of ``sig``."""
    return tuple((i, np.dtype(str(t.dtype)), t.ndim) for i, t in enumerate(sig.args)
                 if isinstance(t, types.Array))


def scalar_packers(sig):
    """Per argument of ``sig``: None for an array, else what numba-cuda wraps the value in."""
    import ctypes

    packers = []
    for t in sig.args:
        if isinstance(t, types.Array):
            packers.append(None)
        elif t == types.boolean:
            packers.append(bool)
        elif isinstance(t, types.Integer):
            packers.append(getattr(ctypes, f"c_{t}"))
        else:
            packers.append({types.float32: ctypes.c_float, types.float64: ctypes.c_double}[t])
    return tuple(packers)


def marshal(packers, args, device=None):
    """The kernel parameters numba-cuda's ``Kernel._prepare_args`` would pass for ``args``, from
    CuPy's attributes: an array gives meminfo, parent, size, itemsize, data pointer, shape,
    strides in bytes; a scalar its ctypes value."""
    out = []
    for pack, a in zip(packers, args):
        if pack is None:
            data = a.data
            if device is not None and data.device_id != device:
                raise _wrong_device(a, device)
            out += (0, 0, a.size, a.itemsize, data.ptr, *a.shape, *a.strides)
        else:
            out.append(pack(a))
    return out


def numba_params(compiled, args, stream):
    """numba-cuda's own kernel parameters for ``args`` (what its ``launch`` hands cuda.core)."""
    retr, params = [], []
    for ty, value in zip(compiled.argument_types, args):
        compiled._prepare_args(ty, value, stream, retr, params)
    return params


def _param_bytes(p):
    """The bytes cuda.core's ``launch`` copies for parameter ``p`` (a Python int: intptr_t)."""
    import ctypes

    if isinstance(p, (bool, np.bool_)):
        return bytes([bool(p)])
    if isinstance(p, int):
        return int(p).to_bytes(8, "little", signed=p < 0)
    if isinstance(p, float):
        return np.float64(p).tobytes()
    if isinstance(p, np.generic):
        return p.tobytes()
    if isinstance(p, ctypes._SimpleCData):
        return bytes(p)
    return repr(p).encode()  # unknown to devnet: equal only to the very same thing


def params_difference(ours, theirs):
    """None when both parameter lists give cuda.core the same bytes, else the first difference."""
    if len(ours) != len(theirs):
        return f"{len(ours)} parameters, numba-cuda's launch passes {len(theirs)}"
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if _param_bytes(a) != _param_bytes(b):
            return f"parameter {i} is {a!r}, numba-cuda's launch passes {b!r}"
    return None


class Driver:
    """cuda.core's ``launch`` and ``Stream``, when devnet's direct launch is used."""

    launch = LaunchConfig = Stream = None


# The direct launch leans on numba-cuda's private launch internals (``Kernel._prepare_args``'s
# layout, ``_codelibrary``, ``numba.cuda._compat``): used only where those were checked.
DIRECT_LAUNCH_VERSIONS = ((0, 30, 2), (0, 30, 4))
DIRECT_LAUNCH_REASON = "the CUDA simulator runs every kernel through the dispatcher"


def direct_launch_refusal(version):
    """Why numba-cuda ``version`` does not get the direct launch, or None."""
    import re

    found = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    lo, hi = DIRECT_LAUNCH_VERSIONS
    if found and lo <= tuple(map(int, found.groups())) <= hi:
        return None
    return (f"numba-cuda {version} is outside the versions devnet's direct launch was checked "
            f"on ({'.'.join(map(str, lo))} to {'.'.join(map(str, hi))})")


if not SIMULATOR:
    try:
        import numba_cuda

        DIRECT_LAUNCH_REASON = direct_launch_refusal(numba_cuda.__version__)
        if DIRECT_LAUNCH_REASON is None:
            from cuda.core import LaunchConfig as _LaunchConfig
            from cuda.core import Stream as _CoreStream
            from cuda.core import launch as _core_launch
            from numba.cuda._compat import CUDA_CORE_GE_1_0 as _GE_1_0

            Driver.launch = staticmethod(_core_launch)
            Driver.LaunchConfig = _LaunchConfig
            Driver.Stream = _CoreStream
            _COOPERATIVE = "is_cooperative" if _GE_1_0 else "cooperative_launch"
    except ImportError as exc:  # numba-cuda's own launch is used instead
        DIRECT_LAUNCH_REASON = str(exc)


@functools.cache
def _launch_config(grid, block):
    return Driver.LaunchConfig(grid=grid, block=block, shmem_size=0, **{_COOPERATIVE: False})


class Kernel:
    """One kernel compiled for one dtype; launched without the dispatcher's type inference.

    Nothing else would then notice a float64 array handed to a float32 kernel or a strided view
    read as contiguous: ``check`` does, before every launch. On any difference between the
    first launch's parameters and numba-cuda's own, numba-cuda's launch runs from then on.
    """

    __slots__ = ("name", "dispatcher", "compiled", "arrays", "argnames", "packers", "cufuncs",
                 "direct")

    def __init__(self, name, dtype):
        sig = registry.signature(name, FLOAT_TYPES[np.dtype(dtype)])
        pyfunc = registry.pyfunc(name, dtype)
        self.name = name
        self.arrays = array_specs(sig)
        self.packers = scalar_packers(sig)
        self.cufuncs: dict[int, object] = {}  # device -> the loaded kernel
        self.argnames = pyfunc.__code__.co_varnames[:pyfunc.__code__.co_argcount]
        if SIMULATOR:
            self.dispatcher = cuda.jit(pyfunc)
            self.compiled = None
        else:
            # eager: compiles now for this one signature; cache=True keeps the cubin on disk
            self.dispatcher = cuda.jit(sig, cache=True)(pyfunc)
            self.compiled = next(iter(self.dispatcher.overloads.values()), None)
        # None: not launched yet (checked against numba-cuda's parameters on the first launch)
        self.direct = None if self.compiled is not None and Driver.launch is not None \
            else False

    def check(self, args, host=None):
        """A DataError naming the argument unless each array matches the signature and, when
        ``host`` is given, is a NumPy array (True) or a device array (False), as the first is."""
        for i, dtype, ndim in self.arrays:
            a = args[i]
            if host is not None and isinstance(a, np.ndarray) != host:
                # a host array among device ones has no device pointer to launch with
                raise DataError(
                    f"CUDA kernel {self.name}: argument {self.argnames[i]!r} is "
                    f"{'a device array' if host else 'a host NumPy array'}, the first array "
                    f"is {'a host NumPy array' if host else 'on the GPU'}; pass every array "
                    "on the kernel's device (backend.asarray(...))")
            if a.dtype != dtype or a.ndim != ndim or not a.flags.c_contiguous:
                layout = "C-contiguous" if a.flags.c_contiguous else \
                    f"not C-contiguous (strides {tuple(a.strides)})"
                raise DataError(
                    f"CUDA kernel {self.name}: argument {self.argnames[i]!r} must be a "
                    f"C-contiguous {ndim}-D {dtype} array, got a {a.ndim}-D {a.dtype} array, "
                    f"{layout}; pass arrays of the model's dtype (a contiguous copy of a view)")

    def _agrees_with_numba(self, c, args, params):
        """True when numba-cuda would pass the same parameters; else warns and says False."""
        try:
            why = params_difference(params, numba_params(self.compiled, args, c.stream))
        except Exception as exc:  # noqa: BLE001 - an unexpected numba-cuda is a difference
            # the type only: the message may hold an array's repr (a device-to-host copy)
            why = f"its _prepare_args raised {type(exc).__name__}"
        if why is None:
            return True
        import warnings

        warnings.warn(f"CUDA kernel {self.name}: devnet's direct launch does not match this "
                      f"numba-cuda ({why}); using numba-cuda's own launch for it",
                      RuntimeWarning, stacklevel=3)
        return False

    def __call__(self, c, grid, block, *args):
        """Launch on ``c``'s device and stream; ``args`` are arrays (CuPy) and scalars."""
        self.check(args, c.numpy)
        if self.direct is not False:
            params = marshal(self.packers, args, c.device)
            if self.direct is None:
                self.direct = self._agrees_with_numba(c, args, params)
            if self.direct:
                kernel = self.cufuncs.get(c.device)
                if kernel is None:  # loaded into the current (this device's) context
                    kernel = self.cufuncs[c.device] = \
                        self.compiled._codelibrary.get_cufunc().kernel
                Driver.launch(c.stream, _launch_config(grid, block), kernel, *params)
                return
        if SIMULATOR and not c.numpy:
            self._simulated(c, grid, block, args)
            return
        dev = c.dev
        kargs = list(args)
        for i, _, _ in self.arrays:
            kargs[i] = dev(args[i])
        # numba-cuda's public launch: it converts its own stream object for cuda.core
        self.dispatcher[grid, block, c.numba_stream()](*kargs)

    def _simulated(self, c, grid, block, args):
        """Under the simulator, on the CuPy stand-in's arrays: the launch queued through the
        stand-in, which records it while its stream captures a graph and runs it otherwise."""
        from devnet.testing import cupy_graph

        for i, _, _ in self.arrays:
            if args[i].data.device_id != c.device:
                raise _wrong_device(args[i], c.device)
        arrays = {i for i, _, _ in self.arrays}

        def run(host):
            self.dispatcher[grid, block, 0](*(FakeCUDAArray(a) if i in arrays else a
                                              for i, a in enumerate(host)))

        cupy_graph.launch_kernel(self.name, grid, block, args, run)


@functools.cache
def kernel(name, dtype):
    """Kernel ``name`` for ``dtype``, compiled on first use."""
    if np.dtype(dtype) not in FLOAT_TYPES:
        raise DataError(f"CUDA kernels take float32 or float64 arrays, not {dtype}")
    return Kernel(name, dtype)


# --- launch configurations -----------------------------------------------------------------------

@functools.cache
def _max_blocks(device):
    """Most blocks a grid-stride kernel is given on ``device`` (SMs x BLOCKS_PER_SM)."""
    if SIMULATOR:
        return SIM_MAX_BLOCKS
    return _cp().cuda.runtime.getDeviceProperties(device)["multiProcessorCount"] * BLOCKS_PER_SM


def _pow2_at_least(n, cap):
    p = 1
    while p < n and p < cap:
        p *= 2
    return p


_CONFIGS: dict[tuple, tuple] = {}


def start(a, kind):
    """``(Call(a), grid, block)`` for a ``kind`` launch (``config``) over ``a``'s shape."""
    c = Call(a)
    return (c, *config(c, kind, *a.shape))


def config(c, kind, n, m=1):
    """(grid, block) 3-tuples for ``kind`` ("flat", "cols", "rows"), ``n`` x ``m``, on ``c``'s
    device."""
    key = (c.device, kind, n, m)
    cfg = _CONFIGS.get(key)
    if cfg is not None:
        return cfg
    top = _max_blocks(c.device)
    if kind == "flat":  # grid-stride over n * m elements
        cfg = ((max(1, min(-(-(n * m) // NT), top)), 1, 1), (NT, 1, 1))
    elif kind == "cols":  # column tiles x row blocks, for column partial sums
        tx = _pow2_at_least(m, 32)  # a warp's worth of columns: coalesced row segments
        ty = NT // tx
        gx = -(-m // tx)
        gy = max(1, min(-(-n // ty), max(1, top // gx)))
        cfg = ((gx, gy, 1), (tx, ty, 1))
    else:  # "rows": one row of threads per matrix row
        tx = _pow2_at_least(m, NT)
        ty = NT // tx
        cfg = ((max(1, min(-(-n // ty), top)), 1, 1), (tx, ty, 1))
    if len(_CONFIGS) > 4096:
        _CONFIGS.clear()
    _CONFIGS[key] = cfg
    return cfg


# --- arrays and streams --------------------------------------------------------------------------

_cupy = None


def _cp():
    global _cupy
    if _cupy is None:
        import cupy  # under DEVNET_CUDA_SIMULATOR=1: devnet.backend.cupy_sim

        _cupy = cupy
    return _cupy


if SIMULATOR:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

# Every cache below is keyed by device first: one GPU's pointer or stream never serves another.
_VIEWS: dict[tuple, object] = {}
_STREAMS: dict[tuple, object] = {}  # cuda.core Streams, for the direct launch
_NUMBA_STREAMS: dict[tuple, object] = {}  # numba-cuda's, for its own launch
_SCRATCH: dict[tuple, object] = {}
_OUTS: dict[tuple, list] = {}
# Loss values are 0-d slots of a ring per (device, stream, dtype), handed out in turn: no
# allocation per step; a value stays valid for LOSS_RING later loss calls on that stream.
LOSS_RING = 64


class Call:
    """Device, stream and scratch for one public call, on CuPy or (simulator) NumPy arrays;
    arrays of another device than the current one are refused."""

    __slots__ = ("numpy", "device", "stream", "key")

    def __init__(self, like):
        self.numpy = isinstance(like, np.ndarray)
        if self.numpy:  # the simulator's kernel tests call with NumPy arrays
            if not SIMULATOR:
                raise DataError("CUDA kernels take CuPy arrays (NumPy arrays only under the "
                                "CUDA simulator)")
            self.device = -1
            self.stream = 0
            self.key = (-1, 0)
            return
        cp = _cp()
        self.device = cp.cuda.runtime.getDevice()
        ptr = cp.cuda.get_current_stream().ptr
        self.key = (self.device, ptr)
        if SIMULATOR or Driver.Stream is None:
            self.stream = 0
            return
        stream = _STREAMS.get(self.key)
        if stream is None:
            # one cuda.core Stream per CuPy stream (else a conversion per launch); ptr 0 is
            # CuPy's null stream, the legacy default stream, as for the driver
            stream = _STREAMS[self.key] = Driver.Stream.from_handle(ptr)
        self.stream = stream

    def numba_stream(self):
        """The current stream as numba-cuda's own stream object, for its launch."""
        if SIMULATOR or self.numpy:
            return 0
        stream = _NUMBA_STREAMS.get(self.key)
        if stream is None:
            ptr = self.key[1]
            stream = cuda.legacy_default_stream() if ptr == 0 else cuda.external_stream(ptr)
            _NUMBA_STREAMS[self.key] = stream
        return stream

    def dev(self, a):
        """``a`` as a kernel argument: a cached no-sync device view, or under the simulator the
        host array wrapped."""
        if SIMULATOR:
            return FakeCUDAArray(a)
        key = (a.data.ptr, a.shape, a.strides, a.dtype.char)
        d = _VIEWS.get(key)
        if d is None:
            if a.data.device_id != self.device:
                raise _wrong_device(a, self.device)
            if len(_VIEWS) > 4096:
                _VIEWS.clear()
            # owner=None: the view holds no reference; the caller's array outlives the launch
            d = _VIEWS[key] = cuda.from_cuda_array_interface(
                a.__cuda_array_interface__, owner=None, sync=False)
        return d

    def scratch(self, size):
        """A float64 array of at least ``size`` elements, reused on this device and stream."""
        size = max(int(size), 1)
        if self.numpy:
            return np.empty(size, np.float64)
        buf = _SCRATCH.get(self.key)
        if buf is None or buf.size < size:
            buf = _SCRATCH[self.key] = _cp().empty(
                max(size, 2 * (0 if buf is None else buf.size), 1024), np.float64)
        return buf

    def counters(self, size):
        """int32 ticket counters (>= ``size``, all 0) for last-block sums on this stream: each
        launch's last block resets those it used, and launches on one stream never overlap."""
        if self.numpy:
            return np.zeros(max(int(size), 1), np.int32)
        key = (*self.key, "count")
        buf = _SCRATCH.get(key)
        if buf is None or buf.size < size:
            buf = _SCRATCH[key] = _cp().zeros(max(int(size), 1024), np.int32)
        return buf

    def scalar_out(self, dtype):
        """A 1-element output array for a loss value: the next slot of this stream's ring."""
        if self.numpy:
            return np.empty(1, dtype)
        key = (*self.key, dtype.char)
        ring = _OUTS.get(key)
        if ring is None:
            buf = _cp().empty(LOSS_RING, dtype)
            ring = _OUTS[key] = [0, [buf[i:i + 1] for i in range(LOSS_RING)]]
        turn = ring[0]
        ring[0] = (turn + 1) % LOSS_RING
        return ring[1][turn]


def _wrong_device(a, device):
    return DataError(f"an array on cuda:{a.data.device_id} was passed to a kernel launching on "
                     f"cuda:{device}; run it under its backend's scope()")


def in_loss_ring(ptr) -> bool:
    """True when device pointer ``ptr`` is a loss value's slot (``Call.scalar_out``)."""
    for ring in _OUTS.values():
        first, last = ring[1][0], ring[1][-1]
        if first.data.ptr <= ptr <= last.data.ptr:
            return True
    return False
