"""``fit``, ``evaluate``, ``predict``: the loop around one ``Step`` fed by one ``Feed``.

Inputs are checked once (``devnet.validation``) before the first step; a step reads nothing
back from the device. Non-finite values are caught by a guard that reads one device scalar per
check (see ``guard.Guard``), not one per step.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence

import numpy as np

from devnet import losses as losses_mod
from devnet import metrics
from devnet.errors import ConfigError, DataError
from devnet.kernels.reference import get_xp
from devnet.optim import schedules as sched_mod
from devnet.train.engine import check_engine, choose
from devnet.train.feed import make_feed
from devnet.train.guard import Guard, diverged
from devnet.train.history import Callback, History
from devnet.train.progress import Progress
from devnet.train.setup import (
    Trainer,
    check_callbacks,
    check_horizon,
    check_link,
    make_optimizer,
    progress_mode,
    resolve_loss,
    resume,
)
from devnet.train.step import Step, checked_kwargs
from devnet.validation import (
    check_model,
    check_sample_weight,
    check_validation_data,
    check_X,
    check_y,
    flag,
    fraction,
    positive_int,
    positive_number,
)
from devnet.validation import seed as check_seed

_log = logging.getLogger("devnet")


def metric_names(loss: losses_mod.Loss) -> tuple[str, ...]:
    """The task metrics reported for ``loss``: accuracy, or R2 and MAE for regression."""
    return ("accuracy",) if loss.classification else ("r2", "mae")


# --- evaluation and prediction ----------------------------------------------------------------

def evaluate(model, X, y, loss="auto", batch_size: int = 4096, sample_weight=None,
             task: str = "auto") -> dict:
    """Mean loss and task metrics of ``model`` on (X, y), forward in batches; returns floats.

    X: (n, n_in); y: targets for ``loss``; sample_weight: (n,) or None. ``loss="auto"`` (the
    default, as in fit) and ``task`` pick the loss by fit's rule (``devnet.task``) from y and
    the model's outputs: cross_entropy for class labels and several outputs,
    binary_cross_entropy for 0/1 labels and one output, else mse. Pass the loss fit used
    (``history.params["loss"]``) to score a small set whose labels are ambiguous.
    """
    check_model(model)
    batch_size = positive_int("batch_size", batch_size)
    X = check_X(model, X)
    loss = resolve_loss(model, loss, task, y)
    y = check_y(model, loss, y, len(X))
    w = check_sample_weight(model, sample_weight, len(X))
    return _evaluate(model, loss, X, y, w, batch_size, finite_outputs=True)


def _evaluate(model, loss, X, y, w, batch_size: int, finite_outputs: bool = False) -> dict:
    """Loss and metrics, weighted by w; they are NaN for NaN / Inf outputs, which
    ``finite_outputs`` refuses instead (evaluate's edge; fit's guard reports them itself)."""
    be = model.backend
    pred = _forward_all(model, X, batch_size)
    y_d = be.asarray(y)
    w_d = None if w is None else be.asarray(w)
    with be.scope():
        if finite_outputs:
            _check_outputs(be.xp, pred)
        grad = be.empty(pred.shape, model.dtype)
        value = float(loss.forward_backward_(pred, y_d, grad, w_d, backend=be,
                                              **checked_kwargs(loss)))
        return {"loss": value, **_metrics(loss, pred, y_d, w_d)}


def _check_outputs(xp, pred) -> None:
    """A DataError when the model outputs NaN / Inf for finite X (checked at the edge)."""
    bad = ~xp.isfinite(pred).all(axis=1)
    n_bad = int(bad.sum())
    if n_bad:
        raise DataError(f"the model outputs NaN or Inf for {n_bad} of {len(pred)} samples of "
                        f"finite X (first row {int(xp.argmax(bad))}), so no score means "
                        "anything: its parameters hold NaN / Inf (check "
                        "np.isfinite(model.params)) or overflow its dtype; reload a checkpoint "
                        "or retrain (fit's guard=True stops at the first non-finite value)")


def _forward_all(model, X, batch_size: int):
    """Outputs (n, n_out) on the model's device for host X (n, n_in), one batch at a time:
    inference (``MLP.infer_``, safe from many threads), never the training forward's buffers."""
    be = model.backend
    with be.scope(), model._usage.shared("predict / evaluate"):
        out = be.empty((len(X), model.n_out), model.dtype)
        for i in range(0, len(X), batch_size):
            model.infer_(be.asarray(X[i:i + batch_size]), out[i:i + batch_size])
    return out


def _metrics(loss, pred, y, w=None) -> dict:
    if loss.classification:
        return {"accuracy": metrics.accuracy(pred, y, loss.link, w)}
    if loss.link == "exp":  # a log-link model outputs log(mean): score the mean it predicts
        pred = get_xp(pred).exp(pred)
    return {"r2": metrics.r2(pred, y, w), "mae": metrics.mae(pred, y, w)}


def predict(model, X, batch_size: int = 4096) -> np.ndarray:
    """Raw outputs (n, n_out) of ``model`` for X (n, n_in), in batches; a NumPy array."""
    check_model(model)
    batch_size = positive_int("batch_size", batch_size)
    X = check_X(model, X)
    return model.backend.to_numpy(_forward_all(model, X, batch_size))


def predict_proba(model, X, loss="auto", batch_size: int = 4096) -> np.ndarray:
    """Class probabilities: the loss's link (softmax / sigmoid) on the outputs.

    (n, n_out); for one sigmoid output (binary_cross_entropy) (n, 2): [1 - p, p], the columns
    of classes 0 and 1, as scikit-learn's binary classifiers. ``loss="auto"`` (the default)
    is the classification loss fit's "auto" trains this model with: cross_entropy for several
    outputs, binary_cross_entropy for one.
    """
    from devnet.kernels import reference

    check_model(model)
    if isinstance(loss, str) and loss == "auto":
        loss = "binary_cross_entropy" if model.n_out == 1 else "cross_entropy"
    loss = losses_mod.get(loss)
    if not loss.classification:
        raise ConfigError(f"predict_proba needs a classification loss (its link makes the "
                          f"outputs probabilities); {loss.name!r} is a regression loss: use "
                          "predict")
    check_link(model, loss)
    if loss.link == "softmax" and model.n_out < 2:
        # a softmax over one column is 1.0 for every sample, whatever the model says
        raise ConfigError(f"predict_proba with {loss.name} needs a model with one output per "
                          "class (at least 2), this one has 1; a one-output binary model is "
                          "read with loss='binary_cross_entropy' (probabilities [1 - p, p])")
    out = predict(model, X, batch_size)
    if loss.link == "sigmoid" and out.shape[1] == 1:  # sigmoid(-z), not 1 - p: exact near 1
        out = np.concatenate([-out, out], axis=1)
    return reference.act_fwd(loss.link, out)


# --- fit ----------------------------------------------------------------------------------------

def _claims_model(fit_function):
    """Run fit with the model claimed for this thread (``MLP._usage``): a second fit of it
    from another thread, or its inference from another thread meanwhile, is refused with
    ModelBusyError instead of interleaving with the updates."""
    @functools.wraps(fit_function)
    def run(model, *args, **kwargs):
        check_model(model)
        with model._usage.exclusive("dn.fit"):
            return fit_function(model, *args, **kwargs)
    return run


@_claims_model
def fit(model, X, y, loss="auto", optimizer="adam", epochs: int = 10, batch_size: int = 32,
        validation_data: tuple | None = None, validation_split: float | None = None,
        shuffle: bool = True, seed: int | None = 0, callbacks: Sequence[Callback] = (),
        progress: bool | str = "auto", lr=None, schedule=None, sample_weight=None,
        resume_from=None, checkpoint=None, checkpoint_every: int = 1, guard: bool = True,
        guard_every: int | None = None, train_metrics: bool = True, task: str = "auto",
        extend_schedule: bool = False, comm=None, engine: str = "auto") -> History:
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
        schedule: a Schedule, a config dict, or a name from ``setup.SCHEDULES`` built from lr
            and the run's total step count; stepped per optimizer step.
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
            ``guard_every`` steps (default: once per epoch) -- see ``guard.Guard``.
        train_metrics: also compute the task metric on the training data at each epoch end
            (one extra forward pass over it).
        progress: one line per epoch on stderr. "auto": a live tqdm bar per epoch when stderr
            is a terminal, nothing otherwise; True: the tqdm bar on a terminal, else a plain
            line printed (and flushed) at each epoch end; False: nothing.
        comm: a ``devnet.distributed.init()`` communicator: data-parallel training over its
            ranks (``devnet.distributed``); batch_size stays the global batch, rank 0 alone
            shows progress and writes checkpoints and CSV logs.
        engine: "auto", "python", "compiled" or "graph" (``devnet.train.engine``):
            "compiled" runs each block of steps between the guard's checks as one compiled
            call on the CPU (same results as the Python step); "graph" captures the step on
            CUDA once as a CUDA graph and replays it per step; "auto" runs the one the device
            has where the model, loss, optimizer, callbacks and data allow it, else the Python
            step; "compiled" or "graph" where they do not is a ConfigError naming the reason.
            ``history.params["engine"]`` and ``["engine_reason"]`` say which ran and why (also
            logged on the "devnet" logger).
    """
    check_model(model)
    epochs = positive_int("epochs", epochs)
    batch_size = positive_int("batch_size", batch_size)
    checkpoint_every = positive_int("checkpoint_every", checkpoint_every)
    guard_every = None if guard_every is None else positive_int("guard_every", guard_every)
    if lr is not None and not isinstance(lr, sched_mod.Schedule):
        lr = positive_number("lr", lr)
    seed = check_seed("seed", seed)
    shuffle = flag("shuffle", shuffle)
    guard = flag("guard", guard)
    train_metrics = flag("train_metrics", train_metrics)
    extend_schedule = flag("extend_schedule", extend_schedule)
    progress = progress_mode(progress)
    callbacks = check_callbacks(callbacks)
    engine = check_engine(engine)

    X = check_X(model, X)
    loss = resolve_loss(model, loss, task, y)
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

    # data that is the model's own forward output (``fit(model, model.forward(X0), y)``)
    # would be overwritten by the first step of its batch size: train on a copy
    X, y, sw = (a if a is None or not model.owns(a) else a.copy() for a in (X, y, sw))
    if val is not None:
        val = tuple(a if a is None or not model.owns(a) else a.copy() for a in val)
    n = len(X)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    opt = make_optimizer(optimizer, model, lr, schedule, total_steps)
    history = History()
    trainer = Trainer(model, loss, opt, history, epochs, batch_size, seed, shuffle, n,
                      total_steps)
    if resume_from is not None:
        opt = resume(trainer, optimizer, resume_from, steps_per_epoch, extend_schedule)
        history = trainer.history
    else:
        check_horizon(opt.schedule, total_steps)
    history.params = {"epochs": epochs, "batch_size": batch_size, "n_samples": n,
                      "steps_per_epoch": steps_per_epoch, "loss": loss.name}
    if checkpoint is not None:
        from devnet.callbacks import ModelCheckpoint

        callbacks.append(ModelCheckpoint(checkpoint, every=checkpoint_every))
    if comm is not None:  # data-parallel: check the ranks agree, broadcast rank 0's state
        from devnet.distributed import DataParallel

        trainer.dist = DataParallel(comm, trainer, X, y, sw)
        progress, callbacks = trainer.dist.root_only(progress, callbacks)
    for cb in callbacks:
        cb.trainer = trainer
    try:
        for cb in callbacks:
            cb.on_train_begin({})
        # overflow is the guard's business: it reports where, NumPy's warnings only add noise
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
                model.backend.scope(), model.backend.thread_limits():
            _loop(trainer, X, y, sw, val, callbacks, steps_per_epoch, guard, guard_every,
                  progress, train_metrics, engine, keep_plans=opt is optimizer)
    except BaseException as exc:
        for cb in callbacks:
            cb.on_train_abort(exc)
        raise
    for cb in callbacks:
        cb.on_train_end({})
    return history


#: The compiled engine runs an epoch as blocks of steps and reads ``stop_training`` between
#: them: a block holds at most BLOCK_STEPS steps and at most BLOCK_WORK batch rows x model
#: parameters (one step at least). On one CPU core that is a few ms to ~50 ms of steps (small
#: matrices run far below BLAS peak), however long the epoch: what a stop asked for mid-epoch
#: (Ctrl-C in ``devnet train``) waits, while the ~20 us of Python per block stays under 1 %.
BLOCK_STEPS = 4096
BLOCK_WORK = 1 << 27


def block_steps(model, batch_size: int) -> int:
    """The most steps of ``batch_size`` rows one compiled block of ``model`` runs."""
    return max(1, min(BLOCK_STEPS, BLOCK_WORK // (batch_size * model.params.size)))


def _compiled_epoch(trainer, runner, order, step, g, epoch, steps_per_epoch, bar,
                    batch_at) -> int:
    """One epoch as blocks of compiled steps, the guard's checks between them (as the Python
    loop makes them: every ``g.every`` steps and at the epoch's end); returns the steps run,
    fewer than ``steps_per_epoch`` when ``trainer.stop_training`` was set meanwhile."""
    n, bs = runner.n, trainer.batch_size
    most = block_steps(trainer.model, bs)
    s = 0
    while s < steps_per_epoch and not trainer.stop_training:
        end = min(steps_per_epoch, s + most)
        if g is not None and g.every:
            end = min(end, (s // g.every + 1) * g.every)
        runner.run(order, s, end - s, trainer.step)  # the step count keys dropout's masks
        trainer.step += end - s
        if bar is not None:
            bar.update(min(end * bs, n) - s * bs)
        s = end
        if g is not None and g.every and s % g.every == 0 and s < steps_per_epoch:
            if not g.finite(step.running):
                diverged(trainer, step, g, epoch, g.first_step, s - 1, batch_at)
            g.snapshot(trainer.step, f"epoch {epoch}, step {s - 1}")
            g.first_step = s
            if bar is not None:
                bar.set_postfix(loss=f"{float(step.running) / s:.4f}")
    return s


def _python_epoch(trainer, run_step, step, g, epoch, n, steps_per_epoch, bar, batch_at,
                  callbacks) -> int:
    """One epoch, one ``run_step`` call per step (the Step or its CUDA graph), the guard's
    checks every ``g.every`` steps; returns the steps run, fewer than ``steps_per_epoch`` when
    ``trainer.stop_training`` was set meanwhile (read between steps; under data parallelism
    only at the epoch's end, where the ranks agree on it)."""
    bs = trainer.batch_size
    alone = trainer.dist is None
    for s in range(steps_per_epoch):
        if alone and trainer.stop_training:
            return s
        batch = batch_at(s)
        rows = min(bs, n - s * bs)  # of the global batch; the last one may be partial
        run_step(batch.x, batch.y, batch.w, trainer.step, 1.0 if rows == bs else rows / bs,
                 row0=batch.row0)
        trainer.step += 1
        if bar is not None:
            bar.update(rows)
        for cb in callbacks:
            cb.on_batch_end(trainer.step, {"size": batch.x.shape[0]})
        if g is not None and g.every and (s + 1) % g.every == 0 and s + 1 < steps_per_epoch:
            if not g.finite(step.running):
                diverged(trainer, step, g, epoch, g.first_step, s, batch_at)
            g.snapshot(trainer.step, f"epoch {epoch}, step {s}")
            g.first_step = s + 1
            if bar is not None:
                bar.set_postfix(loss=f"{float(step.running) / (s + 1):.4f}")
    return steps_per_epoch


def _per_step_callbacks(callbacks) -> str | None:
    """Why ``callbacks`` need the Python step: one of them runs code after every batch."""
    for cb in callbacks:
        if type(cb).on_batch_end is not Callback.on_batch_end:
            return f"the callback {type(cb).__name__} runs on_batch_end after every step"
    return None


def _loop(trainer, X, y, sw, val, callbacks, steps_per_epoch, guard, guard_every, progress,
          train_metrics, engine="auto", keep_plans=False):
    model, loss, opt, history = trainer.model, trainer.loss, trainer.optimizer, trainer.history
    be = model.backend
    n, bs = len(X), trainer.batch_size
    dist = trainer.dist
    step = Step(model, loss, opt, hooks=() if dist is None else (dist,))
    feed = make_feed(be, X, y, sw, capacity=min(bs, n))
    shown = Progress(progress, n, trainer.epochs)
    g = Guard(model, opt, guard_every) if guard else None
    val_y = None if val is None else (val[0], be.asarray(val[1]), val[2])
    ran = choose(engine, step, feed, bs, (
        None if dist is None else "data-parallel training (comm=...) all-reduces every step",
        _per_step_callbacks(callbacks)), weighted=sw is not None, step_index=True,
        keep_plans=keep_plans)
    history.params.update(engine=ran.name, engine_reason=ran.reason)
    _log.log(logging.INFO if progress is True else logging.DEBUG,
             "fit runs the %s engine: %s", ran.name, ran.reason)

    def batch_at(s):
        """The Batch of the epoch's step s (this rank's rows of it under data parallelism, its
        ``row0`` where they start in the step's batch: the dropout masks are the batch's)."""
        lo, hi = s * bs, min((s + 1) * bs, n)
        return feed.batch(lo, hi) if dist is None else dist.batch(feed, lo, hi)

    # the optimizer's table of per-step scalars need not reach past this fit's last step
    opt.expect_steps((trainer.epochs - trainer.epochs_done) * steps_per_epoch)
    for epoch in range(trainer.epochs_done, trainer.epochs):
        trainer.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_begin(epoch, {})
        t0 = time.perf_counter()
        feed.start_epoch(trainer.rng.permutation(n) if trainer.shuffle else None)
        if g is not None:
            if not g.finite():  # changed between epochs (by a callback or the caller)
                diverged(trainer, step, g, epoch, 0, -1, batch_at)
            g.snapshot(trainer.step, f"the start of epoch {epoch}")
            g.first_step = 0
        lr_epoch = opt.lr
        step.reset()
        bar = shown.bar(epoch)
        if ran.runner is not None:
            done = _compiled_epoch(trainer, ran.runner, feed.order, step, g, epoch,
                                   steps_per_epoch, bar, batch_at)
        else:
            done = _python_epoch(trainer, ran.step, step, g, epoch, n, steps_per_epoch, bar,
                                 batch_at, callbacks)
        if done < steps_per_epoch:  # stop_training set mid-epoch: the epoch stays unfinished
            if g is not None and done and not g.finite(step.running):
                diverged(trainer, step, g, epoch, g.first_step, done - 1, batch_at)
            if bar is not None:
                bar.close()
            _log.log(logging.INFO if progress is True else logging.DEBUG,
                     "fit stopped in epoch %d after %d of its %d steps (stop_training): the "
                     "epoch is not recorded", epoch, done, steps_per_epoch)
            break
        if g is not None and not g.finite(step.running):
            diverged(trainer, step, g, epoch, g.first_step, steps_per_epoch - 1, batch_at)
        # running: the batch means summed, each weighted by its share of a full batch
        total = float(step.running) if dist is None else dist.sum_losses(step.running, None)[0]
        logs = {"loss": total * bs / n}
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
