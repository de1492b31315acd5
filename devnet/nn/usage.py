"""Which threads use a model: the one training it, and the inferences running.

The contract (docs/guide.md, "Threads"): inference from many threads at once is safe (each thread
has its own work buffers); training claims the model for one thread. A second trainer, or an
inference started by another thread while one trains, is refused with ModelBusyError instead
of reading or writing parameters mid-update. A claim waits for the inferences already running
on other threads (they finish on their own), so nothing they read changes under them.
"""

from __future__ import annotations

import contextlib
import threading

from devnet.errors import ModelBusyError

get_ident = threading.get_ident


class Usage:
    """Per-model record: ``owner`` the id of the thread training the model (or None),
    ``readers`` the running inferences per thread id. One lock guards both; the training step
    itself never takes it (forward / backward only compare ``owner``)."""

    __slots__ = ("_cond", "owner", "what", "depth", "readers")

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self.owner = self.what = None
        self.depth = 0
        self.readers: dict[int, int] = {}

    def busy(self, what: str) -> ModelBusyError:
        """The error for ``what`` while another thread trains the model."""
        return ModelBusyError(
            f"{what} refused: another thread is training this model ({self.what}), and its "
            "parameters change with every step. Wait for that training to return, or use a "
            "copy (copy.deepcopy(model)) in this thread; inference from many threads is safe "
            "once no thread trains the model")

    def check(self, what: str) -> None:
        """ModelBusyError unless no other thread trains the model (no lock: one read, for the
        training step)."""
        owner = self.owner
        if owner is not None and owner != get_ident():
            raise self.busy(what)

    @contextlib.contextmanager
    def shared(self, what: str):
        """``with usage.shared("predict"):`` one inference of this thread, refused while
        another thread trains the model."""
        me = get_ident()
        with self._cond:
            if self.owner is not None and self.owner != me:
                raise self.busy(what)
            self.readers[me] = self.readers.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                left = self.readers[me] - 1
                if left:
                    self.readers[me] = left
                else:
                    del self.readers[me]
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, what: str):
        """``with usage.exclusive("fit"):`` claim the model for this thread's training
        (re-entrant: a callback of fit may call ``set_input_scaling``); ModelBusyError when
        another thread holds it. Waits for other threads' running inferences, which are
        refused from now on."""
        me = get_ident()
        with self._cond:
            if self.owner == me:
                self.depth += 1
            elif self.owner is not None:
                raise ModelBusyError(
                    f"{what} refused: another thread is already training this model "
                    f"({self.what}); two trainings at once would overwrite each other's "
                    "updates. Train it in one thread at a time, or train a copy "
                    "(copy.deepcopy(model))")
            else:
                self.owner, self.what, self.depth = me, what, 1
                self._cond.wait_for(lambda: not any(t != me for t in self.readers))
        try:
            yield
        finally:
            with self._cond:
                self.depth -= 1
                if not self.depth:
                    self.owner = self.what = None
