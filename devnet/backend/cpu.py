"""The CPU backend: NumPy arrays, BLAS matmuls and Numba kernels."""

from __future__ import annotations

import importlib

import numpy as np

from devnet import validation
from devnet.backend.base import Backend, kernel_table
from devnet.errors import DataError, lookup
from devnet.kernels import reference


class CPUBackend(Backend):
    """NumPy + Numba. ``kernels="reference"`` runs the xp-generic oracle instead."""

    name = "cpu"
    device = "cpu"
    xp = np

    def __init__(self, kernels: str = "fused"):
        lookup({"fused": 0, "reference": 0}, kernels, "kernel set")
        self.kernel_set = kernels
        module = reference if kernels == "reference" else \
            importlib.import_module("devnet.kernels.cpu")
        self.kernels = kernel_table(module)
        self.raw_kernels = kernel_table(module, unchecked=True)

    def asarray(self, a, dtype=None):
        try:
            return np.ascontiguousarray(a, dtype=dtype)
        except (TypeError, ValueError) as exc:  # a bad dtype name, ragged rows, text
            what = "an array" if dtype is None else f"a {dtype} array"
            raise DataError(f"cannot make {what} on the cpu from {type(a).__name__}: "
                            f"{exc}") from None

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def rng(self, seed=None):
        return np.random.default_rng(validation.seed("seed", seed))
