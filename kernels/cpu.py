"""Numba CPU kernels built from ``scalar.py`` (placeholder: the reference table until built)."""

from devnet.kernels.reference import *  # noqa: F401,F403
from devnet.kernels.reference import KERNEL_NAMES  # noqa: F401
