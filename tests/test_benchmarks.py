"""The benchmark and profiler code runs on tiny sizes; the JSON schema is checked.

Nothing here asserts a time: benchmarks are never timed tests.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from devnet.kernels.reference import KERNEL_NAMES

import devnet as dn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a top-level folder of the repository
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_fusion, report  # noqa: E402
from benchmarks import main as bench_main  # noqa: E402
from devnet.profile import ProfileReport, measure_ceilings  # noqa: E402
from devnet.profile import main as profile_main  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None

META_KEYS = {"host", "date", "device", "device_name", "kernels", "quick", "versions", "threads"}
KERNEL_KEYS = {"kernel", "size_mb", "elements", "bytes", "fused_s", "unfused_s", "fused_gbs",
               "unfused_gbs", "copy_gbs", "fused_over_copy", "speedup"}
STEP_KEYS = {"config", "sizes", "batch", "loss", "gflop", "devnet_s", "samples_per_s",
             "floor_s", "devnet_over_floor"}
SCALING_KEYS = {"sweep", "sizes", "batch", "width", "devnet_s", "floor_s", "devnet_gflops",
                "floor_gflops", "devnet_over_floor"}
TARGET_KEYS = {"target", "field", "where", "op", "bound", "value", "met"}


def _run(tmp_path, *args) -> dict:
    path = tmp_path / "bench.json"
    assert bench_main(["--quick", "--device", "cpu", "-q", "--json", str(path), *args]) == 0
    return json.loads(path.read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and np.isfinite(x) and x > 0


def test_bench_quick_writes_the_json_schema(tmp_path, capsys):
    res = _run(tmp_path, "--no-torch", "--no-sklearn")
    assert res["schema"] == report.SCHEMA
    assert META_KEYS <= set(res["meta"])
    assert {"numpy", "numba", "devnet", "python"} <= set(res["meta"]["versions"])
    threads = res["meta"]["threads"]
    assert {"cpu_count", "pools", "numba", "torch"} <= set(threads)
    assert res["skipped"]["torch"] == "--no-torch"
    assert res["kernels"] and all(KERNEL_KEYS <= set(r) for r in res["kernels"])
    assert {r["kernel"] for r in res["kernels"]} >= {"bias_act_fwd[relu]", "adam_step"}
    assert res["step"] and all(STEP_KEYS <= set(r) for r in res["step"])
    assert {r["sweep"] for r in res["scaling"]} == {"batch", "width"}
    assert all(SCALING_KEYS <= set(r) for r in res["scaling"])
    assert all(_positive(r[k]) for r in res["step"] for k in ("devnet_s", "floor_s"))
    assert all(_positive(r["fused_gbs"]) for r in res["kernels"])
    # the fusion suite covers the whole kernel table: every activation both ways, every loss
    # and optimizer step
    fusion = {r["kernel"]: r for r in res["fusion"]}
    assert set(fusion) == set(bench_fusion.CASE_NAMES)
    for name in KERNEL_NAMES:
        assert any(k.split("[")[0] == name for k in fusion), name
    assert all(_positive(r["speedup"]) for r in res["fusion"])
    assert len(res["targets"]) == len(report.TARGETS)
    assert all(TARGET_KEYS <= set(t) for t in res["targets"])
    out = capsys.readouterr().out
    assert "training step" in out and "fusion" in out and "targets" in out
    if HAS_MPL:
        assert (tmp_path / "bench-kernels.png").exists()
        assert (tmp_path / "bench-scaling.png").exists()


def test_bench_suite_selection_and_custom_sizes(tmp_path):
    res = _run(tmp_path, "step", "--sizes", "3-5-2:b2", "--no-torch", "--no-sklearn",
               "--no-plots")
    assert [r["config"] for r in res["step"]] == ["3-5-2:b2"]
    assert res["step"][0]["sizes"] == [3, 5, 2] and res["step"][0]["batch"] == 2
    assert "kernels" not in res and "scaling" not in res
    assert {t["met"] for t in res["targets"]} == {None}


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (the 'bench' extra)")
def test_bench_step_against_torch(tmp_path):
    res = _run(tmp_path, "step", "--no-sklearn", "--no-plots", "--threads", "1")
    assert res["meta"]["threads"]["torch_requested"] == 1
    for r in res["step"]:
        assert _positive(r["torch_s"]) and _positive(r["devnet_over_torch"])
        assert _positive(r["torch_floor_s"])


@pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn is not installed (the 'bench' extra)")
def test_bench_epoch_against_sklearn(tmp_path):
    res = _run(tmp_path, "sklearn", "--no-torch", "--no-plots", "--sklearn-samples", "64")
    r = res["sklearn"]
    assert r["epoch_samples"] == 64
    assert _positive(r["devnet_epoch_s"]) and _positive(r["sklearn_epoch_s"])
    row = [t for t in res["targets"] if t["field"] == "devnet_over_sklearn"][0]
    assert row["value"] == r["devnet_over_sklearn"]


def test_report_targets_on_synthetic_results():
    res = {"step": [{"config": "M", "devnet_over_torch": 0.8, "devnet_over_floor": 1.3}],
           "kernels": [{"kernel": "a", "size_mb": 64, "fused_over_copy": 0.9},
                       {"kernel": "b", "size_mb": 128, "fused_over_copy": 0.5},
                       {"kernel": "c", "size_mb": 1, "fused_over_copy": 0.1}],
           "fusion": [{"kernel": "d", "speedup": 3.0}, {"kernel": "e", "speedup": 1.5}]}
    got = {t["target"]: t for t in report.check_targets(res)}
    assert got["devnet step / PyTorch step, M"]["met"] is True
    assert got["devnet step / GEMM floor, M"]["met"] is False
    worst = [t for t in got.values() if t["field"] == "fused_over_copy"][0]
    assert worst["value"] == 0.5 and worst["where"] == "b" and worst["met"] is False
    assert got["devnet step / PyTorch step, S"]["met"] is None
    fusion = [t for t in got.values() if t["field"] == "speedup"][0]
    assert fusion["value"] == 1.5 and fusion["where"] == "e" and fusion["met"] is False


@pytest.fixture
def small_model(backend):
    model = dn.MLP([6, 12, 12, 3], backend=backend, seed=1)
    rng = np.random.default_rng()
    X = rng.standard_normal((5, 6)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    return model, X, y


def test_profile_breaks_a_step_into_the_models_ops(small_model):
    model, X, y = small_model
    be = model.backend
    ceil = measure_ceilings(be, copy_mb=0.25, gemm_n=64, repeats=2)
    rep = dn.profile(model, X, y, loss="cross_entropy", optimizer="adam", repeats=2, warmup=1,
                     ceilings=ceil)
    assert isinstance(rep, ProfileReport)
    assert model.backend is be  # the proxy is removed again
    ops = [(o.layer, o.op) for o in rep.ops]
    for i in range(3):
        assert (f"layers.{i}", "forward matmul  X@W") in ops
        assert (f"layers.{i}", "backward matmul dW=X.T@dZ") in ops
    # no input gradient: the first layer has no dX matmul
    assert ("layers.0", "backward matmul dX=dZ@W.T") not in ops
    assert ("layers.2", "backward matmul dX=dZ@W.T") in ops
    assert ("layers.0", "bias+relu") in ops and ("layers.2", "bias+identity") in ops
    assert ("layers.1", "relu' + bias grad") in ops
    assert ("loss", "softmax_xent") in ops and ("optimizer", "adam_step") in ops
    assert len(ops) == 3 + 3 + 1 + 3 + 3 + 2 + 1 + 1  # + the python/glue row
    assert all(o.time_s >= 0 for o in rep.ops)
    mm = [o for o in rep.ops if "matmul" in o.op]
    assert all(o.flops > 0 and o.bytes > 0 for o in mm)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["batch_size"] == 5 and d["model"] == "6-12-12-3"
    assert "adam_step" in str(rep)
    assert set(rep.by_op()) >= {"forward matmul  X@W", "adam_step"}
    assert np.all(np.isfinite(be.to_numpy(model.params)))


def test_profile_command_json(capsys):
    assert profile_main(["--sizes", "4-8-2", "--batch-size", "3", "--device", "cpu",
                         "--repeats", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model"] == "4-8-2" and d["batch_size"] == 3
    assert {"copy_gbs", "gemm_gflops"} <= set(d["ceilings"])
    assert {o["layer"] for o in d["ops"]} >= {"layers.0", "layers.1", "loss", "optimizer"}


def test_bench_threads_suite_compares_serial_and_parallel_kernels(tmp_path):
    from devnet.kernels import cpu

    default = cpu.PARALLEL_MIN
    res = _run(tmp_path, "threads", "--sizes", "3-5-2:b2,8-16-4:b8", "--no-torch",
               "--no-sklearn", "--no-plots")
    rows = res["threads"]
    assert [r["config"] for r in rows] == ["3-5-2:b2", "8-16-4:b8"]
    for r in rows:
        assert _positive(r["serial_s"]) and _positive(r["parallel_s"])
        assert r["parallel_over_serial"] == pytest.approx(r["parallel_s"] / r["serial_s"])
    assert cpu.PARALLEL_MIN == default  # the switch is restored
