"""The estimators' L-BFGS solver: SciPy's L-BFGS-B over the network's parameters, with the loss
and gradient evaluated by devnet on the model's device.

SciPy sees scikit-learn's packed vector (every layer's coefficients, then every intercept, each
C-order), not devnet's flat buffer (W0, b0, W1, b1, ...): L-BFGS's dot products round
differently in another order, and the point is to follow scikit-learn's run to rounding. Each
evaluation copies the parameters host -> device once and the gradient back once.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import scipy.optimize
from sklearn.utils.fixes import parse_version, sp_base_version
from sklearn.utils.optimize import _check_optimize_result  # its ConvergenceWarning texts

from devnet import losses as losses_mod
from devnet.sklearn._logloss import ClippedLoss, RecordingStep
from devnet.sklearn._optim import SklearnObjective


def packed_layout(layer_units):
    """``(order, coef_slices)`` for a network of ``layer_units``.

    order: for each entry of scikit-learn's packed vector, its index in devnet's flat buffer
    (so ``packed = flat[order]`` and ``flat[order] = packed``); coef_slices: each layer's
    coefficients within the packed vector.
    """
    coef_idx, intercept_idx, coef_slices, offset, packed = [], [], [], 0, 0
    for fan_in, fan_out in pairwise(layer_units):
        coef_idx.append(np.arange(offset, offset + fan_in * fan_out))
        coef_slices.append(slice(packed, packed + fan_in * fan_out))
        packed += fan_in * fan_out
        offset += fan_in * fan_out
        intercept_idx.append(np.arange(offset, offset + fan_out))
        offset += fan_out
    return np.concatenate(coef_idx + intercept_idx), coef_slices


class Objective:
    """``f(packed) -> (loss, gradient)`` of an estimator's network on (X, y), as SciPy wants.

    The loss is scikit-learn's (its log-loss of probabilities clipped to [eps, 1 - eps] /
    half squared error / half Poisson deviance, plus ``0.5 * alpha * ||W||^2 /
    sum(sample_weight)``); X, y and the weights go to the device once.
    """

    def __init__(self, est, model, X, y, sample_weight=None):
        be = model.backend
        self.model, self.backend = model, be
        self.X = be.asarray(X, dtype=model.dtype)
        self.y = be.asarray(y, dtype=model.dtype)
        self.weight = None if sample_weight is None else be.asarray(sample_weight,
                                                                   dtype=model.dtype)
        n = X.shape[0]
        self.sw_sum = n if sample_weight is None else sample_weight.sum()
        self.order, self.coef_slices = packed_layout(model.layer_sizes)
        self.n_coef = self.coef_slices[-1].stop
        loss_name, self.value_scale, grad_scale, link = est._task()
        self.alpha = float(est.alpha)
        self.host = np.empty(model.n_params, model.dtype)  # devnet's layout, on the host
        # a classifier's log-loss clips its probabilities, as scikit-learn's objective does
        self.clipped = ClippedLoss.make(model, link, n)
        # each sample's weight in scikit-learn's average (None: 1 / n each)
        self.factors = None if sample_weight is None else be.asarray(
            np.asarray(sample_weight, dtype=np.float64) / self.sw_sum, np.float64)
        self.step = RecordingStep(model, losses_mod.get(loss_name), None, recorder=self.clipped,
                                  hooks=[SklearnObjective(model, grad_scale=grad_scale)])

    def pack(self) -> np.ndarray:
        """The model's current parameters as scikit-learn's packed float64 vector."""
        return self.backend.to_numpy(self.model.params)[self.order].astype(np.float64)

    def load(self, packed) -> None:
        """Write a packed vector into the model's parameters (one host -> device copy)."""
        self.host[self.order] = packed
        self.backend.assign(self.model.params, self.host)

    def __call__(self, packed):
        self.load(packed)
        # Step's forward, loss and backward (no update), the gradient scaled by the task's
        # factor; the L2 term follows in float64 on the host
        if self.clipped is not None:
            self.clipped.start()
        value = self.step.loss_and_grad(self.X, self.y, self.weight)
        grad = np.asarray(self.backend.to_numpy(self.model.grads)[self.order], dtype=np.float64)
        # L2 on the coefficients, summed and scaled as scikit-learn's _backprop does
        values = 0
        for s in self.coef_slices:
            values += np.dot(packed[s], packed[s])
        if self.clipped is None:
            value = float(value) * self.value_scale
        else:  # the Step's value is 0: scikit-learn's clipped log-loss, averaged
            value = float(self.clipped.total(self.factors))
            value = value if self.factors is not None else value / self.X.shape[0]
        loss = value + (0.5 * self.alpha) * values / self.sw_sum
        grad[:self.n_coef] += (self.alpha / self.sw_sum) * packed[:self.n_coef]
        return loss, grad


def minimize(est, objective: Objective):
    """Run L-BFGS-B from the model's parameters with scikit-learn's options; returns the
    OptimizeResult after scikit-learn's convergence check (its ConvergenceWarning)."""
    iprint = 1 if est.verbose is True or est.verbose >= 1 else -1
    # scikit-learn passes iprint only to SciPy < 1.15 (deprecated there, then removed)
    extra = {"iprint": iprint} if sp_base_version < parse_version("1.15") else {}
    result = scipy.optimize.minimize(
        objective, objective.pack(), method="L-BFGS-B", jac=True,
        options={"maxfun": est.max_fun, "maxiter": est.max_iter, "gtol": est.tol, **extra})
    n_iter = _check_optimize_result("lbfgs", result, est.max_iter)
    objective.load(result.x)
    return result, n_iter
