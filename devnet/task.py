"""Which task targets describe (classification or regression) and the loss that fits it.

One rule for ``dn.fit(loss="auto")`` and the ``devnet`` command: ``auto`` picks classification
only when ``y`` looks like class labels -- 1-D, whole numbers, between 2 and ``MAX_CLASSES``
distinct values, each occurring at least twice. Whole-number targets with many distinct values
(prices, counts) are regression; few whole-number values of which some occur once are
ambiguous and refused with a hint to pass ``task=...``. A model never gets more outputs than
the labels need: class labels must be 0..K-1.
"""

from __future__ import annotations

import numpy as np

from devnet.errors import ConfigError, DataError

TASKS = ("auto", "classification", "regression")

# The most distinct values "auto" reads as classes; more are regression targets (a softmax
# over 100 000 prices would allocate a useless, huge output layer).
MAX_CLASSES = 256

_ENCODE = "encode them as 0..K-1 (e.g. np.unique(y, return_inverse=True)[1])"


def check_task(task) -> str:
    """``task`` if it is one of ``TASKS``, else a ConfigError listing them."""
    if not isinstance(task, str) or task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return task


def _numeric(y, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.dtype.kind in "USO":
        example = arr.reshape(-1)[:1].tolist()
        shown = f" (e.g. {example[0]!r})" if example else ""
        raise DataError(f"{name} holds {_kind(arr)} values{shown}, not numbers; for class "
                        f"names {_ENCODE}")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name} has dtype {arr.dtype}; expected numbers (int, float or bool)")
    return arr


def _kind(arr: np.ndarray) -> str:
    return "object" if arr.dtype.kind == "O" else "string"


def _whole(arr: np.ndarray) -> bool:
    """Every value a whole number (ints, bools, or finite floats with no fraction)."""
    if arr.dtype.kind in "biu":
        return True
    with np.errstate(invalid="ignore"):
        return bool(np.isfinite(arr).all() and (arr == np.round(arr)).all())


def _values(arr: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                      for v in arr[:limit].tolist())
    return shown + (f", ... ({len(arr)} values)" if len(arr) > limit else "")


def infer_task(y, task: str = "auto", name: str = "y") -> str:
    """"classification" or "regression" for targets ``y`` (any shape), by the rule above.

    An explicit ``task`` is returned as is. ``auto`` on few whole-number values of which some
    occur only once raises a DataError asking for ``task=``.
    """
    task = check_task(task)
    if task != "auto":
        return task
    arr = _numeric(y, name)
    if arr.ndim != 1 or arr.size == 0 or not _whole(arr):
        return "regression"
    values, counts = np.unique(arr, return_counts=True)
    if len(values) > MAX_CLASSES:
        return "regression"
    if len(values) >= 2 and counts.min() >= 2:
        return "classification"
    if len(values) == 1:
        why = f"one distinct value ({_values(values)})"
    else:
        once = values[counts == 1]
        why = (f"{len(values)} distinct whole-number values, and {_values(once)} "
               f"occur{'s' if len(once) == 1 else ''} only once")
    raise DataError(f"cannot tell whether {name} holds class labels or regression targets: "
                    f"{why}. Pass task='classification' or task='regression' (loss='auto' "
                    "picks classification only for 2.."
                    f"{MAX_CLASSES} whole-number values that each occur at least twice)")


def default_loss(task: str, y, n_out: int | None) -> str:
    """The loss ``loss="auto"`` uses for ``task`` ("classification" / "regression").

    Classification: "cross_entropy" for a model with ``n_out`` > 1 outputs (or ``None``: the
    caller builds the model with one output per class), "binary_cross_entropy" for one output
    (labels must then be 0/1); regression: "mse". Labels are checked (``check_class_labels``).
    """
    task = check_task(task)
    if task == "auto":
        task = infer_task(y)
    if task == "regression":
        return "mse"
    if n_out == 1:
        arr = _numeric(y, "y")
        labels = _labels(arr, "y")
        bad = labels[(labels != 0) & (labels != 1)]
        if bad.size:
            values = np.unique(labels)
            if len(values) <= 2:
                hint = f"{_ENCODE}, or build the model with one output per class"
            else:
                hint = (f"for {len(values)} classes build the model with n_out={len(values)} "
                        f"outputs (cross_entropy) and {_ENCODE}; if these are numbers to "
                        "predict, pass task='regression'")
            raise DataError(f"a model with one output is trained with binary_cross_entropy, "
                            f"which needs class labels 0 and 1 in y; got labels "
                            f"{_values(values)}: {hint}")
        return "binary_cross_entropy"
    check_class_labels(y, n_out)
    return "cross_entropy"


def _labels(arr: np.ndarray, name: str) -> np.ndarray:
    """1-D whole-number labels (a (n, 1) column is flattened), or a DataError."""
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise DataError(f"class labels {name} must be 1-D (one integer per sample), got shape "
                        f"{arr.shape}")
    if not _whole(arr):
        with np.errstate(invalid="ignore"):
            bad = arr[~(np.isfinite(arr) & (arr == np.round(arr)))]
        raise DataError(f"class labels in {name} must be integers 0..K-1, got non-integer "
                        f"values such as {_values(bad)}; for regression pass "
                        "task='regression' (or a regression loss such as 'mse')")
    return arr


def check_class_labels(y, n_out: int | None = None, name: str = "y") -> int:
    """Check that ``y`` holds integer class labels 0..K-1; return K (the class count).

    ``n_out``: the outputs of the model the caller was given (labels must be < n_out; not all
    classes need to occur). ``None``: the caller will build the model from the labels, so every
    label 0..K-1 must occur (never more outputs than distinct labels).
    """
    arr = _labels(_numeric(y, name), name)
    if arr.size == 0:
        raise DataError(f"{name} is empty; expected one class label per sample")
    values = np.unique(arr)
    lo, hi = values[0], values[-1]
    if lo < 0:
        neg = values[values < 0]
        where = "" if n_out is None else f" (here [0, {n_out}))"
        raise DataError(f"class labels in {name} must be integers 0..K-1{where}, got negative "
                        f"label(s) {_values(neg)} (labels seen: {_values(values)}): {_ENCODE}")
    if n_out is not None:
        if hi >= n_out:
            big = values[values >= n_out]
            raise DataError(f"class labels in {name} must be in [0, {n_out}) for a model with "
                            f"n_out={n_out} outputs, got label(s) {_values(big)} (labels seen "
                            f"in [{lo:g}, {hi:g}]): build the model with at least "
                            f"{int(hi) + 1} outputs if these are classes, or {_ENCODE}")
        return int(n_out)
    k = int(hi) + 1
    if len(values) != k:
        missing = np.setdiff1d(np.arange(min(k, len(values) + 8)), values)
        raise DataError(f"class labels in {name} must be integers 0..K-1 with every class "
                        f"present: got {len(values)} distinct labels ({_values(values)}) but "
                        f"the largest is {hi:g}, so {k} outputs would be needed (missing e.g. "
                        f"{_values(missing)}): {_ENCODE}")
    return k
