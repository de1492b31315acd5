"""The launch-cost suite (benchmarks/bench_launch.py) runs; never timed.

Off the CUDA backend it says why it skipped. Under ``DEVNET_CUDA_SIMULATOR=1`` (the cudasim
process of ``make test``) it runs the real CUDA launch path with only the kernel execution
stubbed, and the step's launch and allocation counts are checked against issue 12's targets.
"""

from __future__ import annotations

import os

import pytest

import devnet as dn
from benchmarks import bench_launch
from benchmarks.timing import Settings

SIM = os.environ.get("DEVNET_CUDA_SIMULATOR") == "1"


def _quiet(_msg):
    pass


@pytest.mark.skipif(SIM, reason="the CPU half runs in the ordinary process")
def test_launch_suite_skips_off_the_cuda_backend():
    out = bench_launch.run(dn.get_backend("cpu"), Settings.quick(), quick=True, log=_quiet)
    assert "CUDA backend" in out["skipped"]


@pytest.mark.cudasim
@pytest.mark.skipif(not SIM, reason="needs DEVNET_CUDA_SIMULATOR=1 (make test runs it)")
def test_launch_suite_counts_a_step_on_the_simulated_gpu():
    out = bench_launch.run(dn.get_backend("cuda"), Settings.quick(), quick=True, log=_quiet)
    assert out["replaced"] == "simulated kernel execution"
    # 3 layers: bias+act forward x3, the loss, act' + bias grad x2 and the identity output
    # layer's bias gradient alone (dZ = G: no copy), the optimizer's advance and its update
    assert out["launches_per_step"] == {"col_partials": 1, "act_bwd_relu": 2,
                                        "opt_advance": 1, "adam_step_hyper": 1,
                                        "bias_act_fwd_identity": 1, "bias_act_fwd_relu": 2,
                                        "softmax_xent_label_i64": 1}
    assert out["launches_total"] <= bench_launch.TARGETS["launches_per_step"]
    assert out["allocations_per_step"] == 0
    assert set(out["host_us_per_call"]) == {"bias_act_fwd", "act_bwd", "softmax_xent",
                                            "adam_step"}
