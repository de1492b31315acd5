"""devnet's exceptions: one hierarchy under DevnetError, each naming what was wrong."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping


class DevnetError(Exception):
    """Base class of every error devnet raises on purpose."""


class DeviceUnavailableError(DevnetError, RuntimeError):
    """The requested device cannot be used here; the message says why."""


class ConfigError(DevnetError, ValueError):
    """A name or hyper-parameter is not valid (unknown activation, negative lr, ...)."""


class DataError(DevnetError, ValueError):
    """Input data has the wrong shape, dtype, range or contains NaN/Inf."""


class CheckpointError(DevnetError):
    """A checkpoint cannot be written or read: truncated, corrupt, wrong version or model."""


class DivergenceError(DevnetError, FloatingPointError):
    """Training produced a non-finite loss, activation, gradient or parameter."""


class ModelBusyError(DevnetError, RuntimeError):
    """Another thread is training the model: using it now would meet parameters mid-update."""


def lookup(table: Mapping, name, kind: str):
    """``table[name]``, or a ConfigError naming ``kind`` and listing the valid names."""
    if isinstance(name, str) and name in table:
        return table[name]
    plural = kind + ("es" if kind.endswith("s") else "s")
    valid = ", ".join(sorted(str(n) for n in table))
    raise ConfigError(f"unknown {kind} {name!r}; valid {plural}: {valid}")


class MissingDependencyError(DevnetError, ImportError):
    """An optional dependency is not installed; the message says what to ``pip install``."""


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` at the user's line: the first caller outside devnet (and outside
    scikit-learn, whose wrappers call the estimators), whatever decorators lie between."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in (
            "devnet", "sklearn"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
