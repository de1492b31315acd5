"""Input checks run once at the edge of fit / evaluate / predict, never inside the step.

Every check raises a DataError (the data is wrong) or a ConfigError (an argument is wrong) whose
message names the argument and says what was expected. Checks return the input converted to
what the step needs (C-contiguous host arrays of the model's dtype, integer labels), so the step
itself never converts or checks anything.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple

import numpy as np

from devnet.backend.host import to_numpy
from devnet.errors import ConfigError, DataError
from devnet.kernels.reference import get_xp
from devnet.task import check_class_labels

# Largest integer every integer up to which a float type represents exactly.
_EXACT_INT = {np.dtype("float32"): 2**24, np.dtype("float64"): 2**53}


class DataConversionWarning(UserWarning):
    """Data was converted (losslessly) to the dtype the model needs."""


# --- hyper-parameters -----------------------------------------------------------------------

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
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) \
            and value >= 0:
        return int(value)
    raise ConfigError(f"{name}{f' ({what})' if what else ''} must be an integer >= 0, "
                      f"got {value!r}")


def seed(name: str, value) -> int | None:
    """``value`` as an int >= 0 (NumPy integers too) or None, or a ConfigError naming ``name``."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer or None, got {value!r}")
    return int(value)


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
        a = tensor_to_numpy(a, name)
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


def tensor_to_numpy(a, name: str) -> np.ndarray:
    """A torch / JAX / CuPy tensor as a NumPy array (by DLPack), or a DataError naming it
    when it has no NumPy form (bfloat16, sparse, ...) and saying how to convert it."""
    try:
        return to_numpy(a)
    except (TypeError, RuntimeError, ValueError, BufferError) as exc:
        raise DataError(f"{name} ({type(a).__module__}.{type(a).__name__}, dtype "
                        f"{getattr(a, 'dtype', '?')}) has no NumPy form: {exc}. Convert it "
                        "to a dense float32/float64 array first (e.g. t.float())") from None


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
    warnings.warn(f"{name} converted from {arr.dtype} to {dtype.name} (lossless) to match "
                  f"{what}", DataConversionWarning, stacklevel=4)
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
        if arr.ndim == 2:  # probabilities; labels were checked by devnet.task's rule
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
        if arr.dtype.kind == "f":
            if not np.array_equal(arr, np.round(arr)):
                bad = arr != np.round(arr)
                raise DataError(f"cross_entropy needs integer class labels in {name}, got "
                                f"non-integer values (e.g. {name}{_first_bad(bad)} = "
                                f"{arr[bad][0].item()!r})")
        elif arr.dtype.kind == "b":
            raise DataError(f"cross_entropy needs integer class labels in {name}, got bool; "
                            "use binary_cross_entropy for 0/1 targets")
        check_class_labels(arr, k, name)  # one rule (devnet.task) for fit, CLI and losses
        return np.ascontiguousarray(arr, dtype=np.int64)
    if arr.shape != (n, k):
        raise DataError(f"cross_entropy needs {name} as integer labels of shape ({n},) or "
                        f"class probabilities of shape ({n}, {k}), got shape {arr.shape}")
    return arr


def check_sample_weight(model, w, n: int, name: str = "sample_weight") -> np.ndarray | None:
    """Weights (n,) rescaled to mean 1 in float64, then cast to the model's dtype; None passes.

    Weights must be finite, >= 0 and not all zero. Only their ratios matter (the loss is a
    weighted mean), so rescaling changes no result, but it keeps every weight representable:
    float32 weights near 1e38 would overflow their own mean (zeroing every weight) and
    float64 weights beyond float32's range would become inf in a float32 model.
    """
    if w is None:
        return None
    arr = _host(name, w, model.backend)
    if arr.shape != (n,):
        raise DataError(f"{name} must have shape ({n},), one weight per sample, got {arr.shape}")
    _finite(name, arr)
    arr = arr.astype(np.float64)
    if (arr < 0).any():
        bad = arr < 0
        raise DataError(f"{name} must be >= 0, got {int(bad.sum())} negative weight(s), first "
                        f"{name}{_first_bad(bad)} = {arr[bad][0]:g}")
    top = arr.max()
    if not top > 0:
        raise DataError(f"{name} is all zero: no sample would count; give at least one "
                        "weight > 0")
    arr = arr / top  # in [0, 1] first, so the mean cannot overflow
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
        raise ConfigError(f"model must be a devnet.MLP, got {type(model).__name__}")


# --- targets, by the kind a loss declares (``devnet.losses``: ``Loss.target``) ----------------
# Device-generic (NumPy or CuPy): the losses' unchecked door runs them on a batch where it
# lives, fit's data edge (``check_y``) on the host.

_SHOWN = 5  # bad labels named in an error message


def cast(a, dtype):
    """``a`` as ``dtype``; values beyond its range become inf, which the caller reports."""
    with np.errstate(over="ignore", invalid="ignore"):
        return a.astype(dtype, copy=False)


def bounds(a) -> tuple[float, float]:
    """(min, max) of a non-empty array as Python floats: one host read (sync) for both."""
    lo, hi = get_xp(a).stack((a.min(), a.max())).tolist()
    return float(lo), float(hi)


def _label_list(xp, labels) -> str:
    """Up to ``_SHOWN`` distinct values of ``labels`` (a device array), for a message."""
    values = np.unique(np.asarray(labels.get() if hasattr(labels, "get") else labels))
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                      for v in values[:_SHOWN].tolist())
    return shown + (f", ... ({len(values)} distinct)" if len(values) > _SHOWN else "")


def _class_count(k: int) -> None:
    # a softmax over one column is 1 whatever the logit: loss 0, gradient 0, nothing is ever
    # learnt, silently
    if k < 2:
        raise DataError(f"cross_entropy needs at least 2 prediction columns (one per class), "
                        f"got {k}; for one output use binary_cross_entropy (0/1 targets) or "
                        "build the model with one output per class")


def class_target(pred, target):
    """``target`` for predictions ``pred`` (n, k) as the softmax kernel takes it: (n,) integer
    labels or (n, k) float probabilities; a DataError otherwise."""
    n, k = pred.shape
    _class_count(k)
    if target.ndim == 1 and target.shape[0] == n and target.dtype.kind in "iu":
        return target
    if target.shape == (n, k) and target.dtype.kind == "f":
        return target
    raise DataError(f"cross_entropy needs integer labels of shape ({n},) or class "
                    f"probabilities of shape ({n}, {k}), got {target.dtype} "
                    f"{tuple(target.shape)}")


def class_labels_or_probs(pred, target, xp):
    """Labels: integers 0..k-1 (whole-number floats too) as int64, one min/max per call;
    probabilities: (n, k) finite, in [0, 1], rows summing to 1, in pred's dtype."""
    n, k = pred.shape
    _class_count(k)
    if target.ndim == 2 and target.shape == (n, 1) and k > 1:
        target = target.reshape(n)
    if target.ndim == 2 and target.shape == (n, k):
        probs = cast(target, pred.dtype)
        _class_values("cross_entropy", probs, pred.dtype)
        return probs
    if target.ndim != 1 or target.shape[0] != n:
        raise DataError(f"cross_entropy needs integer labels of shape ({n},) or class "
                        f"probabilities of shape ({n}, {k}), got shape {tuple(target.shape)}")
    if target.dtype.kind == "b":
        raise DataError("cross_entropy needs integer class labels 0..k-1, got bool; use "
                        "binary_cross_entropy for 0/1 targets of one output")
    lo, hi = bounds(target)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError("cross_entropy labels contain NaN or Inf; expected integer class "
                        f"labels 0..{k - 1}")
    if lo < 0 or hi >= k:
        bad = target[(target < 0) | (target >= k)]
        raise DataError(f"cross_entropy labels must be integers in [0, {k}) (0..{k - 1}) "
                        f"for predictions with {k} columns; got out-of-range label(s) "
                        f"{_label_list(xp, bad)}")
    labels = target.astype(xp.int64, copy=False)  # in range now: no overflow
    if target.dtype.kind == "f":
        frac = labels != target
        if bool(frac.any()):
            raise DataError(f"cross_entropy labels must be whole numbers (class indices "
                            f"0..{k - 1}), got {_label_list(xp, target[frac])}")
    return labels


def _any_values(loss: str, target, dtype, name: str) -> None:
    """Regression targets: no rule beyond finiteness."""


def _unit_values(loss: str, target, dtype, name: str) -> None:
    """0/1 labels or probabilities: every value in [0, 1]."""
    lo, hi = bounds(target)
    if not (0 <= lo and hi <= 1):  # also False for NaN
        raise DataError(f"{loss} needs {name} in [0, 1] (0/1 labels or probabilities), got "
                        f"values in [{lo:g}, {hi:g}]")


def _non_negative_values(loss: str, target, dtype, name: str) -> None:
    """Counts or rates: every value >= 0 (a deviance's log(t) needs it)."""
    lo = float(target.min())
    if lo < 0:
        raise DataError(f"{loss} targets must be >= 0 (counts or rates), got a minimum of "
                        f"{lo:g} in {name}; use a regression loss such as mse for targets "
                        "that can be negative")


def _class_values(loss: str, target, dtype, name: str = "targets") -> None:
    """Class probabilities (n, k): in [0, 1], each row summing to 1 within ``sqrt(eps)`` of
    ``dtype`` (scikit-learn's ``log_loss`` tolerance). A row that does not is no
    distribution: an all-zero row would score loss 0 and teach nothing. Labels (1-D) are
    checked by ``class_labels_or_probs`` / ``devnet.task``."""
    if target.ndim != 2:
        return
    lo, hi = bounds(target)
    if not (0 <= lo and hi <= 1):  # also False for NaN
        raise DataError(f"{loss} class probabilities in {name} must be finite and in [0, 1], "
                        f"got values in [{lo:g}, {hi:g}]")
    xp = get_xp(target)
    sums = target.sum(axis=1, dtype=xp.float64)
    tol = float(np.sqrt(np.finfo(dtype).eps))
    bad = xp.abs(sums - 1) > tol
    n_bad = int(bad.sum())
    if n_bad:
        i = int(xp.argmax(bad))
        raise DataError(f"{loss} class probabilities in {name} must sum to 1 in every row "
                        f"(within {tol:.1e}), got {n_bad} row(s) that do not, first row {i} "
                        f"summing to {float(sums[i]):g}; normalise the rows "
                        "(y / y.sum(axis=1, keepdims=True)) or pass integer class labels")


class TargetKind(NamedTuple):
    """What a loss asks of its targets."""

    values: object  #: the value rule: (loss name, target, dtype, argument name) -> None
    bounded: bool  #: the value rule refuses NaN and Inf itself (no separate finiteness check)


TARGETS = {
    "real": TargetKind(_any_values, False),
    "unit": TargetKind(_unit_values, True),
    "non_negative": TargetKind(_non_negative_values, False),
    "classes": TargetKind(_class_values, True),
}
