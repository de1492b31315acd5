"""Losses: the mean loss and its gradient w.r.t. the prediction (logits) in one fused kernel."""

from __future__ import annotations

import numpy as np

from devnet.backend import backend_of
from devnet.errors import ConfigError, DataError, lookup
from devnet.kernels.reference import get_xp


class Loss:
    """A loss over ``pred`` (n, k) and ``target``; ``value, dpred = loss(pred, target)``.

    Attributes:
        name: the table key.
        kernel: the kernel-table entry computing value and gradient.
        link: the activation mapping the model's raw outputs to predictions
            (``softmax`` / ``sigmoid`` for the fused classification losses, else identity).
        classification: True when targets are class labels / probabilities.
    """

    name = "loss"
    kernel = ""
    link = "identity"
    classification = False

    def params(self) -> dict:
        """Hyper-parameters passed to the kernel after ``scale`` (e.g. huber's delta)."""
        return {}

    def config(self) -> dict:
        return {"name": self.name, **self.params()}

    def _scale(self, pred) -> float:
        """Mean over the samples and outputs that the loss averages."""
        return 1.0 / (pred.shape[0] * pred.shape[1])

    def check_target(self, pred, target):
        """``target`` shaped for the kernel (a view), or a DataError naming the problem."""
        if target.shape == pred.shape:
            return target
        if target.ndim == 1 and pred.ndim == 2 and pred.shape == (target.shape[0], 1):
            return target.reshape(-1, 1)
        raise DataError(f"{self.name} needs targets shaped like the predictions "
                        f"{tuple(pred.shape)}, got {tuple(target.shape)}")

    def forward_backward_(self, pred, target, grad, sample_weight=None, backend=None):
        """Write dL/dpred into ``grad`` (may be ``pred``); return the loss on the device.

        pred: (n, k) float; target: see ``check_target``; grad: (n, k), overwritten;
        sample_weight: (n,) or None, normalised to mean 1 so the loss stays a weighted mean.
        backend: whose kernel table to use (default: the device ``pred`` lives on).
        The returned value is a device scalar: reading it (``float``) synchronises.
        """
        target = self.check_target(pred, target)
        w = None
        if sample_weight is not None:
            w = sample_weight / sample_weight.mean()
        kernel = getattr((backend or backend_of(pred)).kernels, self.kernel)
        return kernel(pred, target, grad, w, self._scale(pred), **self.params())

    def __call__(self, pred, target, sample_weight=None):
        """Mean loss (a float) and its gradient w.r.t. ``pred`` (a new array)."""
        xp = get_xp(pred)
        if pred.ndim != 2:
            raise DataError(f"{self.name}: predictions must be 2-D (n, k), got shape "
                            f"{tuple(pred.shape)}")
        target = xp.asarray(target)
        if sample_weight is not None:
            sample_weight = xp.asarray(sample_weight, dtype=pred.dtype)
            if sample_weight.shape != (pred.shape[0],):
                raise DataError(f"sample_weight must have shape ({pred.shape[0]},), "
                                f"got {tuple(sample_weight.shape)}")
        grad = xp.empty_like(pred)
        value = self.forward_backward_(pred, target, grad, sample_weight)
        return float(value), grad

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class MSE(Loss):
    """Mean squared error ``mean((p - t)**2)``."""

    name, kernel = "mse", "mse"


class MAE(Loss):
    """Mean absolute error ``mean(|p - t|)``."""

    name, kernel = "mae", "mae"


class Huber(Loss):
    """Huber loss: quadratic within ``delta`` of the target, linear beyond."""

    name, kernel = "huber", "huber"

    def __init__(self, delta: float = 1.0):
        if not (isinstance(delta, (int, float)) and np.isfinite(delta) and delta > 0):
            raise ConfigError(f"huber delta must be a finite number > 0, got {delta!r}")
        self.delta = float(delta)

    def params(self) -> dict:
        return {"delta": self.delta}


class CrossEntropy(Loss):
    """Softmax cross-entropy from logits; targets: integer labels (n,) or probabilities (n, k)."""

    name, kernel, link, classification = "cross_entropy", "softmax_xent", "softmax", True

    def _scale(self, pred) -> float:
        return 1.0 / pred.shape[0]

    def check_target(self, pred, target):
        n, k = pred.shape
        if target.ndim == 1 and target.shape[0] == n and target.dtype.kind in "iu":
            return target
        if target.shape == (n, k) and target.dtype.kind == "f":
            return target
        raise DataError(f"cross_entropy needs integer labels of shape ({n},) or class "
                        f"probabilities of shape ({n}, {k}), got {target.dtype} "
                        f"{tuple(target.shape)}")


class BinaryCrossEntropy(Loss):
    """Sigmoid binary cross-entropy from logits, per output (multi-label); targets in [0, 1]."""

    name, kernel, link, classification = ("binary_cross_entropy", "sigmoid_bce", "sigmoid",
                                          True)


LOSSES = {
    "mse": MSE,
    "mae": MAE,
    "huber": Huber,
    "cross_entropy": CrossEntropy,
    "binary_cross_entropy": BinaryCrossEntropy,
}


def get(name: str | Loss, **kwargs) -> Loss:
    """The loss called ``name`` (``LOSSES``), built with ``kwargs``; a Loss is returned as is."""
    if isinstance(name, Loss):
        return name
    return lookup(LOSSES, name, "loss")(**kwargs)
