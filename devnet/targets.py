"""What targets must be: class labels 0..K-1, and the value rule of each loss's target kind.

One home for these rules, whoever asks: fit's data edge (``devnet.validation.check_y``),
``devnet.task`` and the CLI on the host, and the losses' checked door on a batch wherever it
lives (NumPy or CuPy). Each raises a DataError naming the argument and what was expected.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from devnet.errors import DataError
from devnet.kernels.reference import get_xp

# --- class labels on the host: integers 0..K-1 (fit, the CLI, task inference) -------------

ENCODE_HINT = "encode them as 0..K-1 (e.g. np.unique(y, return_inverse=True)[1])"


def numeric(y, name: str) -> np.ndarray:
    """``y`` as a NumPy array of numbers (int, float or bool), or a DataError naming ``name``
    (text labels get the hint to encode them)."""
    arr = np.asarray(y)
    if arr.dtype.kind in "USO":
        example = arr.reshape(-1)[:1].tolist()
        shown = f" (e.g. {example[0]!r})" if example else ""
        kind = "object" if arr.dtype.kind == "O" else "string"
        raise DataError(f"{name} holds {kind} values{shown}, not numbers; for class names "
                        f"{ENCODE_HINT}")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name} has dtype {arr.dtype}; expected numbers (int, float or bool)")
    return arr


def whole(arr: np.ndarray) -> bool:
    """Every value a whole number (ints, bools, or finite floats with no fraction)."""
    if arr.dtype.kind in "biu":
        return True
    with np.errstate(invalid="ignore"):
        return bool(np.isfinite(arr).all() and (arr == np.round(arr)).all())


def value_list(arr: np.ndarray, limit: int = 8, what: str = "values") -> str:
    """Up to ``limit`` values of ``arr``, for a message."""
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                      for v in arr[:limit].tolist())
    return shown + (f", ... ({len(arr)} {what})" if len(arr) > limit else "")


def check_binary_labels(y, name: str = "y") -> None:
    """A DataError unless ``y`` holds class labels 0 and 1 only: what a model with one output
    is trained on (binary_cross_entropy)."""
    labels = label_column(numeric(y, name), name)
    bad = labels[(labels != 0) & (labels != 1)]
    if bad.size:
        values = np.unique(labels)
        if len(values) <= 2:
            hint = f"{ENCODE_HINT}, or build the model with one output per class"
        else:
            hint = (f"for {len(values)} classes build the model with n_out={len(values)} "
                    f"outputs (cross_entropy) and {ENCODE_HINT}; if these are numbers to "
                    "predict, pass task='regression'")
        raise DataError(f"a model with one output is trained with binary_cross_entropy, "
                        f"which needs class labels 0 and 1 in {name}; got labels "
                        f"{value_list(values)}: {hint}")


def label_column(arr: np.ndarray, name: str) -> np.ndarray:
    """1-D whole-number labels (a (n, 1) column is flattened), or a DataError."""
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise DataError(f"class labels {name} must be 1-D (one integer per sample), got shape "
                        f"{arr.shape}")
    if not whole(arr):
        with np.errstate(invalid="ignore"):
            bad = arr[~(np.isfinite(arr) & (arr == np.round(arr)))]
        raise DataError(f"class labels in {name} must be integers 0..K-1, got non-integer "
                        f"values such as {value_list(bad)}; for regression pass "
                        "task='regression' (or a regression loss such as 'mse')")
    return arr


def check_class_labels(y, n_out: int | None = None, name: str = "y") -> int:
    """Check that ``y`` holds integer class labels 0..K-1; return K (the class count).

    ``n_out``: the outputs of the model the caller was given (labels must be < n_out; not all
    classes need to occur). ``None``: the caller will build the model from the labels, so every
    label 0..K-1 must occur (never more outputs than distinct labels).
    """
    arr = label_column(numeric(y, name), name)
    if arr.size == 0:
        raise DataError(f"{name} is empty; expected one class label per sample")
    values = np.unique(arr)
    lo, hi = values[0], values[-1]
    if lo < 0:
        neg = values[values < 0]
        where = "" if n_out is None else f" (here [0, {n_out}))"
        raise DataError(f"class labels in {name} must be integers 0..K-1{where}, got negative "
                        f"label(s) {value_list(neg)} (labels seen: {value_list(values)}): "
                        f"{ENCODE_HINT}")
    if n_out is not None:
        if hi >= n_out:
            big = values[values >= n_out]
            raise DataError(f"class labels in {name} must be in [0, {n_out}) for a model with "
                            f"n_out={n_out} outputs, got label(s) {value_list(big)} (labels seen "
                            f"in [{lo:g}, {hi:g}]): build the model with at least "
                            f"{int(hi) + 1} outputs if these are classes, or {ENCODE_HINT}")
        return int(n_out)
    k = int(hi) + 1
    if len(values) != k:
        missing = np.setdiff1d(np.arange(min(k, len(values) + 8)), values)
        raise DataError(f"class labels in {name} must be integers 0..K-1 with every class "
                        f"present: got {len(values)} distinct labels ({value_list(values)}) but "
                        f"the largest is {hi:g}, so {k} outputs would be needed (missing e.g. "
                        f"{value_list(missing)}): {ENCODE_HINT}")
    return k


# --- targets, by the kind a loss declares (``Loss.target``); NumPy or CuPy ------------------

def cast(a, dtype):
    """``a`` as ``dtype``; values beyond its range become inf, which the caller reports."""
    with np.errstate(over="ignore", invalid="ignore"):
        return a.astype(dtype, copy=False)


def bounds(a) -> tuple[float, float]:
    """(min, max) of a non-empty array as Python floats: one host read (sync) for both."""
    lo, hi = get_xp(a).stack((a.min(), a.max())).tolist()
    return float(lo), float(hi)


def _label_list(labels) -> str:
    """Up to 5 distinct values of ``labels`` (a device array), for a message."""
    values = np.unique(np.asarray(labels.get() if hasattr(labels, "get") else labels))
    return value_list(values, 5, "distinct")


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
                        f"{_label_list(bad)}")
    labels = target.astype(xp.int64, copy=False)  # in range now: no overflow
    if target.dtype.kind == "f":
        frac = labels != target
        if bool(frac.any()):
            raise DataError(f"cross_entropy labels must be whole numbers (class indices "
                            f"0..{k - 1}), got {_label_list(target[frac])}")
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
    ``dtype`` (scikit-learn's ``log_loss`` tolerance; an all-zero row would score loss 0 and
    teach nothing). Labels (1-D) are checked by ``class_labels_or_probs``."""
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
