"""Callbacks for ``fit``: early stopping, checkpoints, learning-rate changes, CSV logs, and
the gradient-flow monitor.

Each callback gets ``self.trainer`` (the running ``devnet.train.Trainer``: model, optimizer,
history, epoch, step, ``stop_training``) before ``on_train_begin``. Epoch numbers are 0-based.
"""

from __future__ import annotations

import csv
import inspect
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from devnet.errors import CheckpointError, ConfigError
from devnet.train.history import Callback
from devnet.train.plot import GRAD_NORM, UPDATE_RATIO, plot_gradient_flow  # noqa: F401 (re-export)
from devnet.validation import count, flag, positive_int, real

# GradientFlow and plot_gradient_flow join __all__ once devnet/__init__.py re-exports them
__all__ = ["CSVLogger", "Callback", "EarlyStopping", "LearningRateScheduler", "ModelCheckpoint"]

_MAX_METRICS = ("accuracy", "r2")  # metrics where larger is better


def _path(who: str, path) -> str:
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ConfigError(f"{who} path must be a non-empty str or os.PathLike, got {path!r} "
                          f"({type(path).__name__})")
    return os.fspath(path)


def _monitored(logs: dict, monitor: str, who: str) -> float:
    if monitor not in logs:
        hint = " (pass validation_data or validation_split to fit)" if monitor.startswith(
            "val_") else ""
        raise ConfigError(f"{who} monitors {monitor!r} but the epoch logs have only "
                          f"{', '.join(sorted(logs))}{hint}")
    return float(logs[monitor])


class _Improvement:
    """Tracks the best value of a monitored quantity."""

    def __init__(self, monitor: str, mode: str, min_delta: float):
        if not isinstance(monitor, str) or not monitor:
            raise ConfigError(f"monitor must be the name of an epoch log entry (e.g. 'loss', "
                              f"'val_loss', 'val_accuracy'), got {monitor!r}")
        if mode == "auto":
            mode = "max" if monitor.removeprefix("val_") in _MAX_METRICS else "min"
        elif mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        if not (real(min_delta) and min_delta >= 0):
            raise ConfigError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        self.min_delta = float(min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    With ``restore_best=True`` (the default) the model ends with the weights of its best epoch
    (kept as a device copy of the flat parameter buffer, one copy per improvement).
    ``mode``: "auto" (max for accuracy / r2, min otherwise), "min" or "max".
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 restore_best: bool = True, mode: str = "auto"):
        self.tracker = _Improvement(monitor, mode, min_delta)
        self.monitor = monitor
        self.patience = count("patience", patience)
        self.restore_best = flag("restore_best", restore_best)
        self.wait, self.best_epoch, self.stopped_epoch = 0, None, None
        self._best_params = None

    def on_train_begin(self, logs: dict) -> None:
        self.wait, self.stopped_epoch = 0, None

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        value = _monitored(logs, self.monitor, "EarlyStopping")
        if self.tracker.improved(value):
            self.tracker.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                params = self.trainer.model.params
                if self._best_params is None or self._best_params.shape != params.shape:
                    self._best_params = params.copy()
                else:
                    self.trainer.model.backend.assign(self._best_params, params)
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True

    def on_train_end(self, logs: dict) -> None:
        if self.restore_best and self._best_params is not None:
            self.trainer.model.backend.assign(self.trainer.model.params, self._best_params)

    @property
    def best(self) -> float:
        return self.tracker.best


class ModelCheckpoint(Callback):
    """Save a resumable checkpoint (model, optimizer, History, RNG) at the end of epochs.

    Args:
        path: file path; may contain ``{epoch}`` (1-based) and any log key, e.g.
            ``"ckpt-{epoch:03d}-{val_loss:.3f}.safetensors"``.
        every: save every this many epochs (and always after the last epoch).
        save_best_only: save only when ``monitor`` improves.
    """

    def __init__(self, path: str | os.PathLike, every: int = 1, save_best_only: bool = False,
                 monitor: str = "val_loss", mode: str = "auto", min_delta: float = 0.0):
        self.path = _path("ModelCheckpoint", path)
        self.every = positive_int("every", every)
        self.save_best_only = flag("save_best_only", save_best_only)
        self.monitor = monitor
        self.tracker = _Improvement(monitor, mode, min_delta) if save_best_only else None
        self.saved: list[str] = []

    def on_train_begin(self, logs: dict) -> None:
        """Refuse before the first epoch what the first save would refuse after it: a path no
        save can write (with ``{...}`` fields, only its folder is known) or an optimizer that
        cannot be saved."""
        from devnet import io

        folder = os.path.dirname(self.path)
        if "{" not in self.path:
            io.check_save_path(self.path)
        elif folder and "{" not in folder and not os.path.isdir(folder):
            raise CheckpointError(f"cannot save checkpoint to {self.path!r}: folder "
                                  f"{folder!r} does not exist (ModelCheckpoint checks before "
                                  "the first epoch)")
        t = self.trainer
        io.check_saveable(t.model, t.optimizer, t.history)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        from devnet import io

        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if not self.tracker.improved(value):
                return
            self.tracker.best = value
        else:
            last = epoch + 1 >= self.trainer.epochs
            if (epoch + 1) % self.every and not last:
                return
        try:
            path = self.path.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"ModelCheckpoint path {self.path!r} cannot be formatted with "
                              f"epoch and the logs ({', '.join(sorted(logs))}): {exc}") from None
        t = self.trainer
        io.save(t.model, path, optimizer=t.optimizer, history=t.history,
                train_state=t.resume_state())
        self.saved.append(path)


class LearningRateScheduler(Callback):
    """Set the learning rate at each epoch start to ``fn(epoch, lr) -> new_lr``.

    Replaces the optimizer's schedule, if any, by the constant rate ``fn`` returns.
    """

    def __init__(self, fn: Callable[[int, float], float]):
        if not callable(fn):
            raise ConfigError(f"LearningRateScheduler needs a function fn(epoch, lr) -> lr, "
                              f"got {type(fn).__name__}")
        try:
            inspect.signature(fn).bind(0, 0.1)
        except TypeError:
            raise ConfigError(f"LearningRateScheduler needs a function fn(epoch, lr) -> lr "
                              f"taking two arguments, got {fn!r} with signature "
                              f"{inspect.signature(fn)}") from None
        except ValueError:  # no signature to read (some builtins): the call will tell
            pass
        self.fn = fn

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        opt = self.trainer.optimizer
        lr = self.fn(epoch, opt.lr)
        if not real(lr) or lr <= 0:
            raise ConfigError(f"LearningRateScheduler function returned lr={lr!r} at epoch "
                              f"{epoch}; expected a finite number > 0")
        opt.schedule = None
        opt.base_lr = float(lr)


# A separator must never occur in a number ("-1.5e-05", "nan", "inf"), a log key
# ("val_loss", "grad_norm/layers.0") or CSV's own quoting and line ends: else every field is
# quoted, or the log cannot be read back at all.
CSV_SEPARATORS = (",", ";", "\t", "|", ":", " ")


class CSVLogger(Callback):
    """Append one row per epoch (epoch, then every log key) to a CSV file, flushed each epoch.

    ``append=False`` starts a new file (header first); ``append=True`` continues an existing
    one (e.g. when resuming), written with the same ``separator`` (one of ``CSV_SEPARATORS``);
    keys the header lacks are added as columns (earlier rows get empty cells).
    """

    def __init__(self, path: str | os.PathLike, append: bool = False, separator: str = ","):
        self.path = Path(_path("CSVLogger", path))
        self.append = flag("append", append)
        if not isinstance(separator, str) or separator not in CSV_SEPARATORS:
            raise ConfigError(f"separator must be a single character that cannot occur in a "
                              f"number, a log name or CSV quoting, one of "
                              f"{', '.join(map(repr, CSV_SEPARATORS))}; got {separator!r}")
        self.separator = separator
        self._file = self._writer = self._keys = None

    def on_train_begin(self, logs: dict) -> None:
        self._keys = None
        try:
            if self.append and self.path.exists() and self.path.stat().st_size > 0:
                self._keys = self._read_header()
            self._file = open(self.path, "a" if self.append else "w", newline="")
        except OSError as exc:
            raise ConfigError(f"CSVLogger cannot write its log {str(self.path)!r}: "
                              f"{exc.strerror or exc}") from None
        self._writer = csv.writer(self._file, delimiter=self.separator)

    def _read_header(self) -> list[str]:
        """The log keys of the existing file's header; a ConfigError unless it is a CSVLogger
        header read with this separator."""
        with open(self.path, newline="") as f:
            header = next(csv.reader(f, delimiter=self.separator), None)
        if not header or header[0] != "epoch" or len(header) < 2:
            first = (header or [""])[0][:60]
            sep = next((c for c in CSV_SEPARATORS if first.startswith(f"epoch{c}")), None)
            hint = (f"it was written with separator={sep!r}: pass that" if sep is not None
                    else "it is not a CSVLogger log: pass another path")
            raise ConfigError(f"CSVLogger(append=True) cannot continue {str(self.path)!r}: "
                              f"read with separator {self.separator!r} its first line is "
                              f"{first!r}, not epoch and the log keys; {hint}, or append=False "
                              "to start a new log")
        return header[1:]

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self._keys is None:
            self._keys = list(logs)
            self._writer.writerow(["epoch", *self._keys])
        new = [k for k in logs if k not in self._keys]
        if new:
            self._add_columns(new)
        self._writer.writerow([epoch, *(logs.get(k, "") for k in self._keys)])
        self._file.flush()

    def _add_columns(self, keys: list[str]) -> None:
        """Rewrite the log with ``keys`` added to its header (earlier rows: empty cells), then
        continue appending."""
        self._file.close()
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f, delimiter=self.separator))
        self._keys = [*self._keys, *keys]
        tmp = self.path.with_name(f".{self.path.name}.columns.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter=self.separator)
            writer.writerow(["epoch", *self._keys])
            writer.writerows(row + [""] * len(keys) for row in rows[1:])
        os.replace(tmp, self.path)  # whole, or the old log: never half of it
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file, delimiter=self.separator)

    def on_train_end(self, logs: dict) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_train_abort(self, error: BaseException) -> None:
        self.on_train_end({})


class GradientFlow(Callback):
    """Per layer and epoch: the weights' gradient norm and update ratio, into the History.

    ``history["grad_norm/layers.i"]``: the root mean square over the epoch's steps of
    ``||dW_i||`` (Frobenius), which shows vanishing gradients; ``history["update_ratio/
    layers.i"]``: ``||W_i(end) - W_i(start)|| / ||W_i(start)||`` over the epoch. Plot them with
    ``history.plot_gradient_flow(path)``. Cost: one multiply-add over the flat gradient buffer
    per step on the device (no host read); one reduction and parameter copy per epoch.
    """

    def on_train_begin(self, logs: dict) -> None:
        model = self.trainer.model
        self._sq = model.backend.zeros(model.grads.shape, model.dtype)
        self._start, self._steps = model.params.copy(), 0

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        model = self.trainer.model
        self._sq[...] = 0
        model.backend.xp.copyto(self._start, model.params)
        self._steps = 0

    def on_batch_end(self, step: int, logs: dict) -> None:
        grads = self.trainer.model.grads
        self._sq += grads * grads  # accumulated on the device: no sync per step
        self._steps += 1

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        model = self.trainer.model
        xp = model.backend.xp
        steps = max(self._steps, 1)
        record = {}
        offset = 0
        for layer in model.layers:
            w = slice(offset, offset + layer.n_in * layer.n_out)
            offset += layer.n_params
            grad_rms = math.sqrt(float(self._sq[w].sum()) / steps)
            start = self._start[w]
            moved = float(xp.linalg.norm((model.params[w] - start).astype(np.float64)))
            size = float(xp.linalg.norm(start.astype(np.float64)))
            record[f"{GRAD_NORM}/{layer.name}"] = grad_rms
            record[f"{UPDATE_RATIO}/{layer.name}"] = moved / size if size > 0 else math.inf
        history = self.trainer.history
        for key, value in record.items():
            history.history.setdefault(key, []).append(value)
        logs.update(record)  # callbacks after this one (CSVLogger) see them too
