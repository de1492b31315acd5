"""The launch-cost suite (benchmarks/bench_launch.py) runs; never timed.

Off the CUDA backend it says why it skipped. Under ``DEVNET_CUDA_SIMULATOR=1`` (the cudasim
process of ``make test``) it runs the real CUDA launch path with only the kernel execution
stubbed, and the step's launch and allocation counts are checked against the graph-ready step's
targets.
On a GPU it stubs the driver's ``cuLaunchKernelEx`` and nothing above it: checked here in a
process with a stand-in driver library (a C file built with the system compiler), since none
is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

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


@pytest.mark.cudasim  # conftest skips it outside a DEVNET_CUDA_SIMULATOR=1 process
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


# A driver library with one entry point that matters: cuda.bindings resolves every function
# through cuGetProcAddress_v2; cuLaunchKernelEx counts its calls, everything else succeeds.
_FAKE_DRIVER = r"""
#include <string.h>
int launches = 0;
static int ok(void) { return 0; }
static int launch(void *config, void *f, void **params, void **extra) { launches++; return 0; }
int cuGetProcAddress_v2(const char *name, void **pfn, int version, unsigned long long flags,
                        int *status) {
    *pfn = strcmp(name, "cuLaunchKernelEx") == 0 ? (void *)launch : (void *)ok;
    if (status) *status = 0;
    return 0;
}
"""

_LAUNCHES = """
import ctypes, sys, warnings
driver = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)  # found as libcuda.so.1 from now on
count = ctypes.c_int.in_dll(driver, "launches")
import cuda.core
from cuda.core import Kernel, LaunchConfig, Stream
from benchmarks import bench_launch
from devnet.kernels.cuda import launch as kcuda

warnings.simplefilter("error")
config = LaunchConfig(grid=(1, 1, 1), block=(32, 1, 1), shmem_size=0, is_cooperative=False)
stream, kernel = Stream.from_handle(0x5000), Kernel.from_handle(0x1000)
counts = []
cuda.core.launch(stream, config, kernel, 1, 2.0)
counts.append(count.value)
with bench_launch.stubbed_driver(type("GPU", (), {"simulated": False})()) as replaced:
    assert kcuda.Driver.launch is None or kcuda.Driver.launch is cuda.core.launch
    for _ in range(3):
        cuda.core.launch(stream, config, kernel, 1, 2.0)
    counts.append(count.value)
cuda.core.launch(stream, config, kernel, 1, 2.0)
counts.append(count.value)
print(counts, replaced)
"""


@pytest.mark.skipif(SIM, reason="the real launch path runs in the ordinary process")
@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler for the stand-in "
                                                      "driver library")
def test_on_a_gpu_only_the_drivers_launch_call_is_stubbed(tmp_path):
    pytest.importorskip("cuda.core")
    lib = tmp_path / "libcuda.so.1"
    (tmp_path / "driver.c").write_text(_FAKE_DRIVER)
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(lib),
                    str(tmp_path / "driver.c")], check=True, timeout=60)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root}
    env.pop("DEVNET_CUDA_SIMULATOR", None)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_LAUNCHES), str(lib)],
                         capture_output=True, text=True, timeout=120, cwd=root, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    # the real launch reaches the driver; stubbed, three launches never do; then it does again
    assert out.stdout.split()[:3] == ["[1,", "1,", "2]"], out.stdout
    assert "cuLaunchKernelEx" in out.stdout
