"""Losses: the mean loss and its gradient w.r.t. the prediction (logits) in one fused kernel.

Two doors: ``loss(pred, target)`` (any array-like, checked, a new gradient) and
``loss.forward_backward_(pred, target, grad)`` (device arrays, your buffer). Both check their
inputs unless the caller passes ``checked=True``, as ``fit`` does after checking the whole data
set once: the checks cost passes over the batch and, on a GPU, a sync a step must not pay.
A loss declares the kind of target it takes (``devnet.targets.TARGETS``), whose rules live there.
"""

from __future__ import annotations

import inspect

import numpy as np

from devnet import validation
from devnet.backend import backend_of
from devnet.backend.host import detach
from devnet.errors import ConfigError, DataError, lookup
from devnet.kernels.reference import get_xp
from devnet.targets import TARGETS, cast, class_labels_or_probs, class_target


def _as_array(name: str, a, xp):
    """``a`` as an ``xp`` array; lists / tuples are converted; a DataError if that fails."""
    if isinstance(a, xp.ndarray):
        return a
    if a is None or isinstance(a, (str, bytes)):
        raise DataError(f"{name} must be a numeric array, got {type(a).__name__}")
    try:
        return xp.asarray(detach(a))  # a torch tensor that requires grad refuses to export
    except (ValueError, TypeError, RuntimeError) as exc:
        raise DataError(f"{name} could not be read as a numeric array (ragged rows or "
                        f"mixed types?): {exc}") from None


def _finite(name: str, a, xp, what: str = "") -> None:
    if a.dtype.kind == "f" and not bool(xp.isfinite(a).all()):
        raise DataError(f"{name} contains NaN or Inf{what}; expected finite numbers")


def _normalised_weights(w, dtype, xp):
    """``w / mean(w)`` in ``dtype``; a batch weighing 0 in total (only from ``fit``) stays 0.

    Divided in float64: a float32 mean of float32 weights of 1e38 overflows to inf (every
    weight 0). Normalised weights never exceed n, so the cast cannot overflow.
    """
    mean = w.mean(dtype=xp.float64)
    return (w / xp.where(mean > 0, mean, 1.0)).astype(dtype, copy=False)


class Loss:
    """A loss over ``pred`` (n, k) and ``target``; ``value, dpred = loss(pred, target)``.

    Attributes: ``name`` (the table key), ``kernel`` (the kernel-table entry), ``link`` (the
    activation mapping raw outputs to predictions: softmax / sigmoid for the fused
    classification losses), ``classification`` (targets are class labels / probabilities),
    ``target`` (the kind of target it takes, ``TARGETS``, which decides the checks).
    """

    name = "loss"
    kernel = ""
    link = "identity"
    classification = False
    target = "real"

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
        if self.target == "classes":
            return class_target(pred, target)
        if target.shape == pred.shape:
            return target
        if target.ndim == 1 and pred.ndim == 2 and pred.shape == (target.shape[0], 1):
            return target.reshape(-1, 1)
        raise DataError(f"{self.name} needs targets shaped like the predictions "
                        f"{tuple(pred.shape)}, got {tuple(target.shape)}")

    def check_values(self, target, dtype, name: str = "targets") -> None:
        """A DataError unless ``target``, shaped for the kernel, obeys the value rule of this
        loss's target kind (``TARGETS``), for ``prepare_target`` and ``validation.check_y``
        alike. dtype: the dtype the loss computes in (tolerances); name: for the message."""
        TARGETS[self.target].values(self.name, target, dtype, name)

    def prepare_target(self, pred, target, xp):
        """``target`` checked (values too) and converted to what the kernel takes: shaped like
        ``pred`` in its dtype (class labels: int64)."""
        validation.real_dtype(f"{self.name} target", target)
        if self.target == "classes":
            return class_labels_or_probs(pred, target, xp)
        target = cast(self.check_target(pred, target), pred.dtype)
        if not TARGETS[self.target].bounded:
            _finite(f"{self.name} target", target, xp,
                    f" (or values beyond the range of {pred.dtype})")
        self.check_values(target, pred.dtype)
        return target

    def _check_arrays(self, pred, target, grad, sample_weight, xp) -> None:
        """The checks that read no data (O(1)), run on every call."""
        if not isinstance(pred, xp.ndarray):
            raise DataError(f"{self.name}: pred must be a NumPy or CuPy array, got "
                            f"{type(pred).__name__} (loss(pred, target) also takes lists)")
        if pred.dtype.name not in validation.FLOAT_DTYPES:
            hint = (" (integer predictions would get an integer gradient; are pred and target "
                    "swapped?)" if pred.dtype.kind in "biu" else "")
            raise DataError(f"{self.name}: predictions must be floating point, one of "
                            f"{', '.join(validation.FLOAT_DTYPES)}; got {pred.dtype}{hint}")
        if pred.ndim != 2:
            raise DataError(f"{self.name}: predictions must be 2-D (n, k), got shape "
                            f"{tuple(pred.shape)}")
        if pred.size == 0:
            raise DataError(f"{self.name}: predictions are empty, shape {tuple(pred.shape)}; "
                            "expected at least one sample and one output")
        if not isinstance(grad, xp.ndarray) or grad.shape != pred.shape \
                or grad.dtype != pred.dtype:
            raise DataError(f"{self.name}: grad must be an array like pred, "
                            f"{pred.dtype} {tuple(pred.shape)}, got "
                            f"{getattr(grad, 'dtype', type(grad).__name__)} "
                            f"{tuple(getattr(grad, 'shape', ()))}")
        if isinstance(grad, np.ndarray) and not grad.flags.writeable:
            raise DataError(f"{self.name}: grad is read-only; pass a writable buffer")
        for arg, a in (("target", target), ("sample_weight", sample_weight)):
            if a is not None and not isinstance(a, xp.ndarray):
                raise DataError(f"{self.name}: {arg} must be an array like pred "
                                f"({type(pred).__name__}) when checked=True, got "
                                f"{type(a).__name__}")

    def _check_values(self, pred, target, sample_weight, xp):
        """The unchecked door's data checks: (target, sample_weight) ready for the kernel."""
        _finite(f"{self.name} predictions", pred, xp)
        target = self.prepare_target(pred, _as_array(f"{self.name} target", target, xp), xp)
        if sample_weight is not None:
            sample_weight = validation.sample_weights(
                _as_array("sample_weight", sample_weight, xp), pred.shape[0])
        return target, sample_weight

    def forward_backward_(self, pred, target, grad, sample_weight=None, backend=None,
                          checked: bool = False):
        """Write dL/dpred into ``grad`` (may be ``pred``); return the loss on the device.

        pred: (n, k) float32/float64; target: see ``check_target``; grad: (n, k), overwritten;
        sample_weight: (n,) or None, normalised to mean 1 so the loss stays a weighted mean.
        backend: whose kernel table to use (default: the device ``pred`` lives on).
        checked: the caller has already checked target (and sample_weight) as
            ``prepare_target`` does: skip the checks that read the data. Shapes and dtypes are
            checked either way; a label out of range then gives a NaN loss, never an
            out-of-bounds access.
        The returned value is a device scalar: reading it (``float``) synchronises.
        """
        be = backend or backend_of(pred)
        if checked:  # fit's Step: its arrays are on pred's device and it runs in its scope
            return self._forward_backward(pred, target, grad, sample_weight, be, True)
        with be.scope():  # a caller's arrays may be another device's: on pred's, in its scope
            value = self._forward_backward(pred, _on_device(be, target), grad,
                                           _on_device(be, sample_weight), be, False)
            # the inputs were finite, so an infinite value overflowed pred's dtype (an mse
            # target of 1.8e19 in float32): say so (this door synchronises anyway)
            if not bool(get_xp(pred).isfinite(value)):
                raise DataError(f"{self.name}: the loss overflowed {pred.dtype} on finite "
                                "inputs (predictions or targets too large for it); scale the "
                                "targets, or use float64")
            return value

    def _forward_backward(self, pred, target, grad, sample_weight, be, checked: bool):
        xp = get_xp(pred)
        self._check_arrays(pred, None if not checked else target, grad,
                           None if not checked else sample_weight, xp)
        if checked:
            target = self.check_target(pred, target)
        else:  # shaped for the kernel by the value checks
            target, sample_weight = self._check_values(pred, target, sample_weight, xp)
        w = None
        if sample_weight is not None:
            w = _normalised_weights(sample_weight, pred.dtype, xp)
        kernel = getattr(be.kernels, self.kernel)
        return kernel(pred, target, grad, w, self._scale(pred), **self.params())

    def __call__(self, pred, target, sample_weight=None):
        """Mean loss (a float) and its gradient w.r.t. ``pred`` (a new array). pred: (n, k)
        floats (float16 is widened to float32; lists are converted; integers are refused)."""
        xp = get_xp(pred)
        pred = _as_array(f"{self.name} predictions", pred, xp)
        if pred.dtype == np.float16:
            pred = pred.astype(np.float32)
        with backend_of(pred).scope():
            grad = xp.empty_like(pred)
            value = self.forward_backward_(pred, target, grad, sample_weight)
            return float(value), grad

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _on_device(be, a):
    """``a`` on ``be``'s device when it is a device array that is not ``be``'s (host arrays and
    lists are converted by the checks, on the current device: ``be``'s inside its scope)."""
    if a is not None and hasattr(a, "__cuda_array_interface__") and not be.is_array(a):
        return be.asarray(a)
    return a


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
        self.delta = validation.positive_number("huber delta", delta)

    def params(self) -> dict:
        return {"delta": self.delta}

    def _check_arrays(self, pred, target, grad, sample_weight, xp) -> None:
        super()._check_arrays(pred, target, grad, sample_weight, xp)
        if pred.dtype.type(self.delta) == 0:  # the kernel computes in pred's dtype
            raise ConfigError(f"huber delta={self.delta!r} is 0 in {pred.dtype} (below its "
                              f"smallest number): every loss would be 0; use a larger delta")


class CrossEntropy(Loss):
    """Softmax cross-entropy from logits; targets: integer labels (n,) or probabilities (n, k)."""

    name, kernel, link, classification = "cross_entropy", "softmax_xent", "softmax", True
    target = "classes"

    def _scale(self, pred) -> float:
        return 1.0 / pred.shape[0]


class BinaryCrossEntropy(Loss):
    """Sigmoid binary cross-entropy from logits, per output (multi-label); targets in [0, 1]."""

    name, kernel, link, classification = ("binary_cross_entropy", "sigmoid_bce", "sigmoid",
                                          True)
    target = "unit"


class Poisson(Loss):
    """Half Poisson deviance ``mean(t log(t / mu) - t + mu)``, ``mu = exp(z)`` (log link), as
    scikit-learn's ``MLPRegressor(loss="poisson")``; targets: counts or rates ``t >= 0``."""

    name, kernel, link, target = "poisson", "poisson", "exp", "non_negative"


LOSSES = {c.name: c for c in (MSE, MAE, Huber, CrossEntropy, BinaryCrossEntropy, Poisson)}


def get(name: str | Loss, **kwargs) -> Loss:
    """The loss called ``name`` (``LOSSES``), built with ``kwargs``; a Loss is returned as is."""
    if isinstance(name, Loss):
        if kwargs:
            raise ConfigError(f"keyword arguments {sorted(kwargs)} given with a built loss "
                              f"{name!r}; pass them to its constructor instead")
        return name
    cls = lookup(LOSSES, name, "loss")
    if not kwargs:
        return cls()
    valid = [p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"loss {name!r} got unknown keyword argument(s) {', '.join(unknown)}"
                          f"; valid: {', '.join(valid) if valid else 'none'}")
    return cls(**kwargs)
