"""Task metrics computed on the device, read back once per evaluation."""

from __future__ import annotations

from devnet.kernels.reference import get_xp


def accuracy(pred, target, link: str) -> float:
    """Share of rows classified right. pred: (n, k) raw outputs; target: labels or one-hot."""
    if link == "sigmoid":  # multi-label: every output must match, threshold at logit 0
        hit = ((pred > 0) == (target.reshape(pred.shape) > 0.5)).all(axis=1)
    else:
        labels = target if target.ndim == 1 else target.argmax(axis=1)
        hit = pred.argmax(axis=1) == labels
    return float(hit.mean())


def r2(pred, target) -> float:
    """Coefficient of determination, averaged uniformly over outputs."""
    target = target.reshape(pred.shape)
    ss_res = ((target - pred) ** 2).sum(axis=0)
    ss_tot = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    xp = get_xp(pred)
    # a constant target scores 1 when matched exactly, else 0 (as scikit-learn)
    score = xp.where(ss_tot > 0, 1 - ss_res / xp.where(ss_tot > 0, ss_tot, 1),
                     xp.where(ss_res == 0, 1.0, 0.0))
    return float(score.mean())


def mae(pred, target) -> float:
    """Mean absolute error over all elements."""
    return float(abs(pred - target.reshape(pred.shape)).mean())
