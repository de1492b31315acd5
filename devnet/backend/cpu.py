"""The CPU backend: NumPy arrays, BLAS matmuls and Numba kernels."""

from __future__ import annotations

import numpy as np

from devnet import validation
from devnet.backend.base import KERNEL_SETS, Backend
from devnet.errors import DataError, lookup


class CPUBackend(Backend):
    """NumPy + Numba. ``kernels="reference"`` runs the xp-generic oracle instead."""

    name = "cpu"
    device = "cpu"
    xp = np

    def __init__(self, kernels: str = "fused"):
        lookup(KERNEL_SETS, kernels, "kernel set")
        self._load_kernels(kernels, "devnet.kernels.cpu")

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
