"""O(1) argument checks of the fused kernel entries, from ``table.ARRAYS``: shapes, dtypes, layout.

Numba kernels do not check bounds: a mismatched buffer would be read or written outside its
array. Every public entry of ``cpu/`` and ``cuda/`` checks first (attribute reads only, a
DataError naming the argument) and keeps the kernel without the checks as its ``unchecked``
attribute (the backends' ``raw_kernels``, for buffers devnet allocated itself: on a small model
the checks cost more than the kernels).
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
from devnet.kernels import scalar
from devnet.kernels.table import (
    ARRAYS,
    CLIP_KERNEL,
    ENTRIES,
    HYPER_HEADER,
    HYPER_STEPWISE0,
    L2_KERNEL,
    LOSSES,
    NEEDS_PREACTIVATION,
    REDUCTION_ARRAYS,
    STEP_HYPER,
    STEPS,
    gated_scalars,
    hyper_layout,
    step_hyper_argnames,
)

from devnet.errors import ConfigError, DataError, lookup


class _Structural(type):
    # checked on the instance, not its class: the simulator's stand-in arrays (like CuPy's)
    # expose dtype, shape, ... as instance attributes a class-level hook cannot see
    def __instancecheck__(cls, obj) -> bool:
        return all(hasattr(obj, n) for n in ("dtype", "shape", "strides", "flags", "ndim"))


class ArrayLike(metaclass=_Structural):
    """``isinstance(a, ArrayLike)``: NumPy, CuPy (or the simulator's stand-in) arrays alike."""


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Sizes that must be at least 1: a row's first element is read (LayerNorm's shift, a row max).
MIN_SIZES = {"bias_act_fwd": ("m",), "layernorm_fwd": ("m",), "bias_act_drop_fwd": ("m",)}


def _shape_text(shape_syms, sizes):
    return "(" + ", ".join(str(sizes.get(s, s)) for s in shape_syms) + \
        ("," if len(shape_syms) == 1 else "") + ")"


def check(name: str, args: tuple, array_type=np.ndarray, contiguous: bool = False):
    """The common float dtype of kernel ``name``'s arrays in ``args`` (positional), or a
    DataError naming the first argument that is missing, of another type, dtype, rank or shape
    than the others imply, read-only where written, or (``contiguous``) not C-contiguous."""
    sizes: dict[str, int] = {}
    origin: dict[str, str] = {}
    dtype = None
    for spec in ARRAYS[name] if name in ARRAYS else REDUCTION_ARRAYS[name]:
        a = args[spec.pos] if spec.pos < len(args) else None
        if a is None:
            if spec.optional:
                continue
            raise DataError(f"{name}: argument {spec.name!r} is required, got None")
        if not isinstance(a, array_type):
            raise DataError(f"{name}: argument {spec.name!r} must be an array "
                            f"({_type_names(array_type)}), got {type(a).__name__}")
        if dtype is None:
            dtype = a.dtype
            if dtype not in FLOAT_DTYPES:
                raise DataError(f"{name}: argument {spec.name!r} must be float32 or float64, "
                                f"got {dtype}")
        elif a.dtype != dtype:
            raise DataError(f"{name}: argument {spec.name!r} is {a.dtype}, the other arrays "
                            f"are {dtype}; pass arrays of one dtype")
        if a.ndim != len(spec.shape):
            raise DataError(f"{name}: argument {spec.name!r} must be {len(spec.shape)}-D "
                            f"{_shape_text(spec.shape, sizes)}, got shape {tuple(a.shape)}")
        for sym, size in zip(spec.shape, a.shape):
            seen = sizes.setdefault(sym, size)
            if seen != size:
                raise DataError(f"{name}: argument {spec.name!r} has shape {tuple(a.shape)}, "
                                f"expected {_shape_text(spec.shape, sizes)} ({sym} = {seen} "
                                f"from {origin[sym]!r})")
            origin.setdefault(sym, spec.name)
        if spec.written:
            _writable(name, spec.name, a)
        if contiguous and not a.flags.c_contiguous:
            raise DataError(f"{name}: argument {spec.name!r} must be C-contiguous, got strides "
                            f"{tuple(a.strides)}; pass a contiguous copy")
    for sym in MIN_SIZES.get(name, ()):
        if sizes.get(sym, 1) < 1:
            raise DataError(f"{name}: size {sym} is 0; each row needs at least one element")
    return dtype


def checked(name: str, array_type=np.ndarray, contiguous: bool = False):
    """Decorator of a hand-written kernel entry: ``check(name, ...)`` on its arguments, then the
    kernel, which stays reachable as the entry's ``unchecked`` attribute."""

    def wrap(kernel):
        sig = inspect.signature(kernel)

        def entry(*args, **kwargs):
            bound = args
            if kwargs:
                try:
                    bound = sig.bind(*args, **kwargs).args
                except TypeError:
                    return kernel(*args, **kwargs)  # Python's own message for a bad call
            check(name, bound, array_type, contiguous)
            return kernel(*args, **kwargs)

        functools.update_wrapper(entry, kernel)
        entry.unchecked = kernel
        return entry
    return wrap


def _pair(build):
    """``build(True)``, the checked entry, with ``build(False)`` as its ``unchecked``."""
    entry = build(True)
    entry.unchecked = build(False)
    functools.update_wrapper(entry.unchecked, entry)
    return entry


def residual_out(name: str, R, out) -> None:
    """A DataError unless ``out`` is given exactly when the residual input ``R`` is."""
    if (R is None) != (out is None):
        raise DataError(f"{name}: R (the residual input) and out (where R + A goes) are "
                        "given together or not at all")


def elementwise_act(act) -> None:
    """A ConfigError listing the elementwise activations unless ``act`` is one."""
    if act not in scalar.ACTIVATIONS:  # softmax is row-wise: no hidden layer uses it
        lookup(scalar.ACTIVATIONS, act, "elementwise activation")


def preactivation(name: str, act: str, Z, A):
    """``Z``, or ``A`` in its place when None: a DataError where ``act`` needs Z."""
    if Z is None:
        if act in NEEDS_PREACTIVATION:
            raise DataError(f"{name}({act!r}) needs the pre-activation Z")
        return A
    return Z


def dropout_args(name: str, p, key, row0, real=None) -> tuple:
    """``(threshold, 1/(1-p), 1-p, k0, k1, row0)`` for a dropout kernel (with ``real``, the
    CUDA kernels' dtype: the two scales cast to it, row0 an int64); a ConfigError unless
    0 <= p < 1, a DataError unless row0 (the global row of the array's first row) is a
    non-negative integer."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout rate must be in [0, 1), got {p!r}")
    key = int(key) & 0xFFFFFFFFFFFFFFFF
    if isinstance(row0, (bool, np.bool_)) or not isinstance(row0, (int, np.integer)) \
            or row0 < 0:
        raise DataError(f"{name}: row0 (the global row of the array's first row, keying its "
                        f"dropout masks) must be a non-negative integer, got {row0!r}")
    scale, inv, row0 = 1.0 / (1.0 - p), 1.0 - p, int(row0)
    if real is not None:
        scale, inv, row0 = real(scale), real(inv), np.int64(row0)
    return (np.uint64(scalar.dropout_threshold(p)), scale, inv, np.uint64(key & 0xFFFFFFFF),
            np.uint64(key >> 32), row0)


def _type_names(array_type) -> str:
    if array_type is ArrayLike:
        return "NumPy or CuPy"
    return f"{array_type.__module__.split('.')[0]}.{array_type.__name__}"


# --- entry points generated from table rows (cpu/ and cuda/ fill in the launch) ----------

def _bind(name: str, sig: inspect.Signature, args: tuple, kwargs: dict) -> tuple:
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise DataError(f"{name}: {exc}; arguments: {', '.join(sig.parameters)}") from None
    bound.apply_defaults()
    return tuple(bound.args)


def _floats(name: str, names, values) -> list:
    """``values`` as floats, or a DataError naming the first that is not a real number."""
    out = []
    for arg, v in zip(names, values):
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise DataError(f"{name}: {arg} must be a real number, got {v!r}") from None
    return out


def _signature(names, defaults=()) -> inspect.Signature:
    """Positional-or-keyword parameters ``names``, then ``defaults`` ((name, value) pairs)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(a, kind) for a in names]
                             + [inspect.Parameter(a, kind, default=d) for a, d in defaults])


def _writable(name: str, arg: str, a) -> None:
    """A DataError when ``a``, which the kernel writes, is a read-only NumPy array."""
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        raise DataError(f"{name}: argument {arg!r} is written but read-only; pass a writable "
                        "array")


def float64_array(name: str, arg: str, a, ndim: int, array_type=np.ndarray,
                  written: bool = False) -> None:
    """A DataError unless ``a`` is a C-contiguous ``ndim``-D float64 array (writable if
    ``written``): how every backend's kernels read hyper and table."""
    if not isinstance(a, array_type):
        raise DataError(f"{name}: argument {arg!r} must be a float64 array "
                        f"({_type_names(array_type)}), got {type(a).__name__}")
    if a.dtype != np.float64 or a.ndim != ndim or not a.flags.c_contiguous:
        raise DataError(f"{name}: argument {arg!r} must be a C-contiguous {ndim}-D float64 "
                        f"array, got a {a.ndim}-D {a.dtype} array of shape {tuple(a.shape)}"
                        + ("" if a.flags.c_contiguous else " (not C-contiguous)"))
    if written:
        _writable(name, arg, a)


def make_step_hyper(name: str, launch, array_type=np.ndarray, contiguous: bool = False):
    """The public entry ``name(p, *buffers, hyper, *flags)`` of hyper step ``name``.

    Checks the buffers (one shape (N,), one dtype) and ``hyper``'s layout (never its values: no
    sync); refuses a state buffer left None while a flag uses it; a buffer gated by a scalar
    may be None (its term is then off). Calls ``launch(arrays, hyper, flags, present)``, None
    buffers replaced by ``p``; ``present``: per ``table.gated_scalars`` pair, whether its
    buffer was given.
    """
    step_name = STEP_HYPER[name]
    row = STEPS[step_name]
    names = step_hyper_argnames(name)
    size = len(hyper_layout(step_name))
    sig = _signature(names)
    n_arrays = 1 + len(row.buffers)
    gated = tuple(names.index(b) for b, _ in gated_scalars(step_name))
    needs = tuple((names.index(b), b, names.index(h), h) for b, h in row.optional.items()
                  if h in row.flags)

    def build(checking):
        def step(*args, **kwargs):
            if kwargs or len(args) != len(names):
                args = _bind(name, sig, args, kwargs)
            if checking:
                check(name, args, array_type, contiguous)
            hyper = args[n_arrays]
            float64_array(name, "hyper", hyper, 1, array_type)
            if hyper.shape[0] != size:
                raise DataError(f"{name}: argument 'hyper' must have {size} elements "
                                f"({', '.join(hyper_layout(step_name))}), got {hyper.shape[0]}")
            for pos, buf, hpos, flag in needs:
                if args[pos] is None and args[hpos]:
                    raise DataError(f"{name}: {flag}={args[hpos]!r} uses the state buffer "
                                    f"{buf!r}, got None")
            p = args[0]
            arrays = [p if a is None else a for a in args[:n_arrays]]
            launch(arrays, hyper, [bool(f) for f in args[n_arrays + 1:]],
                   [args[pos] is not None for pos in gated])

        step.__name__ = step.__qualname__ = name
        step.__signature__ = sig
        step.__doc__ = (f"{row.doc} (N,) flat buffers, one dtype; the scalars read from "
                        f"``hyper`` (float64, slots {', '.join(hyper_layout(step_name))}) on "
                        f"the device; see ``reference.{step_name}``.")
        return step
    return _pair(build)


def make_advance(launch, array_type=np.ndarray):
    """The public entry ``opt_advance(hyper, table)``: checks (no values read: no sync), then
    ``launch(hyper, table)``. hyper: writable float64 (H,), H >= header + columns; table:
    float64 (rows >= 1, columns)."""
    name = "opt_advance"

    def opt_advance(hyper, table):
        float64_array(name, "hyper", hyper, 1, array_type, written=True)
        float64_array(name, "table", table, 2, array_type)
        rows, columns = table.shape
        if rows < 1:
            raise DataError(f"{name}: table has no rows, shape {tuple(table.shape)}")
        _hyper_slots(name, hyper, HYPER_STEPWISE0 + columns,
                     f"{HYPER_STEPWISE0} header slots + {columns} table columns")
        launch(hyper, table)

    opt_advance.__doc__ = ("One optimizer step's scalars on the device: ``t += 1``, stepwise "
                           "slots from ``table``; see ``reference.opt_advance``.")
    return opt_advance


def _hyper_slots(name: str, hyper, need: int, what: str) -> None:
    """A DataError unless ``hyper`` has at least ``need`` slots (``what`` they are)."""
    if hyper.shape[0] < need:
        raise DataError(f"{name}: hyper has {hyper.shape[0]} slots, fewer than the {what}")


def make_clip(launch, array_type=np.ndarray, contiguous: bool = False):
    """The public entry ``opt_clip(g, hyper)``: checks (no sync), then ``launch(g, hyper)``.
    g: (N,) float32/float64; hyper: writable float64 (H,), at least the header's slots."""
    name = CLIP_KERNEL

    def build(checking):
        def opt_clip(g, hyper):
            if checking:
                check(name, (g,), array_type, contiguous)
            if not isinstance(g, array_type) or g.ndim != 1:  # unchecked entry too
                raise DataError(f"{name}: argument 'g' must be a 1-D float array")
            float64_array(name, "hyper", hyper, 1, array_type, written=True)
            _hyper_slots(name, hyper, len(HYPER_HEADER),
                         f"{len(HYPER_HEADER)} header slots ({', '.join(HYPER_HEADER)})")
            launch(g, hyper)

        opt_clip.__doc__ = ("The gradient's clip scale into ``hyper`` (one reduction); see "
                            "``reference.opt_clip``.")
        return opt_clip
    return _pair(build)


def _spans(name: str, spans, n: int, array_type) -> None:
    """A DataError unless ``spans`` is a C-contiguous (k, 2) int64 array; on the host also
    unless its spans are sorted, disjoint and within [0, n] (device values are not read: the
    kernels clamp every span, ``norms.span_bounds``)."""
    if not isinstance(spans, array_type) or spans.dtype != np.int64 or spans.ndim != 2 \
            or spans.shape[1] != 2 or not spans.flags.c_contiguous:
        what = (f"a {spans.ndim}-D {spans.dtype} array of shape {tuple(spans.shape)}"
                if isinstance(spans, array_type) else type(spans).__name__)
        raise DataError(f"{name}: spans must be a C-contiguous (k, 2) int64 array of "
                        f"[start, stop) offsets, got {what}")
    if isinstance(spans, np.ndarray):  # k is a layer count: a loop over a few pairs
        prev = 0
        for i, (start, stop) in enumerate(spans.tolist()):
            if not prev <= start <= stop <= n:
                raise DataError(f"{name}: span {i} = [{start}, {stop}) is out of [0, {n}] or "
                                "overlaps the span before it; spans must be sorted, disjoint "
                                f"[start, stop) offsets into p (size {n})")
            prev = stop


def make_l2(launch, array_type=np.ndarray, contiguous: bool = False,
            device_value: bool = False):
    """The public entry ``l2_penalty(p, g, spans, alpha, weight, count, value, value_scale)``.

    Checks the arrays, the scalars and ``value`` (with ``device_value`` a 1-element array of
    p's dtype, read by the kernel; else a real number or a 1-element array, read here), then
    ``launch(...)`` with the same arguments, scalars as floats.
    """
    name = L2_KERNEL
    args = tuple(p.name for p in ENTRIES[name])

    def build(checking):
        def l2_penalty(p, g, spans, alpha, weight, count, value, value_scale=1.0):
            if checking:
                check(name, (p, g, spans, alpha, weight), array_type, contiguous)
            for arg, a in (("p", p), ("g", g)):  # unchecked entry too
                if not isinstance(a, array_type) or a.ndim != 1 or a.shape != p.shape:
                    raise DataError(f"{name}: argument {arg!r} must be a 1-D float array of p's "
                                    "size")
            _spans(name, spans, p.shape[0], array_type)
            alpha, count, value_scale = _floats(name, ("alpha", "count", "value_scale"),
                                                (alpha, count, value_scale))
            if device_value:
                if not isinstance(value, array_type) or value.size != 1 or \
                        value.dtype != p.dtype or not value.flags.c_contiguous:
                    raise DataError(f"{name}: value must be a 1-element {p.dtype} array on the "
                                    f"device (the loss value), got {_describe(value)}")
            elif isinstance(value, array_type):
                if value.size != 1 or value.dtype.kind not in "biuf":
                    raise DataError(f"{name}: value must be a real number or a 1-element array, "
                                    f"got {_describe(value)}")
                value = float(value.reshape(())[()])
            else:
                value = _floats(name, ("value",), (value,))[0]
            return launch(p, g, spans, alpha, weight, count, value, value_scale)

        l2_penalty.__signature__ = _signature(args[:-1], ((args[-1], 1.0),))
        l2_penalty.__doc__ = ("scikit-learn's L2 term over the weight spans, in place on g; "
                              "returns the loss value with it; see ``reference.l2_penalty``.")
        return l2_penalty
    return _pair(build)


def _describe(a) -> str:
    if hasattr(a, "dtype") and hasattr(a, "shape"):
        return f"a {a.dtype} array of shape {tuple(a.shape)}"
    return f"{a!r} ({type(a).__name__})"


def loss_args(name: str, pred, target, grad, weight, array_type=np.ndarray,
              contiguous: bool = False):
    """(labels, target, weight) of loss kernel ``name`` checked in O(1) (shapes, dtypes,
    writability: never values), shaped and cast for the kernel, or a DataError; ``labels``:
    target is (n,) integer class labels."""
    arrays = {"pred": pred, "target": target, "grad": grad}
    if weight is not None:
        arrays["weight"] = weight
    for arg, a in arrays.items():
        if not isinstance(a, array_type):
            raise DataError(f"{name}: {arg} must be an array ({_type_names(array_type)}), got "
                            f"{type(a).__name__}")
    if pred.ndim != 2 or pred.dtype not in FLOAT_DTYPES:
        raise DataError(f"{name}: pred must be a 2-D float32 or float64 array, got "
                        f"{pred.dtype} {tuple(pred.shape)}")
    n, k = pred.shape
    if k == 0:
        raise DataError(f"{name}: pred has no columns, shape {tuple(pred.shape)}")
    if grad.shape != pred.shape or grad.dtype != pred.dtype or \
            isinstance(grad, np.ndarray) and not grad.flags.writeable:
        raise DataError(f"{name}: grad must be a writable {pred.dtype} array of pred's shape "
                        f"{tuple(pred.shape)}, got {grad.dtype} {tuple(grad.shape)}")
    if contiguous:
        for arg, a in arrays.items():
            if not a.flags.c_contiguous:
                raise DataError(f"{name}: {arg} must be C-contiguous, got strides "
                                f"{tuple(a.strides)}; pass a contiguous copy")
    if weight is not None:
        if weight.shape != (n,) or weight.dtype.kind not in "biuf":
            raise DataError(f"{name}: weight must be a real array of shape ({n},), got "
                            f"{weight.dtype} {tuple(weight.shape)}")
        weight = weight.astype(pred.dtype, copy=False)
    if LOSSES[name].labels and target.ndim == 1:
        if target.shape != (n,) or target.dtype.kind not in "iu":
            raise DataError(f"{name}: integer labels of shape ({n},) expected, got "
                            f"{target.dtype} {tuple(target.shape)}")
        # one compiled kernel per label type: int32 / int64 (out-of-range values stay so)
        if target.dtype not in (np.int32, np.int64):
            with np.errstate(over="ignore"):
                target = target.astype(np.int64)
        return True, target, weight
    if not (target.shape == pred.shape or target.shape == (n,) and k == 1) \
            or target.dtype.kind not in "biuf":
        raise DataError(f"{name}: target must be a real array of pred's shape "
                        f"{tuple(pred.shape)}, got {target.dtype} {tuple(target.shape)}")
    with np.errstate(over="ignore", invalid="ignore"):
        target = target.reshape(pred.shape).astype(pred.dtype, copy=False)
    return False, target, weight


def make_loss(name: str, launch, array_type=np.ndarray, contiguous: bool = False):
    """The public entry ``name(pred, target, grad, weight, scale, **params)`` of element loss
    kernel ``name``: checks, then ``launch(pred, target, grad, weight, scale, param)`` with the
    row's one hyper-parameter (1.0 when it has none)."""
    row = LOSSES[name]
    defaults = dict(row.params)
    param_name, default = next(iter(row.params), (None, 1.0))

    def loss(pred, target, grad, weight, scale, *extra, **params):
        if extra:  # the hyper-parameter given by position
            if len(extra) > len(defaults) or set(params) & set(list(defaults)[:len(extra)]):
                raise DataError(f"{name}: too many arguments; arguments: pred, target, grad, "
                                f"weight, scale{''.join(', ' + p for p in defaults)}")
            params = {**dict(zip(defaults, extra)), **params}
        if params:
            unknown = sorted(set(params) - set(defaults))
            if unknown:
                raise DataError(f"{name}: unknown argument(s) {', '.join(unknown)}; valid: "
                                f"{', '.join(defaults) or 'none'}")
        _, target, weight = loss_args(name, pred, target, grad, weight, array_type,
                                      contiguous)
        param = params.get(param_name, default) if params else default
        return launch(pred, target, grad, weight, *_floats(name, ("scale", param_name),
                                                           (scale, param)))

    loss.__name__ = loss.__qualname__ = name
    loss.__signature__ = _signature(("pred", "target", "grad", "weight", "scale"), row.params)
    loss.__doc__ = (f"{row.doc} Returns ``scale * sum_i w_i l_i``; writes ``grad``; see "
                    f"``reference.{name}``.")
    return loss
