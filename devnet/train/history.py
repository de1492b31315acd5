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
    """

    trainer: Any  #: the running ``devnet.train.Trainer``, set by fit before on_train_begin

    def on_train_begin(self, logs: dict) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict) -> None: ...

    def on_batch_end(self, step: int, logs: dict) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_train_end(self, logs: dict) -> None: ...

    def on_train_abort(self, error: BaseException) -> None:
        """Called instead of ``on_train_end`` when fit raises (release files and the like)."""
