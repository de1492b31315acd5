"""Task metrics computed on the device, read back once per evaluation.

Each metric checks shapes first (O(1), no data read): a mismatch is a DataError naming both
shapes, never a broadcast into a wrong number or a raw NumPy error; an empty batch has no
score and is refused rather than scored NaN (or, for r2, a perfect 1).
"""

from __future__ import annotations

from devnet.errors import ConfigError, DataError
from devnet.kernels.reference import get_xp

LINKS = ("exp", "identity", "sigmoid", "softmax")  # the losses' links (``Loss.link``)


def _arrays(name: str, pred, target):
    """(pred (n, k), target) as arrays of pred's array module; a DataError if pred is not
    2-D or is empty, or target has not one row per sample."""
    xp = get_xp(pred)
    try:
        pred, target = xp.asarray(pred), xp.asarray(target)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: pred and target must be numeric arrays: {exc}") from None
    for arg, a in (("pred", pred), ("target", target)):
        if a.dtype.kind not in "biuf":
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
    return pred, target


def _like_pred(name: str, pred, target):
    """``target`` shaped (n, k) like pred: the same shape, or (n,) for one output."""
    if target.shape == pred.shape or target.shape == (pred.shape[0],) and pred.shape[1] == 1:
        return target.reshape(pred.shape)
    raise DataError(f"{name}: target must have the shape of pred {tuple(pred.shape)} (or "
                    f"({pred.shape[0]},) for one output), got {tuple(target.shape)}")


def accuracy(pred, target, link: str) -> float:
    """Share of rows classified right. pred: (n, k) raw outputs; target: labels or one-hot."""
    if link not in LINKS:
        raise ConfigError(f"unknown link {link!r}; valid links: {', '.join(LINKS)}")
    pred, target = _arrays("accuracy", pred, target)
    if link == "sigmoid":  # multi-label: every output must match, threshold at logit 0
        hit = ((pred > 0) == (_like_pred("accuracy", pred, target) > 0.5)).all(axis=1)
    else:
        if target.ndim == 2 and target.shape[1] == 1 and pred.shape[1] > 1:
            target = target.reshape(-1)  # labels as a column
        if not (target.ndim == 1 or target.shape == pred.shape):
            raise DataError(f"accuracy: target must be labels ({pred.shape[0]},) or one-hot "
                            f"{tuple(pred.shape)}, got {tuple(target.shape)}")
        labels = target if target.ndim == 1 else target.argmax(axis=1)
        hit = pred.argmax(axis=1) == labels
    return float(hit.mean())


def r2(pred, target) -> float:
    """Coefficient of determination, averaged uniformly over outputs."""
    pred, target = _arrays("r2", pred, target)
    target = _like_pred("r2", pred, target)
    ss_res = ((target - pred) ** 2).sum(axis=0)
    ss_tot = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    xp = get_xp(pred)
    # a constant target scores 1 when matched exactly, else 0 (as scikit-learn)
    score = xp.where(ss_tot > 0, 1 - ss_res / xp.where(ss_tot > 0, ss_tot, 1),
                     xp.where(ss_res == 0, 1.0, 0.0))
    return float(score.mean())


def mae(pred, target) -> float:
    """Mean absolute error over all elements."""
    pred, target = _arrays("mae", pred, target)
    return float(abs(pred - _like_pred("mae", pred, target)).mean())
