"""scikit-learn's reported log-loss: probabilities clipped to ``[eps, 1 - eps]``.

scikit-learn's classifiers report (``loss_curve_``, ``loss_``, ``best_loss_``, the stopping
rule, L-BFGS's objective) the log-loss of the probabilities clipped to ``[eps, 1 - eps]``,
``eps = np.finfo(dtype).eps``, while their gradient comes from the unclipped softmax /
logistic. devnet's loss kernels give the exact loss of the logits; the two differ once an
output saturates (scikit-learn's term stops at ``-log(eps)``, 36.04 in float64, and its
``log(1 - p)`` keeps only the digits of ``1 - p`` that the rounded p has).

So the classifiers' Step keeps the kernels' gradient but not their value: it records each
step's logits and targets and carries only the L2 term; the epoch's loss is computed once at
its end with scikit-learn's arithmetic, each batch weighed as its ``np.average`` weighs it.
"""

from __future__ import annotations

import functools

import numpy as np

from devnet.train.step import Step

# exp(-z) is capped here: any p below eps is clipped to eps anyway (1 / (1 + e**64) < eps in
# float32 and float64), and exp stays finite (no overflow warning)
_EXP_CAP = 64.0


@functools.cache
def _limits(dtype) -> tuple:
    """``(eps, 1 - eps, -log(1 - eps), -log(eps))`` of ``dtype``, as its scalars: the clip of
    a probability, and of a ``-log`` term (the log is monotone)."""
    eps = np.finfo(dtype).eps  # a scalar of the dtype: float32 stays float32
    return eps, 1 - eps, -np.log1p(-eps), -np.log(eps)


# Clips are maximum then minimum (NaN stays NaN, as np.clip) without np.clip's Python layers.

def _logistic_losses(xp, z, t, work):
    # binary_log_loss in scikit-learn's arithmetic: p = expit(z) = 1 / (1 + exp(-z)), clipped,
    # then -(t log p + (1 - t) log(1 - p)), t 0/1; near p = 1 its log(1 - p) has only the
    # digits of 1 - p that the rounded p keeps (up to 1e-3 off the exact loss at z = 30)
    eps, top, _, _ = _limits(z.dtype)
    p = xp.subtract(0, z, out=work)
    xp.minimum(p, _EXP_CAP, out=p)
    xp.exp(p, out=p)
    p += 1
    xp.divide(1, p, out=p)
    xp.minimum(xp.maximum(p, eps, out=p), top, out=p)
    p = xp.log(xp.where(t != 0, p, 1 - p), out=p)
    return xp.multiply(p.sum(axis=0), -1)


def _softmax_losses(xp, z, t, work):
    # log_loss: -sum_k t_k log clip(p_k), p = softmax(z), t one-hot: -log clip(p_c) =
    # clip(logsumexp(z) - z_c) (the log is monotone; scikit-learn's p-space arithmetic differs
    # by rounding, ~1e-16). As logsumexp(z - m) - (z_c - m), m the max, so that large logits
    # keep their digits
    _, _, lo, hi = _limits(z.dtype)
    m = z.max(axis=0)
    neg = xp.multiply(t, z, out=work).sum(axis=0)  # z_c: the other terms add 0
    neg -= m
    e = xp.subtract(z, m, out=work)
    neg -= xp.log(xp.exp(e, out=e).sum(axis=0))  # -loss
    return xp.minimum(xp.maximum(xp.multiply(neg, -1, out=neg), lo, out=neg), hi, out=neg)


#: out_activation_ -> its per-sample losses from (k, n) logits and targets
LINKS = {"logistic": _logistic_losses, "softmax": _softmax_losses}


def sample_losses(xp, link: str, z, t, work=None):
    """scikit-learn's clipped log-loss of each sample, summed over the outputs.

    z: (k, n) logits, one column per sample (the reductions over k then run along contiguous
    rows: 20x faster than over rows of k); t: (k, n) targets, 0/1 (one-hot columns for
    softmax), both of z's dtype; work: (k, n) scratch of that dtype, or None. Returns (n,) in
    z's dtype.
    """
    return LINKS[link](xp, z, t, xp.empty_like(z) if work is None else work)


def batch_factors(sample_weight, order, batch_size: int, weighs) -> np.ndarray:
    """Each recorded row's factor in scikit-learn's epoch loss ``sum_b n_b loss_b``.

    A batch's loss is ``np.average(..., weights=w)``: row i of batch b counts ``n_b w_i /
    sum_b(w)``. sample_weight: (n,) host weights; order: the epoch's sample order; weighs: per
    batch, whether it ran (``_batch_has_weight``). Returns (rows of the batches that ran,)
    float64.
    """
    w = np.asarray(sample_weight, dtype=np.float64)[order]
    starts = np.arange(0, w.size, batch_size)
    sizes = np.diff(np.append(starts, w.size))
    totals = np.add.reduceat(w, starts)
    per_batch = np.where(weighs, sizes / np.where(weighs, totals, 1.0), 0.0)
    return (w * np.repeat(per_batch, sizes))[np.repeat(weighs, sizes)]


class ClippedLoss:
    """The logits and targets of the steps since ``start()``, and their scikit-learn loss.

    backend: the model's; link: ``"logistic"`` or ``"softmax"``; capacity: rows per epoch;
    k: outputs. Two (k, capacity) buffers of ``dtype`` on the device, filled in step order,
    and a third to compute in.
    """

    def __init__(self, backend, link: str, capacity: int, k: int, dtype):
        self.backend, self.link = backend, link
        with backend.scope():
            # zeros: a sample never written (a skipped batch) weighs 0 and must not be NaN
            self.z = backend.zeros((k, capacity), dtype)
            self.t = backend.zeros((k, capacity), dtype)
            self.work = backend.empty((k, capacity), dtype)
        # the rows recorded: a host array, so a step plan's ``record`` op advances it too
        self.at = np.zeros(1, np.int64)

    @property
    def count(self) -> int:
        return int(self.at[0])

    @count.setter
    def count(self, value: int) -> None:
        self.at[0] = value

    @classmethod
    def make(cls, model, link: str, capacity: int):
        """One for ``model`` when ``link`` is a clipped log-loss's, else None (regression)."""
        if link not in LINKS:
            return None
        return cls(model.backend, link, capacity, model.n_out, model.dtype)

    def start(self) -> None:
        self.count = 0

    def record(self, pred, target) -> None:
        """Copy a step's logits (n, k) and targets (n, k) or (n,) after the last ones."""
        lo, hi = self.count, self.count + pred.shape[0]
        self.z[:, lo:hi] = pred.T
        self.t[:, lo:hi] = target.reshape(pred.shape).T
        self.count = hi

    def total(self, factors=None, start=0.0):
        """``start + sum_i f_i loss_i`` over the recorded rows (a float64 device scalar).

        factors: (count,) float64 (``batch_factors``), or None for 1 each; start: a number or
        a device scalar of the model's device (the Step's ``running``).
        """
        xp = self.backend.xp
        with self.backend.scope():
            n = self.count
            losses = sample_losses(xp, self.link, self.z[:, :n], self.t[:, :n],
                                   self.work[:, :n])
            if factors is None:
                return start + losses.sum(dtype=np.float64)
            f = self.backend.asarray(factors, np.float64)
            return start + xp.dot(losses.astype(np.float64, copy=False), f)


class RecordingStep(Step):
    """``Step`` that hands each batch's logits and targets to ``recorder`` (a ``ClippedLoss``,
    or None: then it is Step) and, recording, hands on a loss value of 0, so ``running`` sums
    only the hooks' L2 terms. ``plan_ops`` declares the same (``record``, ``zero_value``) for
    the compiled epoch."""

    def plan_ops(self, stage: str, ctx) -> list:
        from devnet.train.plan import Op

        rec = self.recorder
        if rec is None or stage != "output_grad":
            return []
        return [Op("record", (ctx["pred"], ctx["target"], ctx.buffer("z", rec.z),
                              ctx.buffer("t", rec.t), ctx.buffer("at", rec.at))),
                Op("zero_value", ())]

    def __init__(self, model, loss, optimizer=None, hooks=(), recorder=None):
        super().__init__(model, loss, optimizer, hooks=hooks)
        self.recorder = recorder
        self._zero = None

    def output_grad(self, pred, batch, collective: bool = True):
        if self.recorder is None:
            return super().output_grad(pred, batch, collective)
        self.recorder.record(pred, batch.y)
        value, grad = super().output_grad(pred, batch, collective)
        if self._zero is None:  # a 0 of the kind the loss kernels return: a number, or a
            # device scalar of the model's dtype (which the L2 kernel reads on the device)
            self._zero = 0.0 if isinstance(value, (float, int)) else \
                self.model.backend.zeros(value.shape, value.dtype)
        return self._zero, grad
