"""The CPU backend: NumPy arrays, BLAS matmuls and Numba kernels."""

from __future__ import annotations

import importlib

import numpy as np

from devnet.backend.base import Backend, kernel_table
from devnet.errors import lookup
from devnet.kernels import reference


class CPUBackend(Backend):
    """NumPy + Numba. ``kernels="reference"`` runs the xp-generic oracle instead."""

    name = "cpu"
    device = "cpu"
    xp = np

    def __init__(self, kernels: str = "fused"):
        lookup({"fused": 0, "reference": 0}, kernels, "kernel set")
        self.kernel_set = kernels
        if kernels == "reference":
            self.kernels = kernel_table(reference)
        else:
            self.kernels = kernel_table(importlib.import_module("devnet.kernels.cpu"))

    def asarray(self, a, dtype=None):
        return np.ascontiguousarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def rng(self, seed=None):
        return np.random.default_rng(seed)
