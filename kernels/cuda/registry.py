"""The CUDA kernel registry: kernel name -> template, arguments and the globals it is cloned with.

The kernel modules register their kernels when imported; ``launch.Kernel`` compiles one from its
name and dtype: its template cloned per dtype with its scalar functions bound as globals (as
``cpu/`` does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from devnet.kernels import scalar
from devnet.kernels.cuda.device import COMMON, S
from numba import types


class Spec(NamedTuple):
    """How kernel ``name`` is built."""

    template: Callable
    params: tuple  # its arguments (``table.Param``, ``table.decl``), in the template's order
    funcs: dict  # global -> the name (str) of a scalar function of ``S[dtype]``, or a constant
    extra: Callable | None = None  # dtype -> more globals
    tag: str = ""  # what its compiled code depends on beyond scalar.py (Numba's disk cache)


SPECS: dict[str, Spec] = {}


def register(name, template, params, funcs=None, extra=None, tag=""):
    """Kernel ``name``: ``template`` with its arguments declared (``table.decl``)."""
    code = template.__code__
    names = code.co_varnames[:code.co_argcount]
    if names != tuple(p.name for p in params):
        raise TypeError(f"CUDA kernel {name}: template arguments {names} are not the declared "
                        f"{tuple(p.name for p in params)}")
    SPECS[name] = Spec(template, tuple(params), funcs or {}, extra, tag)


_TYPES = {"f64": types.float64, "i32": types.int32, "i64": types.int64, "u64": types.uint64,
          "bool": types.boolean}


def numba_type(param, ft):
    """The Numba type of ``param`` in a kernel of float type ``ft`` (arrays C-contiguous)."""
    t = ft if param.dtype == "real" else _TYPES[param.dtype]
    if not param.shape:
        return t
    return t[::1] if len(param.shape) == 1 else t[:, ::1]


def signature(name, ft):
    """The one signature kernel ``name`` is compiled for, with float type ``ft``."""
    return types.void(*(numba_type(p, ft) for p in SPECS[name].params))


def pyfunc(name, dtype, **override):
    """The plain-Python kernel ``name`` for ``dtype`` (``scalar.specialise``); ``override``:
    globals to bind instead (the hyper kernels' ``step`` reads g scaled)."""
    dt = np.dtype(dtype)
    spec = SPECS[name]
    fns = S[dt]
    bound = {g: getattr(fns, f) if isinstance(f, str) else f for g, f in spec.funcs.items()}
    extra = spec.extra(dt) if spec.extra is not None else {}
    ns = scalar.typed_globals(
        {**spec.template.__globals__, **COMMON[dt], **bound, **extra, **override}, dt)
    fn = scalar.specialise(spec.template, ns, dt)
    # the dtype (the clones share their bytecode) and what the code depends on, for Numba's cache
    fn.__qualname__ = f"{name}_{dt.name}_{spec.tag}{scalar.SOURCE_TAG}"
    return fn
