"""Every Numba-CUDA kernel compiles to PTX for compute capabilities 8.0 and 9.0, without a GPU.

``numba.cuda.compile_ptx`` needs numba-cuda (with its cu12 NVVM), not a device; this runs in the
ordinary pytest process. The kernels and their signatures come from
``helpers.ptx_targets.PTX_TARGETS``: each activation, loss and optimizer specialisation,
float32 and float64. Float32 kernels are also checked to compute in float32: a stray float64
literal or argument shows up as ``.f64`` math.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("PTX compilation is not available under the CUDA simulator "
                "(NUMBA_ENABLE_CUDASIM=1)", allow_module_level=True)

try:
    from numba import cuda
    from numba.cuda import compile_ptx
except Exception as exc:  # numba-cuda missing, or its NVVM / toolkit bindings broken
    pytest.skip(f"numba-cuda is not importable ({type(exc).__name__}: {exc}); install "
                "numba-cuda[cu12] (the test extra)", allow_module_level=True)

from devnet.kernels import reference, scalar, table  # noqa: E402
from helpers import ptx_targets as kcuda  # noqa: E402
from helpers.ptx_targets import F64_ALLOWED, f64_ops  # noqa: E402

CCS = ((8, 0), (9, 0))
_NAMES = [name for name, _, _ in kcuda.PTX_TARGETS]
# float32 kernels with no float64 data at all: not even those of F64_ALLOWED
NO_F64 = re.compile(r"^(bias_act_fwd_|softmax_bwd_rows|\w+_step)")
# The clip scale is float64 math on purpose, once per launch (``norms.clip_scale``: a float32
# gradient's squared norm can pass float32's range); at most this much of it.
CLIP_SCALE_F64 = Counter({"sqrt": 1, "div": 1, "fma": 6, "rcp": 1, "mul": 2, "setp": 2,
                          "selp": 2})


def test_targets_cover_every_op():
    """Each activation (both directions), loss and step, in both dtypes."""
    names = set(_NAMES)
    for dt in ("float32", "float64"):
        for act in scalar.ACTIVATIONS:
            assert f"bias_act_fwd_{act}[{dt}]" in names
            assert f"act_bwd_{act}[{dt}]" in names
        assert f"bias_act_fwd_softmax[{dt}]" in names
        assert f"softmax_bwd_rows[{dt}]" in names
        for loss in ("softmax_xent_label_i32", "softmax_xent_label_i64", "softmax_xent_prob",
                     *table.ELEMENT_LOSSES):
            assert f"{loss}[{dt}]" in names
        for step in reference.STEP_KERNELS:
            assert f"{step}[{dt}]" in names


@pytest.mark.parametrize("cc", CCS, ids=lambda cc: f"sm{cc[0]}{cc[1]}")
@pytest.mark.parametrize("target", kcuda.PTX_TARGETS, ids=_NAMES)
def test_compiles_to_ptx(target, cc):
    name, pyfunc, sig = target
    ptx, _ = compile_ptx(pyfunc, sig.args, cc=cc)
    assert ".entry" in ptx
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    assert cuda is not None
    if name.endswith("[float32]"):
        ops = f64_ops(ptx)
        if NO_F64.match(name):
            assert not ops, f"float64 instructions in a float32 kernel: {dict(ops)}"
        else:
            allowed = CLIP_SCALE_F64 if name.startswith("opt_clip[") else Counter()
            bad = {op: n for op, n in ops.items()
                   if op not in F64_ALLOWED and n > allowed[op]}
            assert not bad, f"float64 math in a float32 kernel: {bad}"


def test_f64_check_sees_float64_math():
    """The check above is live: a float64 kernel's PTX shows the math it must flag."""
    name, pyfunc, sig = next(t for t in kcuda.PTX_TARGETS if t[0] == "adam_step[float64]")
    ops = f64_ops(compile_ptx(pyfunc, sig.args, cc=(8, 0))[0])
    assert ops["div"] and ops["sqrt"] and ops["fma"]
