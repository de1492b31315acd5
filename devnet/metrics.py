"""Task metrics computed on the device, read back once per evaluation.

Each metric checks shapes first (O(1), no data read): a mismatch is a DataError naming both
shapes, never a broadcast into a wrong number or a raw NumPy error; an empty batch has no
score and is refused rather than scored NaN (or, for r2, a perfect 1).

Metrics follow scikit-learn's definitions, ``sample_weight`` included (``accuracy_score``,
``r2_score``, ``mean_absolute_error``), and are computed in float64: a float32 target of 1e20
is finite, its square is not. A prediction that is NaN or Inf scores NaN, never a number
(the argmax of a NaN row would otherwise count as a class).
"""

from __future__ import annotations

from devnet.errors import DataError, lookup
from devnet.kernels.reference import get_xp

LINKS = ("exp", "identity", "sigmoid", "softmax")  # the losses' links (``Loss.link``)


def _arrays(name: str, pred, target, sample_weight=None):
    """(pred (n, k), target, weights (n,) or None) as float64 arrays of pred's array module;
    a DataError if pred is not 2-D or is empty, or target / weights have not one row per
    sample."""
    xp = get_xp(pred)
    try:
        pred, target = xp.asarray(pred), xp.asarray(target)
        w = None if sample_weight is None else xp.asarray(sample_weight)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: pred, target and sample_weight must be numeric arrays: "
                        f"{exc}") from None
    for arg, a in (("pred", pred), ("target", target), ("sample_weight", w)):
        if a is not None and a.dtype.kind not in "biuf":
            raise DataError(f"{name}: {arg} must hold real numbers, got dtype {a.dtype}")
    if pred.ndim != 2:
        raise DataError(f"{name}: pred must be 2-D (n_samples, n_outputs), got shape "
                        f"{tuple(pred.shape)}")
    if pred.shape[0] == 0:
        raise DataError(f"{name}: no samples (pred has shape {tuple(pred.shape)}); a metric "
                        "needs at least one")
    if target.ndim == 0 or target.shape[0] != pred.shape[0]:
        raise DataError(f"{name}: pred and target have different numbers of samples: pred "
                        f"{tuple(pred.shape)}, target {tuple(target.shape)}")
    if w is not None and w.shape != (pred.shape[0],):
        raise DataError(f"{name}: sample_weight must have shape ({pred.shape[0]},), one "
                        f"weight per sample, got {tuple(w.shape)}")
    f64 = xp.float64
    return (pred.astype(f64, copy=False), target.astype(f64, copy=False),
            None if w is None else w.astype(f64, copy=False))


def _like_pred(name: str, pred, target):
    """``target`` shaped (n, k) like pred: the same shape, or (n,) for one output."""
    if target.shape == pred.shape or target.shape == (pred.shape[0],) and pred.shape[1] == 1:
        return target.reshape(pred.shape)
    raise DataError(f"{name}: target must have the shape of pred {tuple(pred.shape)} (or "
                    f"({pred.shape[0]},) for one output), got {tuple(target.shape)}")


def _mean(values, w):
    """Mean of ``values`` over axis 0, weighted by ``w`` (n,) when given (``np.average``)."""
    if w is None:
        return values.mean(axis=0)
    w = w.reshape((-1,) + (1,) * (values.ndim - 1))
    return (values * w).sum(axis=0) / w.sum()


def _score(value, pred) -> float:
    """``value`` as a float; NaN when any prediction is NaN or Inf."""
    xp = get_xp(pred)
    return float(xp.where(xp.isfinite(pred).all(), value, xp.nan))


def accuracy(pred, target, link: str, sample_weight=None) -> float:
    """Share of rows classified right (weighted by sample_weight (n,) if given).

    pred: (n, k) raw outputs; target: labels (n,) or one-hot (n, k); for the sigmoid link
    (n, k) 0/1 targets, every output of a row must match.
    """
    lookup(dict.fromkeys(LINKS), link, "link")
    pred, target, w = _arrays("accuracy", pred, target, sample_weight)
    if link == "sigmoid":  # multi-label: every output must match, threshold at logit 0
        hit = ((pred > 0) == (_like_pred("accuracy", pred, target) > 0.5)).all(axis=1)
    else:
        # a softmax over one column is 1 for every row: the argmax would always say class 0
        if pred.shape[1] < 2:
            raise DataError(f"accuracy with the {link} link needs one prediction column per "
                            f"class (at least 2), got {pred.shape[1]}; for one output "
                            "scored by its sign use the sigmoid link (binary_cross_entropy)")
        if target.ndim == 2 and target.shape[1] == 1 and pred.shape[1] > 1:
            target = target.reshape(-1)  # labels as a column
        if not (target.ndim == 1 or target.shape == pred.shape):
            raise DataError(f"accuracy: target must be labels ({pred.shape[0]},) or one-hot "
                            f"{tuple(pred.shape)}, got {tuple(target.shape)}")
        labels = target if target.ndim == 1 else target.argmax(axis=1)
        hit = pred.argmax(axis=1) == labels
    return _score(_mean(hit.astype(pred.dtype), w), pred)


def r2(pred, target, sample_weight=None) -> float:
    """Coefficient of determination, averaged uniformly over outputs (``r2_score``)."""
    pred, target, w = _arrays("r2", pred, target, sample_weight)
    target = _like_pred("r2", pred, target)
    xp = get_xp(pred)
    ss_res = _mean((target - pred) ** 2, w)
    ss_tot = _mean((target - _mean(target, w)) ** 2, w)
    # a constant target scores 1 when matched exactly, else 0 (as scikit-learn)
    score = xp.where(ss_tot > 0, 1 - ss_res / xp.where(ss_tot > 0, ss_tot, 1),
                     xp.where(ss_res == 0, 1.0, 0.0))
    return _score(score.mean(), pred)


def mae(pred, target, sample_weight=None) -> float:
    """Mean absolute error over all elements (``mean_absolute_error``, uniform over outputs)."""
    pred, target, w = _arrays("mae", pred, target, sample_weight)
    return _score(_mean(abs(pred - _like_pred("mae", pred, target)), w).mean(), pred)
