"""Host (NumPy) copies of any array at the edges: NumPy, CuPy, torch (any device), JAX.

Lives on the lowest floor so input checks (``devnet.validation``) and ``devnet.interop`` share
one conversion without the checks depending on the interop layer.
"""

from __future__ import annotations

import numpy as np


def detach(x):
    """``x`` without autograd history (torch refuses to export tensors that require grad)."""
    return x.detach() if hasattr(x, "detach") and callable(x.detach) else x


def to_numpy(x) -> np.ndarray:
    """``x`` as a NumPy array on the host: NumPy, CuPy, torch (any device), JAX, lists."""
    if isinstance(x, np.ndarray):
        return x
    x = detach(x)
    if hasattr(x, "get") and hasattr(x, "__cuda_array_interface__"):  # CuPy
        return x.get()
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass  # on a GPU: ask the framework to copy it over
        if hasattr(x, "cpu"):  # torch
            return x.cpu().numpy()
    return np.asarray(x)
