"""The state of one ``fit`` and what it is set up from: the Trainer (shared with callbacks),
optimizers and schedules by name, argument checks, and resuming from a checkpoint.
"""

from __future__ import annotations

import inspect

import numpy as np

from devnet import losses as losses_mod
from devnet import optim as optim_mod
from devnet import task as task_mod
from devnet.errors import CheckpointError, ConfigError, lookup, warn
from devnet.optim import schedules as sched_mod
from devnet.train.history import Callback, History
from devnet.validation import _host


class Trainer:
    """The state of one ``fit`` call (shared with callbacks).

    ``epoch``: the current 0-based epoch; ``epochs_done``: epochs completed (the resume point);
    ``step``: optimizer steps taken by fit; ``rng``: the shuffling Generator;
    ``stop_training``: set True to stop at the next epoch end or step boundary (``Callback``).
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
                warn(f"resuming from {name!r} with {key}={getattr(self, key)!r} but "
                     f"the checkpoint was trained with {state[key]!r}: the result will "
                     "not match an uninterrupted run")


# --- schedules by name --------------------------------------------------------------------------

# fit's names are the one table of devnet.optim.schedules (the CLI's too): built from lr and the
# run's step count, with ``{"name": ..., **overrides}`` dicts as ``schedules.build`` reads them
SCHEDULES = sched_mod.NAMED


def _schedule(schedule, lr: float, total_steps: int):
    """A Schedule from a Schedule, a name in ``SCHEDULES``, a ``{"name": ..., **overrides}``
    dict or a ``Schedule.config()`` dict (``schedules.build``)."""
    return sched_mod.build(schedule, lr, total_steps)


def make_optimizer(optimizer, model, lr, schedule, total_steps: int):
    if isinstance(optimizer, optim_mod.Optimizer):
        opt = optimizer
        if opt.params.data is not model.params:
            raise ConfigError("optimizer was built over other parameters (another model, or "
                              "before model.to(...)): build it with model.parameters()")
        if lr is not None:
            raise ConfigError("lr was given with an optimizer instance; set the learning rate "
                              "when building the optimizer")
        opt.validate()  # fields written since it was built: refused before anything runs
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


PROGRESS = (True, False, "auto")


def progress_mode(progress) -> bool | str:
    if isinstance(progress, (bool, np.bool_)):
        return bool(progress)
    if progress == "auto":
        return "auto"
    raise ConfigError(f"progress must be True, False or 'auto', got {progress!r}")


def resolve_loss(model, loss, task, y) -> losses_mod.Loss:
    """The Loss for fit: ``loss`` itself, or for "auto" the one ``devnet.task`` picks."""
    task = task_mod.check_task(task)
    if isinstance(loss, str) and loss == "auto":
        arr = _host("y", y, model.backend)
        chosen = task_mod.infer_task(arr, task)
        return check_link(model, losses_mod.get(task_mod.default_loss(chosen, arr,
                                                                       model.n_out)))
    loss = losses_mod.get(loss)
    check_link(model, loss)
    if task != "auto" and (task == "classification") != bool(loss.classification):
        fits = [name for name, cls in losses_mod.LOSSES.items()
                if bool(getattr(cls, "classification", False)) == (task == "classification")]
        raise ConfigError(f"loss {loss.name!r} is a "
                          f"{'classification' if loss.classification else 'regression'} loss "
                          f"but task={task!r}; use one of {', '.join(sorted(fits))} or "
                          "loss='auto' for this task, or change task")
    return loss


# output activations that already are a probability link
_LINKS = frozenset({"softmax", "sigmoid"})


def check_link(model, loss: losses_mod.Loss) -> losses_mod.Loss:
    """``loss``, unless it applies a link (softmax / sigmoid) to outputs the model has already
    put through one: the loss, accuracy and predict_proba would apply it a second time
    (softmax(softmax(z)) is near-uniform, sigmoid outputs read as logits are all > 0)."""
    out_act = model.output_activation
    if loss.link in _LINKS and out_act in _LINKS:
        raise ConfigError(
            f"loss {loss.name!r} applies {loss.link} itself to the model's outputs (it takes "
            f"logits), but this model's output_activation={out_act!r} has already applied "
            f"{out_act}: the link would be applied twice. Build the model with "
            "output_activation='identity' (predict_proba applies the link), or use a loss on "
            "the outputs as they are, such as 'mse'")
    return loss


def check_callbacks(callbacks) -> list:
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


def resume(trainer, optimizer, path, steps_per_epoch: int, extend_schedule: bool):
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
    io.check_loss(ck.train_state.get("loss"), trainer.loss, name)
    trainer.restore(ck.train_state, name)
    if trainer.epochs_done >= trainer.epochs:
        warn(f"{name!r} has already trained {trainer.epochs_done} epochs and fit was "
             f"given epochs={trainer.epochs}, the total to reach: nothing is trained. "
             f"Pass epochs > {trainer.epochs_done} to continue")
    model.backend.assign(model.params, ck.model.params)
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
    warn(
        f"resuming from {name!r} to {trainer.epochs} epochs ({new} steps), but its learning-rate "
        f"schedule {sched!r} was planned for {planned} steps: the {new - planned} extra steps "
        f"would train at lr {_lr_range(sched, planned, new)}, the schedule's end. Pass "
        "fit(..., extend_schedule=True) to stretch the schedule over "
        f"{new} steps (as if the run had been planned for {trainer.epochs} epochs from the "
        "start).", ScheduleHorizonWarning)


def _lr_range(sched, first: int, end: int) -> str:
    lo, hi = sched(first), sched(end - 1)
    return f"{lo:.3g}" if lo == hi else f"{lo:.3g} .. {hi:.3g}"


class ScheduleHorizonWarning(UserWarning):
    """Training runs past the end of its learning-rate schedule."""


def check_horizon(sched, total_steps: int) -> None:
    """Warn when a fresh run's schedule reaches lr 0 before its last step (steps wasted)."""
    horizon = None if sched is None else sched.horizon
    if horizon is None or total_steps <= horizon or sched(horizon) > 0:
        return
    warn(
        f"the learning-rate schedule {sched!r} reaches lr 0 at step {horizon}, but this fit "
        f"runs {total_steps} steps: the last {total_steps - horizon} steps would not train. "
        f"Build the schedule with total_steps={total_steps} (minus any warm-up), or give "
        "schedule= by name so fit sizes it.", ScheduleHorizonWarning)


