"""The estimators' optimizers (devnet's fused SGD and Adam steps with scikit-learn's formulas)
and their objective (a ``devnet.train.Step`` hook: scikit-learn's loss scaling and L2 term).

``dn.optim.Adam`` follows PyTorch, ``lr * m_hat / (sqrt(v_hat) + eps)``; scikit-learn folds
the bias corrections into the step size, ``lr * sqrt(1 - b2**t) / (1 - b1**t) * m /
(sqrt(v) + eps)``, which differs by how much eps weighs (loss curves apart by up to 2.8%).
``SklearnAdam`` runs the same fused ``adam_step`` kernel with that step size and the
corrections set to 1. Both optimizers expose ``learning_rate`` as scikit-learn's do.
"""

from __future__ import annotations

import math

import numpy as np

from devnet import optim
from devnet.train.step import StepHook


class SklearnSGD(optim.SGD):
    """SGD (heavy-ball or Nesterov momentum); ``learning_rate``: the current rate."""

    @property
    def learning_rate(self) -> float:
        return float(self.base_lr)

    def set_learning_rate(self, lr: float) -> None:
        """Change the rate the way scikit-learn does.

        scikit-learn's velocity holds ``lr * gradient`` sums while devnet's momentum buffer
        holds plain gradient sums, scaled by the current rate at each step: rescaling the
        buffer by ``old / new`` keeps the velocity already built up, as scikit-learn's does.
        """
        buf = self.state.get("momentum_buffer")
        if buf is not None and lr != self.base_lr:
            buf *= self.base_lr / lr
        self.base_lr = lr


class SklearnAdam(optim.Adam):
    """Adam with scikit-learn's step: ``lr_t = lr sqrt(1 - b2**t) / (1 - b1**t)``, then
    ``p -= lr_t m / (sqrt(v) + eps)`` (``adam_step`` with both bias corrections 1)."""

    def _step_size(self, t: int) -> float:
        b1, b2 = self.betas
        # the same expression, in the same order, as scikit-learn's AdamOptimizer
        return self.base_lr * math.sqrt(1 - b2**t) / (1 - b1**t)

    @property
    def learning_rate(self) -> float:
        """The step size of the last update (``learning_rate_init`` before the first)."""
        return self._step_size(self.t) if self.t > 0 else float(self.base_lr)

    def _step_scalars(self, t: int) -> tuple:
        return (self._step_size(t), 1.0, 1.0)  # lr, bc1, bc2 of step t


def make(solver: str, model, est, state: dict | None = None):
    """The optimizer for ``est``'s stochastic ``solver`` over ``model``'s flat buffers, with
    the saved moments, step count and current rate of ``state`` (a ``state_dict()``) if given.
    """
    if solver == "sgd":
        nesterov = bool(est.nesterovs_momentum and est.momentum > 0)
        opt = SklearnSGD(model, lr=est.learning_rate_init, momentum=est.momentum,
                         nesterov=nesterov)
    else:
        opt = SklearnAdam(model, lr=est.learning_rate_init, betas=(est.beta_1, est.beta_2),
                          eps=est.epsilon)
    if state is not None:
        opt.load_state_dict(state)
        if isinstance(state.get("lr"), (int, float)):
            opt.base_lr = float(state["lr"])
    return opt


class SklearnObjective(StepHook):
    """The Step hook that turns devnet's loss into scikit-learn's.

    ``value_scale`` / ``grad_scale``: the task's factors (``_task()``) on the loss value and on
    dL/dpred; ``alpha``: scikit-learn's L2 term ``0.5 * alpha * ||W||^2 / sum(sample_weight)``
    on the weights (not the biases), added to the value and, as ``alpha / sum(w) * W``, to dW.
    Value scale and L2 term are one ``l2_penalty`` launch in ``param_grad_``: no allocation,
    no host sync.
    """

    def __init__(self, model, value_scale: float = 1.0, grad_scale: float = 1.0,
                 alpha: float = 0.0):
        self.value_scale, self.grad_scale, self.alpha = value_scale, grad_scale, float(alpha)
        self.model = model
        self._params = self._spans = None

    def spans(self):
        """(k, 2) int64 ``[start, stop)`` offsets of each layer's W in ``model.params``, on its
        device; rebuilt only when the model's buffers change (``model.to``)."""
        model = self.model
        if self._params is not model.params:
            spans = np.array([(layer.offset, layer.offset + layer.W.size)
                              for layer in model.layers], dtype=np.int64).reshape(-1, 2)
            self._spans = model.backend.asarray(spans)
            self._params = model.params
        return self._spans

    def output_grad_(self, grad, value, batch):
        if self.grad_scale != 1.0:
            grad *= self.grad_scale
        return value

    def plan_ops(self, stage: str, ctx) -> list:
        """The step plan's ops (``devnet.train.plan``) doing what the hook does at ``stage``."""
        from devnet.train.plan import Op

        if stage == "output_grad" and self.grad_scale != 1.0:
            scale = ctx.buffer("grad_scale", np.array([self.grad_scale], dtype=np.float64))
            return [Op("scale", (ctx["grad"], scale))]
        if stage == "param_grad" and (self.alpha > 0 or self.value_scale != 1.0):
            w, p = ctx.array("w"), ctx.array("p")
            cast = None
            if w is not None and w.dtype != p.dtype:  # as param_grad_ casts them
                cast = ctx.buffer("w_cast", np.empty(w.shape, p.dtype))
            scalars = ctx.buffer("l2_scalars", np.array([self.alpha, self.value_scale],
                                                        dtype=np.float64))
            return [Op("l2_penalty", (ctx["p"], ctx["g"], ctx.buffer("spans", self.spans()),
                                      ctx["w"], ctx["x"], scalars, cast))]
        return []

    def param_grad_(self, value, batch):
        if self.alpha > 0 or self.value_scale != 1.0:
            model, w = self.model, batch.w
            if w is not None and w.dtype != model.dtype:  # the estimators stage them so
                w = w.astype(model.dtype)
            # over the batch's total sample weight (scikit-learn's _backprop), summed on device
            value = model.backend.kernels.l2_penalty(
                model.params, model.grads, self.spans(), self.alpha, w, batch.x.shape[0],
                value, self.value_scale)
        return value

