"""Input checks run once at the edge of fit / evaluate / predict, never inside the step.

Every check raises a DataError (the data is wrong) or a ConfigError (an argument is wrong)
naming the argument and what was expected, and returns the input converted to what the step
needs (C-contiguous host arrays of the model's dtype, integer labels). The target rules are
``devnet.targets``'s, which ``check_y`` runs.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from devnet.backend.host import to_numpy
from devnet.errors import ConfigError, DataError, warn
from devnet.kernels.reference import get_xp
from devnet.targets import bounds, check_class_labels, whole

#: the float dtypes models, data loaders and losses work in
FLOAT_DTYPES = ("float32", "float64")

# every integer up to this is exact in the float type
_EXACT_INT = {np.dtype("float32"): 2**24, np.dtype("float64"): 2**53}


class DataConversionWarning(UserWarning):
    """Data was converted (losslessly) to the dtype the model needs."""


# --- hyper-parameters -----------------------------------------------------------------------

def float_dtype(name: str, value) -> np.dtype:
    """``value`` ("float32", "float64" or the NumPy types) as a native-order np.dtype (the
    kernels cannot type '>f8'), or a ConfigError naming the valid ones."""
    try:
        dt = None if value is None else np.dtype(value)
    except TypeError:
        dt = None
    if dt is None or dt.name not in FLOAT_DTYPES:
        raise ConfigError(f"{name} = {value!r}: valid dtypes: {', '.join(FLOAT_DTYPES)}")
    return np.dtype(dt.name)


def real(value) -> bool:
    """Whether ``value`` is a finite real number (NumPy's too), not a bool."""
    if type(value) is float:  # the common case, without the slower ABC check
        return math.isfinite(value)
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float's range: no float rule can take it
        return False


def is_int(value) -> bool:
    """Whether ``value`` is an integer (NumPy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def flag(name: str, value) -> bool:
    """``value`` if it is a bool (NumPy's too): "no", 0 or None would silently mean True /
    False, so they are a ConfigError naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def interval(name: str, value, lo: float, hi: float = math.inf, *, lo_open: bool = False,
             hi_open: bool = False) -> float:
    """``value`` as a float in the interval from ``lo`` to ``hi`` (each end closed unless
    ``*_open``), or a ConfigError naming ``name`` and the interval."""
    ok = real(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        # an infinite end is never in the interval (real() is False for inf)
        left = "(" if lo_open or lo == -math.inf else "["
        right = ")" if hi_open or hi == math.inf else "]"
        raise ConfigError(f"{name} must be a number in {left}{lo}, {hi}{right}, got {value!r}")
    return float(value)


def unit(name: str, value) -> float:
    """A float in [0, 1) (a decay rate, a momentum)."""
    return interval(name, value, 0.0, 1.0, hi_open=True)


def positive(name: str, value) -> float:
    """A finite float > 0."""
    return interval(name, value, 0.0, lo_open=True)


def non_negative(name: str, value) -> float:
    """A finite float >= 0."""
    return interval(name, value, 0.0)


def optional_positive(name: str, value) -> float | None:
    """None, or a float in (0, inf]."""
    return None if value is None else positive(name, value)


def pair(name: str, value, rule, names: tuple[str, str]) -> tuple[float, float]:
    """Two values, each checked by ``rule`` under its own name (``names``), as a tuple."""
    try:
        first, second = value
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair ({', '.join(names)}), got {value!r}") from None
    return rule(names[0], first), rule(names[1], second)


def count(name: str, value, what: str = "") -> int:
    """``value`` as an int >= 0 (NumPy integers too, not bools); ``what`` glosses ``name``."""
    if is_int(value) and value >= 0:
        return int(value)
    raise ConfigError(f"{name}{f' ({what})' if what else ''} must be an integer >= 0, "
                      f"got {value!r}")


def is_seed(value) -> bool:
    """Whether ``value`` is a seed: None or an int >= 0 (NumPy integers too), not a bool."""
    return value is None or is_int(value) and bool(value >= 0)


def seed(name: str, value) -> int | None:
    """``value`` as an int >= 0 (NumPy integers too) or None, or a ConfigError naming ``name``."""
    if not is_seed(value):
        raise ConfigError(f"{name} must be a non-negative integer or None, got {value!r}")
    return None if value is None else int(value)


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, or a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and math.isfinite(value) and value == int(value) and value >= 1:
            return int(value)
        raise ConfigError(f"{name} must be a positive integer, got {value!r} "
                          f"({type(value).__name__})")
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer (>= 1), got {value}")
    return int(value)


def positive_number(name: str, value) -> float:
    """``value`` as a finite float > 0, or a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r} "
                          f"({type(value).__name__})")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def fraction(name: str, value) -> float:
    """``value`` as a float strictly inside (0, 1), or a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or not 0 < value < 1:
        raise ConfigError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


# --- arrays ---------------------------------------------------------------------------------

def _host(name: str, a, backend) -> np.ndarray:
    """``a`` as a NumPy array; rejects None, strings, ragged lists and object dtype."""
    if a is None:
        raise DataError(f"{name} is None; expected an array")
    if isinstance(a, (str, bytes)):
        raise DataError(f"{name} is a string; expected a numeric array")
    if backend is not None and backend.is_array(a) and not isinstance(a, np.ndarray):
        a = backend.to_numpy(a)
    elif not isinstance(a, np.ndarray) and hasattr(a, "__dlpack__"):
        try:  # a torch / JAX tensor, by DLPack
            a = to_numpy(a)
        except (TypeError, RuntimeError, ValueError, BufferError) as exc:
            raise DataError(f"{name} ({type(a).__module__}.{type(a).__name__}, dtype "
                            f"{getattr(a, 'dtype', '?')}) has no NumPy form: {exc}. Convert it "
                            "to a dense float32/float64 array first (e.g. t.float())") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # NumPy < 2 only warns on ragged lists
            arr = np.asarray(a)
    except (ValueError, TypeError, Warning) as exc:
        raise DataError(f"{name} could not be read as a numeric array (ragged or mixed "
                        f"rows?): {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name} has dtype {arr.dtype} ({_kind(arr.dtype)}); expected a "
                        "numeric (float, int or bool) array")
    return arr


def check_range(name: str, arr: np.ndarray, dtype) -> None:
    """A DataError when finite float values of ``arr`` lie beyond ``dtype``'s range: cast,
    they would become inf (and be reported as if the data held Inf)."""
    dtype = np.dtype(dtype)
    if arr.dtype.kind != "f" or dtype.kind != "f" or arr.dtype.itemsize <= dtype.itemsize \
            or arr.size == 0:
        return
    big = np.isfinite(arr) & (np.abs(arr) > np.finfo(dtype).max)
    if big.any():
        raise DataError(f"{name} has {int(big.sum())} finite value(s) too large for "
                        f"{dtype.name} (e.g. {name}{_first_bad(big)} = {arr[big][0]:g}; "
                        f"{dtype.name} ends at {np.finfo(dtype).max:.3g}): converted they "
                        "would overflow to inf; scale the data or build the model with "
                        "dtype='float64'")


def _kind(dtype: np.dtype) -> str:
    return {"O": "object", "U": "string", "S": "bytes", "c": "complex", "M": "datetime",
            "m": "timedelta", "V": "structured"}.get(dtype.kind, dtype.kind)


def _first_bad(mask: np.ndarray) -> str:
    idx = np.argwhere(mask)[0]
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _finite(name: str, arr: np.ndarray) -> None:
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DataError(f"{name} contains {int(bad.sum())} NaN/Inf value(s), first at "
                            f"{name}{_first_bad(bad)}; expected finite numbers")


def to_dtype(name: str, arr: np.ndarray, dtype: np.dtype, what: str = "the model") -> np.ndarray:
    """``arr`` as ``dtype`` (C-contiguous); warns when converting, raises when it would lose
    information (float64 values that are not exactly float32, integers too large to be exact).
    """
    dtype = np.dtype(dtype)
    if arr.dtype == dtype:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "f" and arr.dtype.itemsize < dtype.itemsize or arr.dtype.kind == "b":
        lossless = True
    elif arr.dtype.kind in "iu":
        lossless = arr.size == 0 or int(np.abs(arr).max()) <= _EXACT_INT[dtype]
    else:  # a wider float into a narrower one: exact only if every value round-trips
        check_range(name, arr, dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            lossless = bool(np.array_equal(arr.astype(dtype).astype(arr.dtype), arr))
    if not lossless:
        raise DataError(f"{name} has dtype {arr.dtype} but {what} uses {dtype.name}, and "
                        f"converting would lose precision; convert it yourself "
                        f"({name}.astype('{dtype.name}')) or build the model with "
                        "dtype='float64'")
    warn(f"{name} converted from {arr.dtype} to {dtype.name} (lossless) to match "
         f"{what}", DataConversionWarning)
    return np.ascontiguousarray(arr, dtype=dtype)


def check_X(model, X, name: str = "X") -> np.ndarray:
    """Features as a C-contiguous (n, model.n_in) host array of the model's dtype."""
    arr = _host(name, X, model.backend)
    if arr.ndim != 2:
        hint = (" (a single feature? use X.reshape(-1, 1); a single sample? X.reshape(1, -1))"
                if arr.ndim == 1 else "")
        raise DataError(f"{name} must be 2-D (n_samples, n_features), got {arr.ndim}-D shape "
                        f"{arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise DataError(f"{name} is empty (0 samples); expected at least one row")
    if arr.shape[1] != model.n_in:
        raise DataError(f"{name} has {arr.shape[1]} features but the model expects "
                        f"n_in={model.n_in} (X must have shape (n_samples, {model.n_in}))")
    _finite(name, arr)
    return to_dtype(name, arr, model.dtype)


def check_y(model, loss, y, n: int, name: str = "y", x_name: str = "X") -> np.ndarray:
    """Targets checked for ``loss`` and the model's outputs.

    Returns int64 labels (n,) for cross_entropy with labels; otherwise a float array of the
    model's dtype shaped (n, n_out).
    """
    arr = _host(name, y, model.backend)
    if arr.ndim == 0:
        raise DataError(f"{name} is a scalar; expected one target per sample ({n})")
    if arr.shape[0] != n:
        raise DataError(f"{x_name} and {name} have different numbers of samples: {x_name} has "
                        f"{n} rows, {name} has {arr.shape[0]}")
    _finite(name, arr)
    k = model.n_out
    if loss.target == "classes":
        arr = _labels_or_probs(arr, n, k, name)
        if arr.ndim == 2:  # probabilities; labels were checked by check_class_labels
            loss.check_values(arr, model.dtype, name)
        return arr
    if arr.ndim == 1 and k == 1:
        arr = arr.reshape(n, 1)
    if arr.shape != (n, k):
        raise DataError(f"{loss.name} needs {name} of shape ({n}, {k}) (or ({n},) for one "
                        f"output) to match the model's {k} output(s), got {arr.shape}")
    loss.check_values(arr, model.dtype, name)  # the loss's own rules: poisson >= 0, ...
    if loss.target == "unit" and arr.dtype.kind in "biu":
        # 0/1 labels: exact in any float, nothing to warn about
        return np.ascontiguousarray(arr, dtype=model.dtype)
    return to_dtype(name, arr, model.dtype)


def _labels_or_probs(arr: np.ndarray, n: int, k: int, name: str) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] == 1 and k > 1:
        arr = arr.reshape(n)
    if arr.ndim == 1:
        if not whole(arr):  # finite already (check_y)
            bad = arr != np.round(arr)
            raise DataError(f"cross_entropy needs integer class labels in {name}, got "
                            f"non-integer values (e.g. {name}{_first_bad(bad)} = "
                            f"{arr[bad][0].item()!r})")
        if arr.dtype.kind == "b":
            raise DataError(f"cross_entropy needs integer class labels in {name}, got bool; "
                            "use binary_cross_entropy for 0/1 targets")
        check_class_labels(arr, k, name)
        return np.ascontiguousarray(arr, dtype=np.int64)
    if arr.shape != (n, k):
        raise DataError(f"cross_entropy needs {name} as integer labels of shape ({n},) or "
                        f"class probabilities of shape ({n}, {k}), got shape {arr.shape}")
    return arr


def real_dtype(name: str, a) -> None:
    """A DataError unless array ``a`` holds real numbers (bool, int or float)."""
    if a.dtype.kind not in "biuf":
        raise DataError(f"{name} must hold real numbers (bool, int or float), got dtype "
                        f"{a.dtype}")


def sample_weights(w, n: int, name: str = "sample_weight"):
    """Sample weights (n,) as float64 scaled to a maximum of 1 (NumPy or CuPy, where ``w``
    lives), for fit's data edge and the losses alike: real numbers, one per sample, finite,
    >= 0, not all zero. The scaling keeps a later mean from overflowing. One host read (sync).
    """
    real_dtype(name, w)
    if w.shape != (n,):
        raise DataError(f"{name} must have shape ({n},), one weight per sample, got "
                        f"{tuple(w.shape)}")
    xp = get_xp(w)
    w = w.astype(xp.float64, copy=False)
    lo, hi = bounds(w)  # NaN propagates into both
    if not (np.isfinite(lo) and np.isfinite(hi)):
        _finite(name, to_numpy(w))  # the error path: a copy to the host is no cost
    if lo < 0:
        host = to_numpy(w)
        bad = host < 0
        raise DataError(f"{name} must be >= 0, got {int(bad.sum())} negative weight(s), first "
                        f"{name}{_first_bad(bad)} = {host[bad][0]:g}")
    if hi == 0:
        raise DataError(f"{name} is all zero: no sample would count; give at least one "
                        "weight > 0")
    return w / hi


def check_sample_weight(model, w, n: int, name: str = "sample_weight") -> np.ndarray | None:
    """Weights (n,) (``sample_weights``) rescaled to mean 1 in float64, then cast to the
    model's dtype; None passes. Only their ratios matter (the loss is a weighted mean); the
    rescaling keeps every weight representable in the model's dtype.
    """
    if w is None:
        return None
    arr = sample_weights(_host(name, w, model.backend), n, name)
    arr /= arr.mean()
    return np.ascontiguousarray(arr, dtype=model.dtype)


def check_validation_data(model, loss, data) -> tuple:
    """``(Xv, yv)`` or ``(Xv, yv, wv)``, each checked like the training data."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise ConfigError("validation_data must be a tuple (X_val, y_val) or "
                          f"(X_val, y_val, sample_weight_val), got {type(data).__name__}"
                          + (f" of length {len(data)}" if isinstance(data, (tuple, list))
                             else ""))
    Xv = check_X(model, data[0], "validation_data[0] (X_val)")
    yv = check_y(model, loss, data[1], len(Xv), "validation_data[1] (y_val)",
                 "validation_data[0] (X_val)")
    wv = check_sample_weight(model, data[2] if len(data) == 3 else None, len(Xv),
                             "validation_data[2] (sample_weight_val)")
    return Xv, yv, wv


def check_model(model) -> None:
    """A ConfigError unless ``model`` looks like a devnet MLP."""
    needed = ("forward", "backward", "params", "grads", "n_in", "n_out", "dtype", "backend")
    if not all(hasattr(model, a) for a in needed):
        raise ConfigError(f"model must be a devnet MLP (devnet.MLP), got {type(model).__name__}")
