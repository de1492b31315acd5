"""Numba CPU kernels built from ``scalar.py``: the CPU backend's kernel table.

Same names and signatures as ``reference.py`` (read its docstrings for the contract).

- ``build``:       the per-dtype scalar functions, the (serial, parallel) clones, ``PARALLEL_MIN``;
- ``elementwise``: activations (bias + act forward, backward with db, softmax) and losses;
- ``optim``:       optimizer steps, ``opt_advance``, the clip scale and the L2 term;
- ``deep``:        LayerNorm, dropout, residual add.
"""

from __future__ import annotations

from devnet.kernels.cpu import build as _build
from devnet.kernels.cpu import deep as _deep
from devnet.kernels.cpu import elementwise as _elementwise
from devnet.kernels.cpu import optim as _optim
from devnet.kernels.cpu.build import DTYPES, FASTMATH, N, S, set_parallel_min  # noqa: F401
from devnet.kernels.table import KERNEL_NAMES, NEEDS_PREACTIVATION  # noqa: F401

for _name in KERNEL_NAMES:
    globals()[_name] = next(getattr(m, _name) for m in (_elementwise, _optim, _deep)
                            if hasattr(m, _name))


def __getattr__(name):
    # read where set_parallel_min writes it, so it is never a stale copy
    if name == "PARALLEL_MIN":
        return _build.PARALLEL_MIN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
