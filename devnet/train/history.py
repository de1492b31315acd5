"""History and Callback: what ``fit`` records and the hooks it calls.

They import nothing else of ``devnet.train`` so that ``devnet.callbacks`` and ``devnet.io`` can
use them without an import cycle.
"""

from __future__ import annotations

from typing import Any


class History:
    """Per-epoch records: ``history["loss"]``, ``["val_loss"]``, the task metric, ``lr``, time.

    ``epoch`` lists the 0-based epoch indices recorded (continuing across a resume).
    """

    #: set on a History restored from a checkpoint, whose JSON keeps the keys sorted: the next
    #: epoch's logs give them back the order an uninterrupted run records them in
    reorder = False

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []
        self.params: dict = {}

    def append(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
        if self.reorder:
            self.reorder = False
            self.history = {**{k: self.history[k] for k in logs}, **self.history}

    def __getitem__(self, key):
        return self.history[key]

    def plot_gradient_flow(self, path, title: str | None = None):
        """Plot the per-layer gradient norms ``callbacks.GradientFlow`` recorded (matplotlib)."""
        from devnet.train.plot import plot_gradient_flow

        return plot_gradient_flow(self, path, title)

    def __repr__(self) -> str:
        keys = ", ".join(self.history)
        return f"History(epochs={len(self.epoch)}, keys=[{keys}])"


class Callback:
    """Hooks called by ``fit``; set ``self.trainer.stop_training = True`` to stop.

    Epochs are 0-based. ``on_batch_end`` gets ``{"size": n}`` only: reading the loss there
    would synchronise the device every step.

    Stopping: fit reads ``trainer.stop_training`` after each epoch's ``on_epoch_end`` (set
    there, as ``EarlyStopping`` does, the epoch is whole: recorded, and saved by the
    checkpoint callbacks) and between steps. Set at any other time -- in ``on_epoch_begin``,
    from a signal handler (``devnet train``'s Ctrl-C), from another thread -- training stops
    at the next step boundary fit reads it at: before the next step on the Python engine,
    before the next block of steps on the compiled one (milliseconds of work:
    ``devnet.train.loop.block_steps``). That epoch is left unfinished: not in the History, no
    ``on_epoch_end``, ``trainer.epochs_done`` unchanged, while the model keeps the steps it
    took. fit then ends as usual (``on_train_end``). Under data-parallel training the ranks
    read it at epoch ends only, where they agree on it.

    A callback that overrides ``on_batch_end`` makes fit run the Python step, one call per
    step (on small models many times slower than the compiled epoch): to stop mid-epoch,
    set ``stop_training`` instead of checking a condition after every batch.
    """

    trainer: Any  #: the running ``devnet.train.Trainer``, set by fit before on_train_begin

    def on_train_begin(self, logs: dict) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict) -> None: ...

    def on_batch_end(self, step: int, logs: dict) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_train_end(self, logs: dict) -> None: ...

    def on_train_abort(self, error: BaseException) -> None:
        """Called instead of ``on_train_end`` when fit raises (release files and the like)."""
