"""Numba-CUDA kernels built from ``scalar.py``: the CUDA backend's kernel table.

Same names and signatures as ``reference.py`` (read its docstrings for the contract); arrays are
CuPy arrays (or NumPy arrays under ``NUMBA_ENABLE_CUDASIM=1``), float32 or float64, C-contiguous.

- ``device``:      libdevice math, the scalar functions as inlined device functions, block helpers;
- ``registry``:    kernel name -> template, signature and bound globals; the per-dtype clones;
- ``launch``:      compile once per dtype, check, marshal, launch on the current stream (``Call``);
- ``elementwise``: activations (bias + act forward, backward with db, softmax) and losses;
- ``optim``:       optimizer steps, ``opt_advance``, the clip scale and the L2 term;
- ``deep``:        LayerNorm, dropout, residual add.
"""

from __future__ import annotations

from devnet.kernels.cuda import deep as _deep
from devnet.kernels.cuda import elementwise as _elementwise
from devnet.kernels.cuda import optim as _optim
from devnet.kernels.cuda.device import NT, SIMULATOR, N  # noqa: F401
from devnet.kernels.cuda.launch import DIRECT_LAUNCH_REASON, numba_params  # noqa: F401
from devnet.kernels.table import KERNEL_NAMES

for _name in KERNEL_NAMES:
    globals()[_name] = next(getattr(m, _name) for m in (_elementwise, _optim, _deep)
                            if hasattr(m, _name))
