"""The deep-network CUDA kernels (``kernels/cuda/deep.py``) compile to PTX for sm_80 and sm_90.

As ``test_kernels_ptx.py``, without a GPU (``numba.cuda.compile_ptx``). Every template in both
dtypes: LayerNorm forward and both backward passes, standalone dropout, and the fused
activation + dropout + residual forward and activation + dropout backward for two activations
(one differentiated from its output, one from Z). float32 kernels compute in float32: no .f64
instruction at all, except moving and adding the float64 column partials where they have them.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("PTX compilation is not available under the CUDA simulator",
                allow_module_level=True)

try:
    from numba.cuda import compile_ptx
except Exception as exc:  # numba-cuda missing, or its NVVM bindings broken
    pytest.skip(f"numba-cuda is not importable ({type(exc).__name__}: {exc}); install "
                "numba-cuda[cu12] (the test extra)", allow_module_level=True)

from helpers import ptx_targets as kcuda  # noqa: E402
from helpers.ptx_targets import F64_ALLOWED, f64_ops  # noqa: E402

CCS = ((8, 0), (9, 0))
NAMES = ("layernorm_fwd", "layernorm_bwd_rows", "layernorm_bwd_cols", "dropout_fwd",
         "bias_act_drop_fwd_sigmoid_11", "bias_act_drop_fwd_gelu_10",
         "bias_act_drop_fwd_tanh_01", "act_drop_bwd_sigmoid", "act_drop_bwd_gelu")
# kernels with float64 partial sums (column sums of dgamma, dbeta, db)
WITH_PARTIALS = ("layernorm_bwd_cols", "act_drop_bwd_")
TARGETS = [t for t in kcuda.DEEP_PTX_TARGETS if t[0].split("[")[0] in NAMES]


def test_targets_cover_every_template():
    names = {t[0] for t in kcuda.DEEP_PTX_TARGETS}
    for dt in ("float32", "float64"):
        for name in NAMES:
            assert f"{name}[{dt}]" in names
    assert len(TARGETS) == 2 * len(NAMES)


@pytest.mark.parametrize("cc", CCS, ids=lambda cc: f"sm{cc[0]}{cc[1]}")
@pytest.mark.parametrize("target", TARGETS, ids=[t[0] for t in TARGETS])
def test_compiles_to_ptx_in_its_dtype(target, cc):
    name, pyfunc, sig = target
    ptx, _ = compile_ptx(pyfunc, sig.args, cc=cc)
    assert ".entry" in ptx and f".target sm_{cc[0]}{cc[1]}" in ptx
    if name.endswith("[float32]"):
        ops = f64_ops(ptx)
        if name.startswith(WITH_PARTIALS):
            bad = {op: k for op, k in ops.items() if op not in F64_ALLOWED}
            assert not bad, f"float64 math in a float32 kernel: {bad}"
        else:
            assert not ops, f"float64 instructions in a float32 kernel: {dict(ops)}"
    else:  # the float64 kernel really is float64 (the check above is live)
        assert f64_ops(ptx)
