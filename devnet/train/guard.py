"""The divergence guard: catch NaN/Inf without a sync per step, name where it began, rewind."""

from __future__ import annotations

import numpy as np

from devnet.errors import DivergenceError


class Guard:
    """Catches NaN/Inf without a device sync per step, and rewinds to the last finite state.

    Why this design: checking every step would cost a device->host sync per step (on a GPU that
    stalls the launch queue). Instead the epoch's loss is accumulated on the device and one
    scalar is read per check (every ``every`` steps, at least once per epoch, where fit reads
    the loss anyway), together with ``isfinite`` of the parameters and the optimizer state -- a
    non-finite gradient reaches one of them through the update, and a non-finite activation
    reaches the loss.
    After each passing check the parameters, optimizer state and step count are copied into
    preallocated buffers ON THE DEVICE (a device-to-device copy: no host transfer, no
    allocation, ~3 buffer-copies of the model per check). When a check fails, that snapshot is
    restored and the steps since it are replayed through the same ``Step`` with a check after
    every array (input batch, parameters, each layer's forward activation, the loss and its
    gradient, each layer's gradient, the update) to name the first one that went non-finite;
    then the snapshot is restored again, so the model ends at its last finite state. Replaying
    is exact because the batches and the state are the same; it costs nothing until something
    diverges.
    """

    def __init__(self, model, opt, every: int | None):
        self.model, self.opt, self.every = model, opt, every
        self.params = model.params.copy()
        self.state = {k: v.copy() for k, v in opt.state.items()}
        self.t, self.base_lr, self.schedule = opt.t, opt.base_lr, opt.schedule
        self.step = 0  # the global step count at the snapshot
        self.first_step = 0  # the first step of the epoch after the snapshot
        self.where = "the start of training"

    def finite(self, acc=None) -> bool:
        """One device read: are the accumulated loss, every parameter and every optimizer
        state buffer finite?

        The state too: a finite gradient whose square overflows (Adam's ``exp_avg_sq`` = inf)
        leaves the parameters finite (m / sqrt(inf) = 0) but freezes them for good, and a
        snapshot taken then would not be a finite state to rewind to.
        """
        xp = self.model.backend.xp
        ok = xp.isfinite(self.model.params).all()
        for buf in self.opt.state.values():
            ok = ok & xp.isfinite(buf).all()
        if acc is not None:
            ok = ok & xp.isfinite(acc)
        return bool(ok)

    def snapshot(self, step: int, where: str) -> None:
        xp = self.model.backend.xp
        xp.copyto(self.params, self.model.params)
        for k, buf in self.state.items():
            xp.copyto(buf, self.opt.state[k])
        self.t, self.base_lr, self.schedule = self.opt.t, self.opt.base_lr, self.opt.schedule
        self.step, self.where = step, where

    def restore(self, trainer) -> None:
        xp = self.model.backend.xp
        xp.copyto(self.model.params, self.params)
        for k, buf in self.state.items():
            xp.copyto(self.opt.state[k], buf)
        self.opt.t, self.opt.base_lr, self.opt.schedule = self.t, self.base_lr, self.schedule
        trainer.step = self.step


def _nonfinite(xp, a) -> bool:
    return not bool(xp.isfinite(a).all())


def _bad_parameter(model, when: str):
    """(layer, array, description) of the first non-finite W or b, or None."""
    xp = model.backend.xp
    for layer in model.layers:
        for arr, nm in ((layer.W, "W"), (layer.b, "b")):
            if _nonfinite(xp, arr):
                return (layer.name, nm, f"parameter {layer.name}.{nm}{when}")
    return None


def diagnose_step(step, batch, index: int = 0) -> tuple | None:
    """Run one step of ``step`` (a Step) checking every array; returns (layer, array,
    description) of the first non-finite one, or None.

    ``batch``: the Batch replayed (its ``rows``: sample indices in the training data; its
    ``row0``: where a data-parallel rank's shard starts in the step's batch); ``index``: the
    global step (index and row0 key the dropout masks, as in the step replayed). Hooks
    that talk to other processes (the data-parallel all-reduce) are left out of the replay.
    """
    model, loss, opt = step.model, step.loss, step.optimizer
    xp = model.backend.xp
    xb, yb = batch.x, batch.y
    if _nonfinite(xp, xb):
        bad = model.backend.to_numpy(~xp.isfinite(xb).all(axis=1))
        return ("input", "X", f"the input batch X (training rows {batch.rows[bad][:5].tolist()})")
    if yb.dtype.kind == "f" and _nonfinite(xp, yb):
        return ("input", "y", "the target batch y")
    found = _bad_parameter(model, " (before the step)")
    if found is not None:
        return found
    with np.errstate(all="ignore"), model.backend.scope():
        pred = step.forward(xb, index, batch.row0)
        # each layer's output of that forward, in order (residual blocks and norms included)
        for layer, A in zip(model.layers, model.layer_outputs()):
            if _nonfinite(xp, A):
                return (layer.name, "A", f"forward activation of {layer.name} "
                        f"({layer.activation}(X @ W + b) overflowed)")
        if _nonfinite(xp, pred):
            return (model.layers[-1].name, "A", f"forward output of {model.layers[-1].name}")
        value, grad = step.output_grad(pred, batch, collective=False)
        if _nonfinite(xp, xp.asarray(value)):
            return ("loss", "value", f"the {loss.name} loss value")
        if _nonfinite(xp, grad):
            return ("loss", "grad", f"the {loss.name} loss gradient dL/dpred")
        step.backpropagate(grad, value, batch, collective=False)
        for layer in reversed(model.layers):  # backprop order: the last layer first
            for arr, nm in ((layer.dW, "dW"), (layer.db, "db")):
                if _nonfinite(xp, arr):
                    return (layer.name, nm, f"gradient {layer.name}.{nm}")
        lr = opt.lr
        opt.step()
    found = _bad_parameter(model, f" after the {opt.name} update with lr={lr:g} (the step "
                                  "overflowed)")
    return found if found is not None else _bad_state(opt, f" after the {opt.name} update with "
                                                           f"lr={lr:g} (the step overflowed)")


def _bad_state(opt, when: str):
    """("optimizer", buffer name, description) of the first non-finite state buffer, or None."""
    xp = opt.backend.xp
    for k, buf in opt.state.items():
        if _nonfinite(xp, buf):
            return ("optimizer", k, f"optimizer state {k!r}{when}")
    return None


def diverged(trainer, step, guard: Guard, epoch: int, first: int, last: int, batch_at):
    """Rewind to the guard's snapshot, find the first non-finite array, raise DivergenceError.

    ``first..last``: the steps of this epoch since the snapshot (``last < first``: none; the
    parameters went bad outside any step); ``batch_at(s)``: the Batch of step s of the epoch.
    """
    model = trainer.model
    found, s = None, first
    if last < first:
        outside = (", changed outside the training step (by a callback or the caller) before "
                   "the epoch's first step")
        found = _bad_parameter(model, outside) or _bad_state(trainer.optimizer, outside)
        guard.restore(trainer)
    else:
        # what is non-finite now: named if the replay does not reproduce it (a callback wrote it)
        live = _bad_parameter(model, "") or _bad_state(trainer.optimizer, "")
        guard.restore(trainer)
        for s in range(first, last + 1):
            found = diagnose_step(step, batch_at(s), guard.step + s - first)
            if found is not None:
                break
        guard.restore(trainer)
        if found is None and live is not None:
            found = (*live[:2], f"{live[2]} (where it began could not be located: the steps "
                                "replayed from the last finite state do not produce it, so it "
                                "was changed outside the training step, by a callback or the "
                                "caller)")
    if found is None:
        layer = array = None
        where = ("an array that could not be located: the failure did not reproduce when "
                 "replaying from the last finite state (were the parameters or data changed "
                 "outside the step, e.g. by a callback?)")
    else:
        layer, array, where = found
    err = DivergenceError(
        f"training diverged in epoch {epoch}, step {s} of the epoch (global step "
        f"{guard.step + s - first + 1}): first non-finite value in {where}. The model and "
        f"optimizer were restored to their last finite state ({guard.where}). Try a lower "
        "learning rate or clip_norm, or check the data.")
    err.epoch, err.step, err.layer, err.array = epoch, s, layer, array
    raise err
