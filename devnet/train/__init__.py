"""The one training path: ``Step`` (step.py) fed by a ``Feed`` (feed.py), driven by ``fit``
(loop.py), watched by the divergence ``Guard`` (guard.py); ``History`` and ``Callback``
(history.py) import nothing else of it, so ``devnet.callbacks`` and ``devnet.io`` can use them.
"""

from devnet.train.feed import DeviceFeed, Feed, HostFeed, make_feed
from devnet.train.guard import Guard
from devnet.train.history import Callback, History
from devnet.train.loop import evaluate, fit, metric_names, predict, predict_proba
from devnet.train.setup import SCHEDULES, ScheduleHorizonWarning, Trainer
from devnet.train.step import Batch, Step, StepHook

__all__ = ["SCHEDULES", "Batch", "Callback", "DeviceFeed", "Feed", "Guard", "History",
           "HostFeed", "ScheduleHorizonWarning", "Step", "StepHook", "Trainer", "evaluate",
           "fit", "make_feed", "metric_names", "predict", "predict_proba"]
