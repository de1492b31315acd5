"""One training step -- forward, loss, backward, gradient hooks, optimizer -- for every caller.

``fit``, the scikit-learn estimators (their SGD/Adam loop, and L-BFGS through
``loss_and_grad``), ``dn.profile``, the benchmarks and the divergence guard's replay all run
this Step: a new capability (an all-reduce, loss scaling, graph capture) is one hook here.
The same step as data -- its kernel and product calls over fixed buffers -- is the Step's plan
(``devnet.train.plan``), which fit's compiled CPU engine runs a block of steps at a time
(``devnet.train.engine``) where its hooks declare their ops (``plan_ops``).
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import numpy as np

from devnet.errors import ConfigError


class Batch(NamedTuple):
    """One batch on the model's device: X (n, n_in), targets, weights (n,) or None; ``rows``:
    the batch's sample indices in the training data (host, for messages), or None; ``row0``:
    the batch's first row within the step's whole batch (0, or where a data-parallel rank's
    shard starts): it keys the dropout masks, so the ranks drop what one process would.
    """

    x: object
    y: object
    w: object = None
    rows: np.ndarray | None = None
    row0: int = 0


class StepHook:
    """An extension point of Step; override either method (both return the loss value).

    ``output_grad_`` runs after the loss, on dL/dpred (before backward); ``param_grad_`` after
    backward, on the model's flat gradient buffer ``model.grads`` (before the optimizer). The
    value is a device scalar: a hook must not read it (that would synchronise every step).
    ``collective``: the hook talks to other processes (an all-reduce), so a single process
    replaying a step (the divergence guard) leaves it out.
    """

    collective = False

    def output_grad_(self, grad, value, batch: Batch):
        return value

    def param_grad_(self, value, batch: Batch):
        return value


def checked_kwargs(loss) -> dict:
    """``checked=True`` for losses that can skip their per-call data checks: fit and the
    estimators check the data once up front (``devnet.validation``), so the step reads nothing
    back from the device.
    """
    method = getattr(loss, "forward_backward_", None)
    function = getattr(method, "__func__", method)
    try:
        takes = _takes_checked(function)  # per class: signature() costs ~20 us
    except TypeError:  # an unhashable callable
        takes = _takes_checked.__wrapped__(function)
    return {"checked": True} if takes else {}


@functools.lru_cache(maxsize=256)
def _takes_checked(function) -> bool:
    try:
        return "checked" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


class Step:
    """forward(training) -> loss and dL/dpred -> output hooks -> backward -> gradient hooks ->
    optimizer, on one batch, under the backend's device scope.

    Owns the dL/dpred buffers (one per batch size seen) and ``running``, a float64 device
    scalar summing ``value * weight`` over the steps since ``reset()``: the loss stays on the
    device, nothing is read back per step. ``optimizer`` may be None for ``loss_and_grad``
    only (L-BFGS). ``training``: forward in training mode (dropout; fit's default).
    """

    def __init__(self, model, loss, optimizer=None, hooks=(), training: bool = True):
        for hook in hooks:
            if not callable(getattr(hook, "output_grad_", None)) or \
                    not callable(getattr(hook, "param_grad_", None)):
                raise ConfigError(f"Step hooks need output_grad_ and param_grad_ methods "
                                  f"(subclass devnet.train.StepHook), got {type(hook).__name__}")
        from devnet import losses
        from devnet.optim import Optimizer

        loss = losses.get(loss)  # a Loss, or a name of LOSSES (an unknown one lists them)
        if isinstance(optimizer, Optimizer) and optimizer.params.data is not model.params:
            # it would update another buffer from its own (stale) gradients: nothing would train
            raise ConfigError("the optimizer was built over other parameters (another model, "
                              "or before model.to(...)): build it with model.parameters()")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.hooks = list(hooks)
        self.training = bool(training)
        self._checked = checked_kwargs(loss)
        self._grads: dict[int, object] = {}
        self.running = model.backend.zeros((), np.float64)
        self._backend = self._scope = None

    def scope(self):
        """The model's backend scope (kept while the model stays on that backend)."""
        backend = self.model.backend
        if backend is not self._backend:
            self._backend, self._scope = backend, backend.scope()
        return self._scope

    def reset(self) -> None:
        """Zero the running loss sum (on the device)."""
        with self.scope():  # a fill kernel: on the model's device, whichever is current
            self.running[...] = 0

    def grad_buffer(self, n: int):
        """The (n, n_out) dL/dpred buffer for a batch of n samples (allocated once per n)."""
        grad = self._grads.get(n)
        if grad is None:
            model = self.model
            grad = self._grads[n] = model.backend.empty((n, model.n_out), model.dtype)
        return grad

    # --- the stages (the guard's replay checks the arrays between them) -------------------

    def forward(self, x, index: int = 0, row0: int = 0):
        """The model's output for the batch; ``index``: the global step and ``row0``: x's first
        row within the step's whole batch (``Batch.row0``), both keying dropout's masks."""
        return self.model.forward(x, training=self.training, step=index, row0=row0)

    def output_grad(self, pred, batch: Batch, collective: bool = True):
        """Loss value and dL/dpred (into the Step's buffer), then the hooks' ``output_grad_``."""
        grad = self.grad_buffer(pred.shape[0])
        value = self.loss.forward_backward_(pred, batch.y, grad, batch.w,
                                            backend=self.model.backend, **self._checked)
        for hook in self.hooks:
            if collective or not hook.collective:
                value = hook.output_grad_(grad, value, batch)
        return value, grad

    def backpropagate(self, grad, value, batch: Batch, collective: bool = True):
        """Backward into ``model.grads`` (no input gradient), then the hooks' ``param_grad_``."""
        self.model.backward(grad, input_grad=False)
        for hook in self.hooks:
            if collective or not hook.collective:
                value = hook.param_grad_(value, batch)
        return value

    # --- the step ---------------------------------------------------------------------------

    def loss_and_grad(self, x, y, w=None, index: int = 0, rows=None, row0: int = 0):
        """Loss value (device scalar) and the gradient in ``model.grads``; no update."""
        batch = Batch(x, y, w, rows, row0)
        with self.scope():
            value, grad = self.output_grad(self.forward(x, index, row0), batch)
            return self.backpropagate(grad, value, batch)

    def __call__(self, x, y, w=None, index: int = 0, weight: float = 1.0, rows=None,
                 row0: int = 0):
        """One training step on (x, y, w); adds ``value * weight`` to ``running``.

        x: (n, n_in) on the model's device; y: its targets; w: (n,) weights or None; index:
        the global step count and row0: x's first row in the step's whole batch (they key
        dropout's masks; ``Batch.row0``). Returns the loss value (device scalar).
        """
        if self.optimizer is None:
            raise ConfigError("this Step was built without an optimizer: call loss_and_grad, "
                              "or build it with one")
        batch = Batch(x, y, w, rows, row0)
        with self.scope():
            value, grad = self.output_grad(self.forward(x, index, row0), batch)
            value = self.backpropagate(grad, value, batch)
            self.optimizer.step()
            if weight == 1.0:
                self.running += value
            elif weight:
                self.running += value * weight
        return value
