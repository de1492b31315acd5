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

from devnet.errors import DataError, lookup
from devnet.targets import check_binary_labels, check_class_labels, numeric, value_list, whole

# check_class_labels is part of this module's API; the label rules live in devnet.targets
__all__ = ["check_class_labels", "check_task", "default_loss", "infer_task"]

TASKS = ("auto", "classification", "regression")

# The most distinct values "auto" reads as classes; more are regression targets (a softmax
# over 100 000 prices would allocate a useless, huge output layer).
MAX_CLASSES = 256


def check_task(task) -> str:
    """``task`` if it is one of ``TASKS``, else a ConfigError listing them."""
    return lookup({t: t for t in TASKS}, task, "task")


def infer_task(y, task: str = "auto", name: str = "y") -> str:
    """"classification" or "regression" for targets ``y`` (any shape), by the rule above.

    An explicit ``task`` is returned as is. ``auto`` on few whole-number values of which some
    occur only once raises a DataError asking for ``task=``.
    """
    task = check_task(task)
    if task != "auto":
        return task
    arr = numeric(y, name)
    if arr.ndim != 1 or arr.size == 0 or not whole(arr):
        return "regression"
    values, counts = np.unique(arr, return_counts=True)
    if len(values) > MAX_CLASSES:
        return "regression"
    if len(values) >= 2 and counts.min() >= 2:
        return "classification"
    if len(values) == 1:
        why = f"one distinct value ({value_list(values)})"
    else:
        once = values[counts == 1]
        why = (f"{len(values)} distinct whole-number values, and {value_list(once)} "
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
        check_binary_labels(y)
        return "binary_cross_entropy"
    check_class_labels(y, n_out)
    return "cross_entropy"
