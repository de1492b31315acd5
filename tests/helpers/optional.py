"""devnet.sklearn for the tests that need it: without scikit-learn and SciPy only those tests
skip, not their modules (the gpu-marked tests must collect without them)."""

from __future__ import annotations

import importlib

import pytest


def from_devnet_sklearn(module: str, name: str):
    """``devnet.sklearn[.module].name``, or a skip naming what to install."""
    try:
        found = importlib.import_module("devnet.sklearn" + (f".{module}" if module else ""))
    except ImportError as exc:  # MissingDependencyError is one, and names what to install
        pytest.skip(str(exc))
    return getattr(found, name)
