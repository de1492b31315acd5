"""devnet: multi-layer perceptrons with hand-written backpropagation on the CPU or an NVIDIA GPU.

    import devnet as dn
    model = dn.MLP([64, 128, 10], backend="auto")
    hist = dn.fit(model, X, y, loss="cross_entropy", optimizer="adam", epochs=10)
"""

import logging as _logging

# first: in a bare source checkout, finds kernels/ beside devnet/ for the imports below
from devnet import _checkout  # noqa: F401  # isort: skip
from devnet import callbacks, data, interop, losses, optim, task
from devnet._version import __version__  # noqa: F401 (the package version)
from devnet.backend import Backend, available_backends, get_backend
from devnet.callbacks import (
    CSVLogger,
    EarlyStopping,
    GradientFlow,
    LearningRateScheduler,
    ModelCheckpoint,
)
from devnet.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceUnavailableError,
    DevnetError,
    DivergenceError,
    MissingDependencyError,
    ModelBusyError,
)
from devnet.io import load, load_checkpoint, save
from devnet.nn import MLP, Dense, Parameter
from devnet.profile import profile
from devnet.train import Callback, History, evaluate, fit, predict, predict_proba

__all__ = [
    "MLP", "Backend", "Callback", "CheckpointError", "ConfigError", "CSVLogger", "DataError",
    "Dense", "DeviceUnavailableError", "DevnetError", "DivergenceError", "EarlyStopping",
    "History", "LearningRateScheduler", "ModelCheckpoint", "Parameter", "available_backends",
    "GradientFlow", "callbacks", "data", "distributed", "evaluate", "fit", "get_backend",
    "interop", "load", "load_checkpoint", "losses", "MissingDependencyError", "ModelBusyError",
    "optim", "predict", "predict_proba", "profile", "save", "task",
]


def __getattr__(name):
    # dn.distributed is imported on first use: imported here, ``python -m devnet.distributed``
    # (the launcher) would find itself in sys.modules before it runs and warn (runpy)
    if name == "distributed":
        import importlib

        return importlib.import_module("devnet.distributed")
    raise AttributeError(f"module 'devnet' has no attribute {name!r}")


# One line on stderr says which device "auto" picked and why, unless the user configured
# logging for "devnet" themselves.
_log = _logging.getLogger("devnet")
if not _log.handlers:
    _handler = _logging.StreamHandler()
    _handler.setFormatter(_logging.Formatter("%(message)s"))
    _log.addHandler(_handler)
    _log.setLevel(_logging.INFO)
