"""The CUDA kernels' PTX targets, built here (every kernel cloned per dtype) when a PTX or
launch test imports this, never when devnet is imported.

Each target is (``name[dtype]``, the plain-Python kernel, its signature), from the CUDA kernel
registry (``kernels/cuda/registry.py``):

- ``PTX_TARGETS``: every kernel of ``elementwise`` and ``optim`` but the hyper steps and the
  advance; ``opt_clip`` is here: it reads g in its dtype and keeps float32 math (only its
  float64 sum and hyper's load / store);
- ``PTX_HYPER_TARGETS``: the hyper steps and ``opt_advance`` (float64 only: one dtype whatever
  the model's). Apart: a float32 hyper step holds ``ld.f64`` / ``cvt`` (its scalars are read as
  float64 and cast), which ``test_kernels_ptx``'s no-float64 rule for steps refuses;
- ``DEEP_PTX_TARGETS``: the kernels of ``deep`` (LayerNorm, dropout, residual add).

``f64_ops`` counts a PTX text's float64 instructions, ``F64_ALLOWED`` those a float32 kernel
may hold.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from devnet.kernels import table
from devnet.kernels.cuda import deep, registry
from devnet.kernels.cuda.device import FLOAT_TYPES


def targets(names, dtypes=tuple(FLOAT_TYPES)):
    """(label, plain-Python kernel, signature) of each kernel of ``names`` for each dtype."""
    return [(f"{name}[{dt.name}]", registry.pyfunc(name, dt),
             registry.signature(name, FLOAT_TYPES[dt])) for name in names for dt in dtypes]


_HYPER = (*table.STEP_HYPER_KERNELS, table.ADVANCE_KERNEL)
_DEEP = [n for n, spec in registry.SPECS.items() if spec.template.__module__ == deep.__name__]
PTX_TARGETS = targets([n for n in registry.SPECS if n not in _HYPER and n not in _DEEP])
PTX_HYPER_TARGETS = targets(table.STEP_HYPER_KERNELS) + targets([table.ADVANCE_KERNEL],
                                                                [np.dtype(np.float64)])
DEEP_PTX_TARGETS = targets(_DEEP)

# The .f64 instructions a float32 kernel may hold: moving, converting and adding the float64
# partial sums (db's column sums, loss totals), kept in float64 on purpose. Any other (mul, div,
# fma, sqrt, sub, setp, selp, max, ...) is float32 math promoted to float64.
F64_ALLOWED = frozenset({"add", "cvt", "mov", "ld", "st"})
_INSTR = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z0-9]+)((?:\.[a-z0-9]+)*)\s", re.M)


def f64_ops(ptx: str) -> Counter:
    """Opcode -> count of the PTX instructions that have a ``.f64`` type suffix."""
    return Counter(op for op, suffix in _INSTR.findall(ptx) if ".f64" in suffix)
