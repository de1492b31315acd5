"""The fit loop: batches to the device at the edge, fused forward/loss/backward/step, History.

Inputs are checked once (``devnet.validation``) before the first step; the step itself does one
host-to-device copy of the batch and nothing else on the host. Non-finite values are caught by
a guard that reads one device scalar per check (see ``_Guard``), not one per step.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np

from devnet import losses as losses_mod
from devnet import metrics
from devnet import optim as optim_mod
from devnet import task as task_mod
from devnet.errors import CheckpointError, ConfigError, DataError, DivergenceError, lookup
from devnet.kernels.reference import get_xp
from devnet.optim import schedules as sched_mod
from devnet.validation import (
    _host,
    check_model,
    check_sample_weight,
    check_validation_data,
    check_X,
    check_y,
    fraction,
    positive_int,
    positive_number,
)


class History:
    """Per-epoch records: ``history["loss"]``, ``["val_loss"]``, the task metric, ``lr``, time.

    ``epoch`` lists the 0-based epoch indices recorded (continuing across a resume).
    """

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []
        self.params: dict = {}

    def append(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key):
        return self.history[key]

    def plot_gradient_flow(self, path, title: str | None = None):
        """Plot the per-layer gradient norms ``callbacks.GradientFlow`` recorded (matplotlib)."""
        from devnet.callbacks import plot_gradient_flow

        return plot_gradient_flow(self, path, title)

    def __repr__(self) -> str:
        keys = ", ".join(self.history)
        return f"History(epochs={len(self.epoch)}, keys=[{keys}])"


class Callback:
    """Hooks called by ``fit``; set ``self.trainer.stop_training = True`` to stop.

    Epochs are 0-based. ``on_batch_end`` gets ``{"size": n}`` only: reading the loss there
    would synchronise the device every step.
    """

    trainer: Trainer

    def on_train_begin(self, logs: dict) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict) -> None: ...

    def on_batch_end(self, step: int, logs: dict) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_train_end(self, logs: dict) -> None: ...

    def on_train_abort(self, error: BaseException) -> None:
        """Called instead of ``on_train_end`` when fit raises (release files and the like)."""


def metric_names(loss: losses_mod.Loss) -> tuple[str, ...]:
    """The task metrics reported for ``loss``: accuracy, or R2 and MAE for regression."""
    return ("accuracy",) if loss.classification else ("r2", "mae")


# --- evaluation and prediction ----------------------------------------------------------------

def evaluate(model, X, y, loss="mse", batch_size: int = 4096, sample_weight=None,
             task: str = "auto") -> dict:
    """Mean loss and task metrics of ``model`` on (X, y), forward in batches; returns floats.

    X: (n, n_in); y: targets for ``loss``; sample_weight: (n,) or None. ``loss="auto"`` and
    ``task`` pick the loss by fit's rule (``devnet.task``); pass the loss fit used
    (``history.params["loss"]``) to score a small set whose labels are ambiguous.
    """
    check_model(model)
    batch_size = positive_int("batch_size", batch_size)
    X = check_X(model, X)
    loss = _resolve_loss(model, loss, task, y)
    y = check_y(model, loss, y, len(X))
    w = check_sample_weight(model, sample_weight, len(X))
    return _evaluate(model, loss, X, y, w, batch_size)


def _evaluate(model, loss, X, y, w, batch_size: int) -> dict:
    be = model.backend
    pred = _forward_all(model, X, batch_size)
    y_d = be.asarray(y)
    w_d = None if w is None else be.asarray(w)
    grad = be.empty(pred.shape, model.dtype)
    value = float(loss.forward_backward_(pred, y_d, grad, w_d, backend=be,
                                          **_checked(loss)))
    return {"loss": value, **_metrics(loss, pred, y_d)}


def _checked(loss) -> dict:
    """``checked=True`` for losses that can skip their per-call data checks: fit and evaluate
    check the data once up front (``devnet.validation``), so the step reads nothing back.
    """
    try:
        params = inspect.signature(loss.forward_backward_).parameters
    except (TypeError, ValueError):
        return {}
    return {"checked": True} if "checked" in params else {}


def _forward_all(model, X, batch_size: int):
    """Outputs (n, n_out) on the model's device for host X (n, n_in), one batch at a time."""
    be = model.backend
    out = be.empty((len(X), model.n_out), model.dtype)
    for i in range(0, len(X), batch_size):
        out[i:i + batch_size] = model.forward(be.asarray(X[i:i + batch_size]), training=False)
    return out


def _metrics(loss, pred, y) -> dict:
    if loss.classification:
        return {"accuracy": metrics.accuracy(pred, y, loss.link)}
    if loss.link == "exp":  # a log-link model outputs log(mean): score the mean it predicts
        pred = get_xp(pred).exp(pred)
    return {"r2": metrics.r2(pred, y), "mae": metrics.mae(pred, y)}


def predict(model, X, batch_size: int = 4096) -> np.ndarray:
    """Raw outputs (n, n_out) of ``model`` for X (n, n_in), in batches; a NumPy array."""
    check_model(model)
    batch_size = positive_int("batch_size", batch_size)
    X = check_X(model, X)
    return model.backend.to_numpy(_forward_all(model, X, batch_size))


def predict_proba(model, X, loss="cross_entropy", batch_size: int = 4096) -> np.ndarray:
    """Class probabilities (n, n_out): the loss's link (softmax / sigmoid) on the outputs."""
    from devnet.kernels import reference

    loss = losses_mod.get(loss)
    return reference.act_fwd(loss.link, predict(model, X, batch_size))


# --- the state of one fit ---------------------------------------------------------------------

class Trainer:
    """The state of one ``fit`` call (shared with callbacks).

    ``epoch``: the current 0-based epoch; ``epochs_done``: epochs completed (the resume point);
    ``step``: optimizer steps taken by fit; ``rng``: the shuffling Generator.
    """

    def __init__(self, model, loss, optimizer, history, epochs=1, batch_size=32, seed=0,
                 shuffle=True, n_samples=0, total_steps=0):
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.history = history
        self.stop_training = False
        self.epoch = 0
        self.epochs_done = 0
        self.step = 0
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.n_samples = n_samples
        self.total_steps = total_steps  # optimizer steps the run is planned for (its horizon)
        self.rng = np.random.default_rng(seed)
        self.dist = None  # a devnet.distributed.DataParallel under fit(comm=...)

    def resume_state(self) -> dict:
        """JSON-serialisable state that, with model and optimizer, makes a resume exact."""
        return {"epoch": self.epochs_done, "step": self.step,
                "rng": self.rng.bit_generator.state, "seed": self.seed,
                "batch_size": self.batch_size, "shuffle": self.shuffle,
                "n_samples": self.n_samples, "loss": self.loss.config(),
                "epochs": self.epochs, "total_steps": self.total_steps}

    def restore(self, state: dict, name: str) -> None:
        """Restore epoch, step and RNG from ``resume_state()`` output saved in ``name``."""
        try:
            rng_state = state["rng"]
            if rng_state["bit_generator"] != type(self.rng.bit_generator).__name__:
                raise ValueError(f"bit generator {rng_state['bit_generator']!r}")
            self.rng.bit_generator.state = rng_state
            self.epochs_done = int(state["epoch"])
            self.step = int(state["step"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {name!r} has no usable training state for "
                                  f"resume ({exc}); save it with fit(checkpoint=...) or "
                                  "ModelCheckpoint") from None
        for key in ("batch_size", "shuffle", "n_samples"):
            if key in state and state[key] != getattr(self, key):
                warnings.warn(f"resuming from {name!r} with {key}={getattr(self, key)!r} but "
                              f"the checkpoint was trained with {state[key]!r}: the result will "
                              "not match an uninterrupted run", stacklevel=3)


# --- schedules by name --------------------------------------------------------------------------

def _cosine(lr, total):
    return sched_mod.cosine(lr, total)


SCHEDULES = {
    "constant": lambda lr, total: sched_mod.constant(lr),
    "cosine": _cosine,
    "warmup_cosine": lambda lr, total: sched_mod.warmup_cosine(lr, max(1, total // 20), total),
    "step": lambda lr, total: sched_mod.step(lr, max(1, total // 3), 0.1),
    "exponential": lambda lr, total: sched_mod.exponential(lr, 0.01 ** (1 / max(total, 1))),
}


def _schedule(schedule, lr: float, total_steps: int):
    """A Schedule from a Schedule, a config dict, or a name in ``SCHEDULES`` (from lr, steps)."""
    if schedule is None or isinstance(schedule, sched_mod.Schedule):
        return schedule
    if isinstance(schedule, dict):
        return sched_mod.from_config(schedule)
    return lookup(SCHEDULES, schedule, "schedule")(lr, total_steps)


def _optimizer(optimizer, model, lr, schedule, total_steps: int):
    if isinstance(optimizer, optim_mod.Optimizer):
        opt = optimizer
        if opt.params.data is not model.params:
            raise ConfigError("optimizer was built over other parameters (another model, or "
                              "before model.to(...)): build it with model.parameters()")
        if lr is not None:
            raise ConfigError("lr was given with an optimizer instance; set the learning rate "
                              "when building the optimizer")
        base = opt.base_lr if not isinstance(opt.base_lr, sched_mod.Schedule) else opt.lr
    else:
        cls = lookup(optim_mod.OPTIMIZERS, optimizer, "optimizer")
        if isinstance(lr, sched_mod.Schedule):
            opt = cls(model.parameters(), lr=lr)
            base = lr(0)
        else:
            base = lr if lr is not None else inspect.signature(cls).parameters["lr"].default
            opt = cls(model.parameters(), lr=base)
    sched = _schedule(schedule, base, total_steps)
    if sched is not None:
        opt.schedule = sched
    return opt


# --- the non-finite guard -----------------------------------------------------------------------

class _Guard:
    """Catches NaN/Inf without a device sync per step, and rewinds to the last finite state.

    Why this design: checking every step would cost a device->host sync per step (on a GPU that
    stalls the launch queue). Instead the epoch's loss is accumulated on the device and one
    scalar is read per check (every ``every`` steps, at least once per epoch, where fit reads
    the loss anyway), together with ``isfinite(params).all()`` -- a non-finite gradient always
    reaches the parameters through the update, and a non-finite activation reaches the loss.
    After each passing check the parameters, optimizer state and step count are copied into
    preallocated buffers ON THE DEVICE (a device-to-device copy: no host transfer, no
    allocation, ~3 buffer-copies of the model per check). When a check fails, that snapshot is
    restored and the steps since it are replayed with a check after every array (input batch,
    parameters, each layer's forward activation, the loss and its gradient, each layer's
    gradient, the update) to name the first one that went non-finite; then the snapshot is
    restored again, so the model ends at its last finite state. Replaying is exact because the
    batches and the state are the same; it costs nothing until something diverges.
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
        """One device read: is the accumulated loss and every parameter finite?"""
        xp = self.model.backend.xp
        ok = xp.isfinite(self.model.params).all()
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


def _diagnose_step(model, loss, opt, xb, yb, wb, grad, rows, step: int = 0) -> tuple | None:
    """Run one step checking every array; returns (layer, array, description) of the first
    non-finite one, or None. ``rows``: the batch's sample indices in the training data;
    ``step``: the global step (it keys the dropout masks, as in the step replayed).
    """
    be = model.backend
    xp = be.xp
    if _nonfinite(xp, xb):
        bad = be.to_numpy(~xp.isfinite(xb).all(axis=1))
        return ("input", "X", f"the input batch X (training rows {rows[bad][:5].tolist()})")
    if yb.dtype.kind == "f" and _nonfinite(xp, yb):
        return ("input", "y", "the target batch y")
    for layer in model.layers:
        for arr, nm in ((layer.W, "W"), (layer.b, "b")):
            if _nonfinite(xp, arr):
                return (layer.name, nm, f"parameter {layer.name}.{nm} (before the step)")
    with np.errstate(all="ignore"):
        pred = model.forward(xb, training=True, step=step)
        # each layer's output of that forward, in order (residual blocks and norms included)
        for layer, A in zip(model.layers, model.layer_outputs()):
            if _nonfinite(xp, A):
                return (layer.name, "A", f"forward activation of {layer.name} "
                        f"({layer.activation}(X @ W + b) overflowed)")
        if _nonfinite(xp, pred):
            return (model.layers[-1].name, "A", f"forward output of {model.layers[-1].name}")
        value = loss.forward_backward_(pred, yb, grad, wb, backend=be, **_checked(loss))
        if _nonfinite(xp, xp.asarray(value)):
            return ("loss", "value", f"the {loss.name} loss value")
        if _nonfinite(xp, grad):
            return ("loss", "grad", f"the {loss.name} loss gradient dL/dpred")
        model.backward(grad, input_grad=False)
        for layer in reversed(model.layers):  # backprop order: the last layer first
            for arr, nm in ((layer.dW, "dW"), (layer.db, "db")):
                if _nonfinite(xp, arr):
                    return (layer.name, nm, f"gradient {layer.name}.{nm}")
        lr = opt.lr
        opt.step()
    for layer in model.layers:
        for arr, nm in ((layer.W, "W"), (layer.b, "b")):
            if _nonfinite(xp, arr):
                return (layer.name, nm, f"parameter {layer.name}.{nm} after the "
                        f"{opt.name} update with lr={lr:g} (the step overflowed)")
    for k, buf in opt.state.items():
        if _nonfinite(xp, buf):
            return ("optimizer", k, f"optimizer state {k!r}")
    return None


# --- fit ----------------------------------------------------------------------------------------

def fit(model, X, y, loss="auto", optimizer="adam", epochs: int = 10, batch_size: int = 32,
        validation_data: tuple | None = None, validation_split: float | None = None,
        shuffle: bool = True, seed: int | None = 0, callbacks: Sequence[Callback] = (),
        progress: bool | str = "auto", lr=None, schedule=None, sample_weight=None,
        resume_from=None, checkpoint=None, checkpoint_every: int = 1, guard: bool = True,
        guard_every: int | None = None, train_metrics: bool = True, task: str = "auto",
        extend_schedule: bool = False, comm=None) -> History:
    """Train ``model`` on (X, y); returns a History (one entry per epoch).

    Args:
        X: (n, n_in) features; y: targets for ``loss`` (integer labels (n,) or probabilities
            (n, k) for cross_entropy; (n, n_out) or (n,) floats otherwise).
        loss: a name from ``devnet.losses.LOSSES``, a Loss, or "auto": the loss for ``task``
            (``devnet.task.default_loss``): cross_entropy for class labels 0..K-1 and a model
            with K > 1 outputs, binary_cross_entropy for 0/1 labels and one output, else mse.
        task: "auto", "classification" or "regression" (``devnet.task.TASKS``). "auto" reads y
            as class labels only if it is 1-D, whole numbers, 2..256 distinct values each
            occurring at least twice (``devnet.task.infer_task``). With an explicit loss, a
            task that contradicts it is a ConfigError.
        optimizer: a name from ``devnet.optim.OPTIMIZERS`` or an Optimizer over
            ``model.parameters()``.
        epochs: the total number of epochs of the run; when resuming, training continues from
            the checkpoint's epoch up to ``epochs``.
        batch_size: samples per step; the last partial batch is used, not dropped.
        validation_data: (X_val, y_val) or (X_val, y_val, w_val); or ``validation_split``: the
            last fraction (0, 1) of (X, y), taken before shuffling.
        shuffle: True / False: reshuffle the samples every epoch.
        seed: seeds the shuffling Generator (the model's init has its own seed).
        lr: learning rate (float or Schedule) for an optimizer given by name.
        schedule: a Schedule, a config dict, or a name from ``SCHEDULES`` built from lr and the
            run's total step count; stepped per optimizer step.
        sample_weight: (n,) finite weights >= 0, not all zero; only their ratios matter
            (they are rescaled to mean 1 in float64 before the cast to the model's dtype).
        resume_from: a checkpoint path written by ``checkpoint=`` / ``ModelCheckpoint``:
            restores parameters, optimizer state and step, schedule, shuffle RNG, epoch and
            History, so the run continues bit-identically (CPU). lr / schedule are then
            taken from the checkpoint.
        extend_schedule: when resuming with more epochs than the checkpoint's run was planned
            for, stretch its lr schedule over the new total (``Schedule.extended``): from the
            resume point on the lr follows the curve of a run planned for the new length from
            the start. Without it fit warns that the extra steps run past the schedule's end.
        checkpoint: path to save a resumable checkpoint every ``checkpoint_every`` epochs
            (atomically) and after the last epoch.
        guard: stop with DivergenceError at the first non-finite loss, activation, gradient or
            parameter, leaving the model at its last finite state; checks every
            ``guard_every`` steps (default: once per epoch) -- see ``_Guard``.
        train_metrics: also compute the task metric on the training data at each epoch end
            (one extra forward pass over it).
        progress: one line per epoch on stderr. "auto": a live tqdm bar per epoch when stderr
            is a terminal, nothing otherwise; True: the tqdm bar on a terminal, else a plain
            line printed (and flushed) at each epoch end; False: nothing.
        comm: a ``devnet.distributed.init()`` communicator: data-parallel training over its
            ranks (``devnet.distributed``); batch_size stays the global batch, rank 0 alone
            shows progress and writes checkpoints and CSV logs.
    """
    check_model(model)
    epochs = positive_int("epochs", epochs)
    batch_size = positive_int("batch_size", batch_size)
    checkpoint_every = positive_int("checkpoint_every", checkpoint_every)
    guard_every = None if guard_every is None else positive_int("guard_every", guard_every)
    if lr is not None and not isinstance(lr, sched_mod.Schedule):
        lr = positive_number("lr", lr)
    if seed is not None and (isinstance(seed, (bool, np.bool_))
                             or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ConfigError(f"seed must be a non-negative integer or None, got {seed!r}")
    shuffle = _flag("shuffle", shuffle)
    guard = _flag("guard", guard)
    train_metrics = _flag("train_metrics", train_metrics)
    extend_schedule = _flag("extend_schedule", extend_schedule)
    progress = _progress_mode(progress)
    callbacks = _check_callbacks(callbacks)

    X = check_X(model, X)
    loss = _resolve_loss(model, loss, task, y)
    y = check_y(model, loss, y, len(X))
    sw = check_sample_weight(model, sample_weight, len(X))
    val = None
    if validation_split is not None:
        if validation_data is not None:
            raise ConfigError("give validation_data or validation_split, not both")
        frac = fraction("validation_split", validation_split)
        n_val = int(round(len(X) * frac))
        if not 1 <= n_val < len(X):
            raise DataError(f"validation_split={frac} of {len(X)} samples leaves {n_val} for "
                            f"validation and {len(X) - n_val} for training; both need >= 1")
        val = (X[-n_val:], y[-n_val:], None if sw is None else sw[-n_val:])
        X, y, sw = X[:-n_val], y[:-n_val], None if sw is None else sw[:-n_val]
        if sw is not None and not (sw > 0).any():
            raise DataError("sample_weight is zero for every training sample left after "
                            f"validation_split={frac}; no training sample would count")
    elif validation_data is not None:
        val = check_validation_data(model, loss, validation_data)

    n = len(X)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    opt = _optimizer(optimizer, model, lr, schedule, total_steps)
    history = History()
    trainer = Trainer(model, loss, opt, history, epochs, batch_size, seed, shuffle, n,
                      total_steps)
    if resume_from is not None:
        opt = _resume(trainer, optimizer, resume_from, steps_per_epoch, extend_schedule)
        history = trainer.history
    else:
        _check_horizon(opt.schedule, total_steps)
    history.params = {"epochs": epochs, "batch_size": batch_size, "n_samples": n,
                      "steps_per_epoch": steps_per_epoch, "loss": loss.name}
    if checkpoint is not None:
        from devnet.callbacks import ModelCheckpoint

        callbacks.append(ModelCheckpoint(checkpoint, every=checkpoint_every))
    if comm is not None:  # data-parallel: check the ranks agree, broadcast rank 0's state
        from devnet.distributed import DataParallel

        if getattr(model, "dropout", 0.0) > 0:
            # masks are keyed by the row within the batch each rank sees, so the ranks' masks
            # would not add up to the single-process mask
            raise ConfigError("fit(comm=...) does not support dropout yet: build the model with "
                              "dropout=0.0 for data-parallel training")

        trainer.dist = DataParallel(comm, trainer, X, y, sw)
        progress, callbacks = trainer.dist.root_only(progress, callbacks)
    for cb in callbacks:
        cb.trainer = trainer
    try:
        for cb in callbacks:
            cb.on_train_begin({})
        # overflow is the guard's business: it reports where, NumPy's warnings only add noise
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
                model.backend.thread_limits():
            _loop(trainer, X, y, sw, val, callbacks, steps_per_epoch, guard, guard_every,
                  progress, train_metrics)
    except BaseException as exc:
        for cb in callbacks:
            cb.on_train_abort(exc)
        raise
    for cb in callbacks:
        cb.on_train_end({})
    return history


def _flag(name: str, value) -> bool:
    """``value`` if it is a bool (NumPy's too); "no", 0 or None are a ConfigError."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


PROGRESS = (True, False, "auto")


def _progress_mode(progress) -> bool | str:
    if isinstance(progress, (bool, np.bool_)):
        return bool(progress)
    if progress == "auto":
        return "auto"
    raise ConfigError(f"progress must be True, False or 'auto', got {progress!r}")


def _resolve_loss(model, loss, task, y) -> losses_mod.Loss:
    """The Loss for fit: ``loss`` itself, or for "auto" the one ``devnet.task`` picks."""
    task = task_mod.check_task(task)
    if isinstance(loss, str) and loss == "auto":
        arr = _host("y", y, model.backend)
        chosen = task_mod.infer_task(arr, task)
        return losses_mod.get(task_mod.default_loss(chosen, arr, model.n_out))
    loss = losses_mod.get(loss)
    if task != "auto" and (task == "classification") != bool(loss.classification):
        fits = [name for name, cls in losses_mod.LOSSES.items()
                if bool(getattr(cls, "classification", False)) == (task == "classification")]
        raise ConfigError(f"loss {loss.name!r} is a "
                          f"{'classification' if loss.classification else 'regression'} loss "
                          f"but task={task!r}; use one of {', '.join(sorted(fits))} or "
                          "loss='auto' for this task, or change task")
    return loss


def _check_callbacks(callbacks) -> list:
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    try:
        callbacks = list(callbacks or ())
    except TypeError:
        raise ConfigError(f"callbacks must be a list of devnet Callbacks, got "
                          f"{type(callbacks).__name__}") from None
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise ConfigError(f"callbacks must be devnet.Callback instances, got "
                              f"{type(cb).__name__} (a class? instantiate it)")
    return callbacks


def _resume(trainer, optimizer, path, steps_per_epoch: int, extend_schedule: bool):
    from devnet import io

    name = str(path)
    model = trainer.model
    ck = io.load_checkpoint(path, backend=model.backend)
    io.check_architecture(ck.meta["model"], model, name)
    _resume_input_scaling(model, ck.model, name)
    if ck.optimizer is None:
        raise CheckpointError(f"checkpoint {name!r} has no optimizer state; resuming needs a "
                              "checkpoint written by fit(checkpoint=...) or ModelCheckpoint")
    want = optimizer.name if isinstance(optimizer, optim_mod.Optimizer) else optimizer
    if ck.optimizer.name != want:
        raise CheckpointError(f"checkpoint {name!r} was trained with optimizer "
                              f"{ck.optimizer.name!r}, but fit got optimizer {want!r}")
    saved_loss = ck.train_state.get("loss", {}).get("name")
    if saved_loss is not None and saved_loss != trainer.loss.name:
        raise CheckpointError(f"checkpoint {name!r} was trained with loss {saved_loss!r}, but "
                              f"fit got loss {trainer.loss.name!r}")
    trainer.restore(ck.train_state, name)
    model.params[...] = ck.model.params
    model.dropout_seed = ck.model.dropout_seed  # the masks continue as in the saved run
    state = ck.optimizer.state_dict()
    if isinstance(optimizer, optim_mod.Optimizer):
        opt = optimizer
        opt.load_state_dict(state)
        opt.schedule, opt.base_lr = ck.optimizer.schedule, ck.optimizer.base_lr
    else:
        opt = optim_mod.from_state_dict(model.parameters(), state)
    trainer.optimizer = opt
    trainer.history = ck.history or History()
    _resume_schedule(trainer, ck.train_state, name, steps_per_epoch, extend_schedule)
    return opt


def _resume_input_scaling(model, saved, name: str) -> None:
    """Carry the checkpoint's input standardization over: resuming a standardized run into a
    fresh model must not silently train on unscaled inputs.
    """
    theirs, ours = saved.input_scaling, model.input_scaling
    if theirs is None:
        return
    if ours is None:
        model.set_input_scaling(*theirs)
    elif not all(np.array_equal(a, b) for a, b in zip(ours, theirs)):
        raise CheckpointError(f"checkpoint {name!r} standardizes its inputs with other "
                              "statistics than the model passed to fit; pass a model without "
                              "input scaling (it is then taken from the checkpoint)")


def _planned_steps(state: dict, schedule, steps_per_epoch: int) -> int | None:
    """The steps the checkpoint's run was planned for: stored since train state "total_steps";
    for older checkpoints the schedule's own horizon, else None (unknown).
    """
    planned = state.get("total_steps")
    if isinstance(planned, int) and not isinstance(planned, bool) and planned >= 1:
        return planned
    epochs = state.get("epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1:
        return epochs * steps_per_epoch
    return schedule.horizon


def _resume_schedule(trainer, state, name, steps_per_epoch, extend_schedule) -> None:
    """Resuming past the end the checkpoint's run was planned for: stretch or warn.

    The schedule was built for the checkpoint's planned step count (its horizon, stored in the
    train state as ``total_steps``). A run resumed with more epochs than that would otherwise
    train its extra steps at the schedule's end value -- lr 0 after a cosine decay.
    """
    opt, new = trainer.optimizer, trainer.total_steps
    sched = opt.schedule
    if sched is None or isinstance(sched, sched_mod.Constant):
        return
    planned = _planned_steps(state, sched, steps_per_epoch)
    if planned is None or new <= planned:
        return
    if extend_schedule:
        opt.schedule = sched.extended(planned, new)
        return
    warnings.warn(
        f"resuming from {name!r} to {trainer.epochs} epochs ({new} steps), but its learning-rate "
        f"schedule {sched!r} was planned for {planned} steps: the {new - planned} extra steps "
        f"would train at lr {_lr_range(sched, planned, new)}, the schedule's end. Pass "
        "fit(..., extend_schedule=True) to stretch the schedule over "
        f"{new} steps (as if the run had been planned for {trainer.epochs} epochs from the "
        "start).", ScheduleHorizonWarning, stacklevel=4)


def _lr_range(sched, first: int, end: int) -> str:
    lo, hi = sched(first), sched(end - 1)
    return f"{lo:.3g}" if lo == hi else f"{lo:.3g} .. {hi:.3g}"


class ScheduleHorizonWarning(UserWarning):
    """Training runs past the end of its learning-rate schedule."""


def _check_horizon(sched, total_steps: int) -> None:
    """Warn when a fresh run's schedule reaches lr 0 before its last step (steps wasted)."""
    horizon = None if sched is None else sched.horizon
    if horizon is None or total_steps <= horizon or sched(horizon) > 0:
        return
    warnings.warn(
        f"the learning-rate schedule {sched!r} reaches lr 0 at step {horizon}, but this fit "
        f"runs {total_steps} steps: the last {total_steps - horizon} steps would not train. "
        f"Build the schedule with total_steps={total_steps} (minus any warm-up), or give "
        "schedule= by name so fit sizes it.", ScheduleHorizonWarning, stacklevel=3)


def _loop(trainer, X, y, sw, val, callbacks, steps_per_epoch, guard, guard_every, progress,
          train_metrics):
    model, loss, opt, history = trainer.model, trainer.loss, trainer.optimizer, trainer.history
    be = model.backend
    n, bs = len(X), trainer.batch_size
    m = min(bs, n)
    # host staging buffers: each batch is gathered into them, then copied to the device once
    xbuf = np.empty((m, X.shape[1]), X.dtype)
    ybuf = np.empty((m, *y.shape[1:]), y.dtype)
    wbuf = None if sw is None else np.empty(m, sw.dtype)
    grads = {}
    checked = _checked(loss)
    acc_full = be.zeros((), np.float64)  # sum of full-batch mean losses, on the device
    shown = _Progress(progress, n, trainer.epochs)
    g = _Guard(model, opt, guard_every) if guard else None
    val_y = None if val is None else (val[0], be.asarray(val[1]), val[2])
    dist = trainer.dist

    def batch(order, s):
        idx = order[s * bs:(s + 1) * bs]
        if dist is not None:  # this rank's rows of the global batch
            idx = dist.shard(idx)
        nb = len(idx)
        np.take(X, idx, axis=0, out=xbuf[:nb])
        np.take(y, idx, axis=0, out=ybuf[:nb])
        wb = None
        if wbuf is not None:
            np.take(sw, idx, axis=0, out=wbuf[:nb])
            wb = be.upload(wbuf[:nb], "w")
        grad = grads.get(nb)
        if grad is None:
            grad = grads[nb] = be.empty((nb, model.n_out), model.dtype)
        return idx, be.upload(xbuf[:nb], "x"), be.upload(ybuf[:nb], "y"), wb, grad

    for epoch in range(trainer.epochs_done, trainer.epochs):
        trainer.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_begin(epoch, {})
        t0 = time.perf_counter()
        order = trainer.rng.permutation(n) if trainer.shuffle else np.arange(n)
        if g is not None:
            if not g.finite():  # changed between epochs (by a callback or the caller)
                _diverged(trainer, g, epoch, 0, -1, order, batch)
            g.snapshot(trainer.step, f"the start of epoch {epoch}")
            g.first_step = 0
        lr_epoch = opt.lr
        acc_full[...] = 0
        last = None
        bar = shown.bar(epoch)
        for s in range(steps_per_epoch):
            _, xb, yb, wb, grad = batch(order, s)
            pred = model.forward(xb, training=True, step=trainer.step)
            value = loss.forward_backward_(pred, yb, grad, wb, backend=be, **checked)
            if dist is not None:  # weigh this rank's share of the global batch mean
                value = dist.scale_(grad, value)
            model.backward(grad, input_grad=False)
            if dist is not None:
                dist.allreduce_grads_()
            opt.step()
            if (s + 1) * bs <= n:  # a full global batch
                acc_full += value
            else:
                last = value
            trainer.step += 1
            if bar is not None:
                bar.update(min(bs, n - s * bs))
            for cb in callbacks:
                cb.on_batch_end(trainer.step, {"size": xb.shape[0]})
            if g is not None and g.every and (s + 1) % g.every == 0 and s + 1 < steps_per_epoch:
                if not g.finite(acc_full):
                    _diverged(trainer, g, epoch, g.first_step, s, order, batch)
                g.snapshot(trainer.step, f"epoch {epoch}, step {s}")
                g.first_step = s + 1
                if bar is not None:
                    bar.set_postfix(loss=f"{float(acc_full) / (s + 1):.4f}")
        if g is not None and not g.finite(acc_full):
            _diverged(trainer, g, epoch, g.first_step, steps_per_epoch - 1, order, batch)
        full = n // bs
        acc = acc_full
        if dist is not None:  # the ranks' shares of the loss, added
            acc, last = dist.sum_losses(acc_full, last)
        total = float(acc) * bs + (0.0 if last is None else float(last) * (n - full * bs))
        logs = {"loss": total / n}
        if train_metrics:
            logs.update({k: v for k, v in _evaluate(model, loss, X, y, sw, 4096).items()
                         if k != "loss"})
        if val_y is not None:
            res = _evaluate(model, loss, val[0], val_y[1], val[2], 4096)
            logs.update({f"val_{k}": v for k, v in res.items()})
        logs["lr"] = lr_epoch
        logs["time"] = time.perf_counter() - t0
        shown.epoch_end(bar, epoch, logs)
        history.append(epoch, logs)
        trainer.epochs_done = epoch + 1
        if g is not None:
            g.snapshot(trainer.step, f"the end of epoch {epoch}")
            g.first_step = 0
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if trainer.stop_training:
            break


def _scan_params(model, when: str):
    """(layer, array, description) of the first non-finite parameter, or None."""
    xp = model.backend.xp
    for layer in model.layers:
        for arr, nm in ((layer.W, "W"), (layer.b, "b")):
            if _nonfinite(xp, arr):
                return (layer.name, nm, f"parameter {layer.name}.{nm}, {when}")
    return None


def _diverged(trainer, g, epoch, first, last, order, batch):
    """Rewind to the guard's snapshot, find the first non-finite array, raise DivergenceError.

    ``first..last``: the steps of this epoch since the snapshot (``last < first``: none; the
    parameters went bad outside any step).
    """
    model, loss, opt = trainer.model, trainer.loss, trainer.optimizer
    found, step = None, first
    if last < first:
        found = _scan_params(model, "changed outside the training step (by a callback or the "
                                    "caller) before the epoch's first step")
        g.restore(trainer)
    else:
        g.restore(trainer)
        for step in range(first, last + 1):
            idx, xb, yb, wb, grad = batch(order, step)
            found = _diagnose_step(model, loss, opt, xb, yb, wb, grad, idx,
                                   g.step + step - first)
            if found is not None:
                break
        g.restore(trainer)
    if found is None:
        layer = array = None
        where = ("an array that could not be located: the failure did not reproduce when "
                 "replaying from the last finite state (were the parameters or data changed "
                 "outside the step, e.g. by a callback?)")
    else:
        layer, array, where = found
    err = DivergenceError(
        f"training diverged in epoch {epoch}, step {step} of the epoch (global step "
        f"{g.step + step - first + 1}): first non-finite value in {where}. The model and "
        f"optimizer were restored to their last finite state ({g.where}). Try a lower "
        "learning rate or clip_norm, or check the data.")
    err.epoch, err.step, err.layer, err.array = epoch, step, layer, array
    raise err


class _Progress:
    """One line per epoch on stderr: a live tqdm bar on a terminal, else a plain line.

    ``mode``: "auto" shows the bar only on a terminal; True also prints a plain line per epoch
    (flushed as it is written) when stderr is a pipe or file; False shows nothing. The bar
    ends with the epoch's logs, so the line it leaves is the epoch's summary.
    """

    def __init__(self, mode, n: int, epochs: int):
        stream = sys.stderr
        tty = stream is not None and _isatty(stream)
        self.stream, self.n, self.epochs = stream, n, epochs
        self.kind = ("tqdm" if tty and mode else "plain" if mode is True and stream is not None
                     else None)

    def bar(self, epoch: int):
        if self.kind != "tqdm":
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.n, desc=f"epoch {epoch + 1}/{self.epochs}", unit="sample",
                    unit_scale=True, leave=True, file=self.stream)

    def epoch_end(self, bar, epoch: int, logs: dict) -> None:
        fields = {k: v for k, v in logs.items() if k not in ("lr", "time")}
        if bar is not None:
            bar.set_postfix({k: f"{v:.4g}" for k, v in fields.items()}, refresh=False)
            bar.close()
        elif self.kind == "plain":
            rate = self.n / logs["time"] if logs["time"] > 0 else float("inf")
            parts = "  ".join(f"{k} {v:.4g}" for k, v in fields.items())
            self.stream.write(f"epoch {epoch + 1}/{self.epochs}  {parts}  lr {logs['lr']:.3g}  "
                              f"{logs['time']:.2f}s ({rate:,.0f} samples/s)\n")
            self.stream.flush()


def _isatty(stream) -> bool:
    """A terminal a bar can be drawn on (a pty reporting 0 columns would get empty bars)."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # a terminal-like object without a fd
        return True
