"""The fit loop: batches to the device at the edge, fused forward/loss/backward/step, History."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np

from devnet import losses as losses_mod
from devnet import metrics
from devnet import optim as optim_mod
from devnet.errors import ConfigError


class History:
    """Per-epoch records: ``history["loss"]``, ``["val_loss"]``, the task metric, ``lr``, time."""

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

    def __repr__(self) -> str:
        keys = ", ".join(self.history)
        return f"History(epochs={len(self.epoch)}, keys=[{keys}])"


class Callback:
    """Hooks called by ``fit``; set ``self.trainer.stop_training = True`` to stop."""

    trainer: Trainer

    def on_train_begin(self, logs: dict) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict) -> None: ...

    def on_batch_end(self, step: int, logs: dict) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_train_end(self, logs: dict) -> None: ...


def metric_names(loss: losses_mod.Loss) -> tuple[str, ...]:
    """The task metrics reported for ``loss``: accuracy, or R2 and MAE for regression."""
    return ("accuracy",) if loss.classification else ("r2", "mae")


def evaluate(model, X, y, loss="mse", batch_size: int = 4096, sample_weight=None) -> dict:
    """Mean loss and task metrics of ``model`` on (X, y), batched; returns floats."""
    loss = losses_mod.get(loss)
    pred = model.predict(X, batch_size=batch_size)
    be = model.backend
    pred_d = be.asarray(pred)
    y_d = be.asarray(y)
    w = None if sample_weight is None else be.asarray(sample_weight, dtype=model.dtype)
    grad = be.empty(pred_d.shape, model.dtype)
    value = float(loss.forward_backward_(pred_d, y_d, grad, w, backend=be))
    return {"loss": value, **_metrics(loss, pred_d, y_d)}


def _metrics(loss, pred, y) -> dict:
    if loss.classification:
        return {"accuracy": metrics.accuracy(pred, y, loss.link)}
    return {"r2": metrics.r2(pred, y), "mae": metrics.mae(pred, y)}


def predict_proba(model, X, loss="cross_entropy", batch_size: int = 4096):
    """Class probabilities: the loss's link (softmax / sigmoid) applied to the model's outputs."""
    from devnet.kernels import reference

    loss = losses_mod.get(loss)
    out = model.predict(X, batch_size=batch_size)
    return reference.act_fwd(loss.link, out)


class Trainer:
    """The state of one ``fit`` call (shared with callbacks)."""

    def __init__(self, model, loss, optimizer, history):
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.history = history
        self.stop_training = False
        self.epoch = 0
        self.step = 0


def fit(model, X, y, loss="mse", optimizer="adam", epochs: int = 10, batch_size: int = 32,
        validation_data: tuple | None = None, validation_split: float | None = None,
        shuffle: bool = True, seed: int | None = 0, callbacks: Sequence[Callback] = (),
        progress: bool = True, lr: float | None = None, sample_weight=None) -> History:
    """Train ``model`` on (X, y); returns a History.

    Args:
        X: (n, n_in) features; y: targets for ``loss`` (labels (n,) for cross_entropy).
        loss: a name from ``devnet.losses.LOSSES`` or a Loss.
        optimizer: a name from ``devnet.optim.OPTIMIZERS`` or an Optimizer over the model.
        lr: learning rate (or Schedule) for an optimizer given by name.
        validation_data / validation_split: held-out data, or the last fraction of (X, y).
        seed: seeds the shuffling.
    """
    loss = losses_mod.get(loss)
    opt_kwargs = {} if lr is None else {"lr": lr}
    opt = optim_mod.get(optimizer, model, **opt_kwargs)
    be, dtype = model.backend, model.dtype
    X = np.ascontiguousarray(X, dtype=dtype) if not be.is_array(X) else be.asarray(X, dtype)
    y = np.asarray(y) if not be.is_array(y) else y
    if validation_split is not None:
        if validation_data is not None:
            raise ConfigError("give validation_data or validation_split, not both")
        n_val = int(round(len(X) * validation_split))
        X, validation_data = X[:-n_val], (X[-n_val:], y[-n_val:])
        y = y[:-n_val]
    if loss.classification and y.dtype.kind == "f" and y.ndim == 2:
        y = y.astype(dtype)
    elif not loss.classification:
        y = y.astype(dtype)

    history = History()
    history.params = {"epochs": epochs, "batch_size": batch_size, "n_samples": len(X)}
    trainer = Trainer(model, loss, opt, history)
    for cb in callbacks:
        cb.trainer = trainer
        cb.on_train_begin({})

    rng = np.random.default_rng(seed)
    n = len(X)
    grad_bufs: dict[int, object] = {}
    show = progress and sys.stderr.isatty()
    for epoch in range(epochs):
        trainer.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_begin(epoch, {})
        t0 = time.perf_counter()
        order = rng.permutation(n) if shuffle else np.arange(n)
        total = 0.0
        lr_epoch = opt.lr
        bar = _progress_bar(n, epoch, epochs) if show else None
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb = be.asarray(X[idx])
            yb = be.asarray(y[idx])
            nb = xb.shape[0]
            grad = grad_bufs.get(nb)
            if grad is None:
                grad = grad_bufs[nb] = be.empty((nb, model.n_out), dtype)
            pred = model.forward(xb)
            value = loss.forward_backward_(pred, yb, grad, backend=be)
            model.backward(grad, input_grad=False)
            opt.step()
            total = total + value * nb
            trainer.step += 1
            if bar is not None:
                bar.update(nb)
            for cb in callbacks:
                cb.on_batch_end(trainer.step, {"size": nb})
        be.synchronize()
        logs = {"loss": float(total) / n}
        if bar is not None:
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            bar.close()
        if validation_data is not None:
            val = evaluate(model, *validation_data, loss=loss)
            logs.update({f"val_{k}": v for k, v in val.items()})
        logs["lr"] = lr_epoch
        logs["time"] = time.perf_counter() - t0
        history.append(epoch, logs)
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if trainer.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end({})
    return history


def _progress_bar(n: int, epoch: int, epochs: int):
    from tqdm.auto import tqdm

    return tqdm(total=n, desc=f"epoch {epoch + 1}/{epochs}", unit="sample", leave=False)
