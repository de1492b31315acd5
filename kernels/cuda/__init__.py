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

from devnet.kernels import table
from devnet.kernels.cuda import elementwise as _elementwise
from devnet.kernels.cuda import optim as _optim
from devnet.kernels.cuda.deep import (  # noqa: F401
    act_drop_bwd,
    bias_act_drop_fwd,
    dropout_fwd,
    layernorm_bwd,
    layernorm_fwd,
)
from devnet.kernels.cuda.device import NT, SIMULATOR, N  # noqa: F401
from devnet.kernels.cuda.elementwise import act_bwd, bias_act_fwd, softmax_xent  # noqa: F401
from devnet.kernels.cuda.launch import DIRECT_LAUNCH_REASON, numba_params  # noqa: F401

for _name in (*table.ELEMENT_LOSSES, *table.STEP_HYPER):
    globals()[_name] = getattr(_elementwise if _name in table.ELEMENT_LOSSES else _optim, _name)
opt_advance, opt_clip, l2_penalty = _optim.opt_advance, _optim.opt_clip, _optim.l2_penalty
