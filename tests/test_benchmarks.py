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
from devnet.kernels import reference, table
from devnet.kernels.reference import KERNEL_NAMES

import devnet as dn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a top-level folder of the repository
    sys.path.insert(0, str(ROOT))

from benchmarks import baseline, bench_fusion, bench_step, env, report, timing  # noqa: E402
from benchmarks import main as bench_main  # noqa: E402
from devnet.optim import Adam  # noqa: E402
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
TARGET_KEYS = {"target", "field", "where", "op", "bound", "value", "min", "max", "repetitions",
               "worst", "met", "graded", "not_graded"}


def _run(tmp_path, *args) -> dict:
    path = tmp_path / "bench.json"
    assert bench_main(["--quick", "--device", "cpu", "-q", "--json", str(path), *args]) == 0
    return json.loads(path.read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and np.isfinite(x) and x > 0


def test_bench_quick_writes_the_json_schema(tmp_path, capsys):
    # the suites with their own tests below (deep, lbfgs, distributed: MPI jobs) left out
    res = _run(tmp_path, "kernels", "fusion", "step", "scaling", "threads", "launch",
               "--no-torch", "--no-sklearn")
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
    # kernels without a plain baseline yet are listed with the reason, never silently missing
    for name in KERNEL_NAMES:
        case = name.removesuffix("_hyper")  # an in-place step entry: its step's case
        assert any(k.split("[")[0] == case for k in fusion) or \
            name in res["fusion_not_covered"], name
    assert not set(res["fusion_not_covered"]) & {k.split("[")[0] for k in fusion}
    assert all(_positive(r["speedup"]) for r in res["fusion"])
    # what ran is reported (the quick run has no M, M1 or sklearn-target rows), not graded
    measured = {t["target"] for t in res["targets"]}
    assert measured | set(res["targets_not_measured"]) == {t[0] for t in report.TARGETS}
    assert not measured & set(res["targets_not_measured"])
    assert all(TARGET_KEYS <= set(t) for t in res["targets"])
    assert all(t["repetitions"] >= 5 and t["min"] <= t["value"] <= t["max"]
               for t in res["targets"])
    assert all(t["met"] is None and t["graded"] is False and t["not_graded"].startswith(
        "--quick") for t in res["targets"])
    machine = res["meta"]["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and "blas" in machine
    assert res["meta"]["quiet"] in (True, False, None) and res["meta"]["quiet_reason"]
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
    assert res["targets"] == []  # a custom size measures none of the targets: none graded
    assert len(res["targets_not_measured"]) == len(report.TARGETS)
    row = res["step"][0]
    assert row["repetitions"] >= 5 and len(row["devnet_over_floor_reps"]) == row["repetitions"]
    assert row["devnet_over_floor_min"] <= row["devnet_over_floor"] <= \
        row["devnet_over_floor_max"]


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (the 'bench' extra)")
def test_bench_step_against_torch(tmp_path):
    res = _run(tmp_path, "step", "--no-sklearn", "--no-plots", "--threads", "1")
    assert res["meta"]["threads"]["torch_requested"] == 1
    for r in res["step"]:
        assert _positive(r["torch_s"]) and _positive(r["devnet_over_torch"])
        assert _positive(r["torch_floor_s"])
        # the peer is the faster of the raced Adam configurations, both recorded
        assert set(r["torch_configs_s"]) == set(bench_step.TORCH_ADAM)
        assert r["torch_s"] == min(r["torch_configs_s"].values())
        assert r["torch_configs_s"][r["torch_config"]] == r["torch_s"]
        assert len(r["devnet_over_torch_reps"]) >= 5
        assert r["torch_compile_skipped"] == "--quick"
    tiny = [t for t in res["targets"] if t["where"] == "tiny"][0]
    assert tiny["peer"] in bench_step.TORCH_ADAM
    assert tiny["worst"] == max(res["step"][0]["devnet_over_torch_reps"])
    # the tiny config has the target's size, but --quick's few short samples grade nothing
    assert tiny["met"] is None and tiny["not_graded"].startswith("--quick times few")
    s = [t for t in res["targets"] if t["where"] == "S"][0]
    assert s["met"] is None and s["not_graded"] == ("--quick measures 16-32-10 b8, the target "
                                                    "is for 64-128-128-10 b64")


@pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn is not installed (the 'bench' extra)")
def test_bench_epoch_against_sklearn(tmp_path):
    res = _run(tmp_path, "sklearn", "--no-torch", "--no-plots", "--sklearn-samples", "64")
    r = res["sklearn"]
    assert r["epoch_samples"] == 64
    assert _positive(r["devnet_epoch_s"]) and _positive(r["sklearn_epoch_s"])
    row = [t for t in res["targets"] if t["field"] == "devnet_over_sklearn"][0]
    assert row["value"] == r["devnet_over_sklearn"]
    # a 64x16 epoch reports its ratio but is not graded against the 60000x784 target
    assert row["met"] is None and row["graded"] is False
    assert row["not_graded"] == ("--quick measures 64x16 hidden (32, 32) b32, the target is "
                                 "for 60000x784 hidden (256, 256) b128")


def _r(median, reps):
    return {"x": median, "x_min": min(reps), "x_max": max(reps), "x_reps": reps}


def _ratio(field, median, reps):
    return {k.replace("x", field, 1): v for k, v in _r(median, reps).items()}


def test_bench_quick_reports_figures_but_grades_nothing(tmp_path, capsys):
    # a quick fusion run (16384 elements) was graded met / NO against the 1M-element target
    res = _run(tmp_path, "fusion", "--kernel-names", "adam_step,sgd_step", "--no-torch",
               "--no-sklearn", "--no-plots")
    assert res["meta"]["quick"] is True
    (fusion,) = [t for t in res["targets"] if t["field"] == "speedup"]
    worst = min(min(r["speedup_reps"]) for r in res["fusion"])
    assert fusion["worst"] == worst and _positive(fusion["value"])  # the figures are there
    assert fusion["met"] is None and fusion["graded"] is False
    assert fusion["not_graded"] == (f"--quick measures {bench_fusion.QUICK_ELEMENTS} float32, "
                                    "the target is for 1048576 float32")
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith(fusion["target"])]
    assert line.rstrip().endswith("not graded") and not line.rstrip().endswith(("yes", "NO"))
    assert f"not graded: {fusion['target']}: --quick measures" in out
    # the README block a quick file would write says so too
    assert "| not graded |" in report.readme_block(res, "quick.json")


def _synthetic_sklearn(samples: int) -> dict:
    return {"config": "sklearn-target", "sizes": [784, 256, 256, 10], "batch": 128,
            "epoch_samples": samples,
            **_ratio("devnet_over_sklearn", 0.2, [0.2, 0.2, 0.25, 0.2, 0.2])}


def test_report_grades_only_the_targets_size_and_never_a_quick_run():
    full = {"sklearn": _synthetic_sklearn(60000),
            "fusion": [{"kernel": "d", "elements": 1 << 20, "dtype": "float32",
                        **_ratio("speedup", 3.0, [3.0] * 5)}]}
    got = {t["field"]: t for t in report.check_targets({"meta": {"quick": False}, **full})}
    assert got["devnet_over_sklearn"]["met"] is True and got["speedup"]["met"] is True
    assert got["devnet_over_sklearn"]["graded"] and got["devnet_over_sklearn"]["not_graded"] \
        is None
    # the same figures from a quick run: reported, not graded
    quick = report.check_targets({"meta": {"quick": True}, **full})
    assert [t["met"] for t in quick] == [None, None]
    assert {t["value"] for t in quick} == {0.2, 3.0}
    # a full run at another size (--sklearn-samples 5000) is not graded either
    small = report.check_targets({"sklearn": _synthetic_sklearn(5000)})
    assert small[0]["met"] is None and small[0]["not_graded"] == (
        "this run measures 5000x784 hidden (256, 256) b128, the target is for 60000x784 "
        "hidden (256, 256) b128")
    assert "not graded: devnet epoch / sklearn epoch" in report.render(
        {"meta": {"host": "h", "device": "cpu", "device_name": "cpu", "kernels": "fused",
                  "threads": {"pools": [], "numba": 1, "torch": None}},
         "targets": small})


def test_target_sizes_are_the_benchmarks_own():
    for (suite, config), size in report.TARGET_SIZES.items():
        if suite == "step":
            cfg = bench_step.CONFIGS[config]
            assert size == report.row_size("step", {"sizes": cfg.sizes, "batch": cfg.batch})
    assert report.TARGET_SIZES[("fusion", None)] == f"{bench_fusion.ELEMENTS} float32"
    assert {("step", t[2]) for t in report.TARGETS if t[1] == "step"} <= set(report.TARGET_SIZES)


def test_report_targets_on_synthetic_results():
    res = {"step": [{"config": "M", **_ratio("devnet_over_torch", 0.8, [0.7, 0.8, 0.8, 0.85,
                                                                         0.88]),
                     **_ratio("devnet_over_floor", 1.3, [1.2, 1.3, 1.3, 1.3, 1.4])},
                    {"config": "M1", **_ratio("devnet_over_torch", 0.5, [0.4, 0.5, 0.5, 0.5,
                                                                          0.65])}],
           "kernels": [{"kernel": "a", "size_mb": 64, **_ratio("fused_over_copy", 0.9, [0.9] * 5)},
                       {"kernel": "b", "size_mb": 128,
                        **_ratio("fused_over_copy", 0.5, [0.5] * 5)},
                       {"kernel": "c", "size_mb": 1, **_ratio("fused_over_copy", 0.1, [0.1] * 5)}],
           "fusion": [{"kernel": "d", **_ratio("speedup", 3.0, [3.0] * 5)},
                      {"kernel": "e", **_ratio("speedup", 2.5, [2.5, 2.5, 2.5, 2.5, 1.9])}]}
    got = {t["target"]: t for t in report.check_targets(res)}
    m = got["devnet step / fastest PyTorch eager step, M"]
    assert m["met"] is True and m["worst"] == 0.88 and (m["min"], m["max"]) == (0.7, 0.88)
    # median 0.5 meets <= 0.6, but one repetition (0.65) does not: not met
    m1 = got["devnet step / fastest PyTorch eager step, M1"]
    assert m1["value"] == 0.5 and m1["met"] is False
    assert got["devnet step / GEMM floor, M"]["met"] is False
    worst = [t for t in got.values() if t["field"] == "fused_over_copy"][0]
    assert worst["value"] == 0.5 and worst["where"] == "b" and worst["met"] is False
    assert "devnet step / fastest PyTorch eager step, S" not in got  # not measured: not graded
    fusion = [t for t in got.values() if t["field"] == "speedup"][0]
    # every median >= 2, but e's worst repetition is 1.9
    assert fusion["value"] == 2.5 and fusion["where"] == "e" and fusion["met"] is False


def test_run_is_not_called_quiet_under_load():
    assert env.quiet([0.1, 0.1, 0.1], 0.05, 2)[0] is True
    ok, why = env.quiet([0.1, 0.1, 0.1], 0.6, 2)  # other processes during the run
    assert ok is False and "NOT quiet" in why and "60%" in why
    ok, why = env.quiet([1.2, 1, 1], 0.0, 4)  # a loaded machine at the start
    assert ok is False and "1.20" in why
    assert env.quiet(None, 0.1, 2)[0] is True and env.quiet([0.1] * 3, None, 2)[0] is True
    assert env.quiet(None, None, 2)[0] is None


def test_other_work_is_the_machines_busy_time_less_the_runs_own():
    # 2 s on 2 cores: 4 busy core-seconds, 3 of them the run's (its threads, its children)
    start = {"busy_s": 100.0, "own_s": 10.0, "wall_s": 50.0}
    end = {"busy_s": 104.0, "own_s": 13.0, "wall_s": 52.0}
    assert env.other_share(start, end, 2) == pytest.approx(0.25)
    assert env.other_share(start, {**end, "own_s": 15.0}, 2) == 0.0  # never below 0
    assert env.other_share(start, None, 2) is None
    clock = env.cpu_clock()
    assert clock is None or set(clock) == {"busy_s", "own_s", "wall_s"}


def test_interleaved_settles_each_block_on_its_own_function(monkeypatch):
    # against another library's thread pools (the step suite: devnet against PyTorch) every
    # timed block follows untimed calls of its own function (settle), round after round
    events = []
    measure = timing.measure
    monkeypatch.setattr(timing, "settle",
                        lambda fn, clock, seconds: events.append(("settle", fn, seconds)))
    monkeypatch.setattr(timing, "measure", lambda fn, clock, per: (
        events.append(("measure", fn)), measure(fn, clock, per))[1])
    fa, fb = (lambda: None), (lambda: None)
    settings = timing.Settings(warmup=1, budget_s=1e-3, min_repeats=2, max_repeats=2,
                               min_sample_s=0.0, settle_s=0.3)
    fns = {"a": (fa, timing.HostClock()), "b": (fb, timing.HostClock())}
    out = timing.interleaved(fns, settings, repetitions=3, settle_pools=True)
    assert events == [("settle", fa, 0.3), ("measure", fa),
                      ("settle", fb, 0.3), ("measure", fb)] * 3
    assert [len(out[k].reps) for k in "ab"] == [3, 3]
    events.clear()  # competitors on one pool (devnet's kernels against NumPy): no settling
    timing.interleaved(fns, settings, repetitions=2)
    assert events == [("measure", fa), ("measure", fb)] * 2


@pytest.mark.skipif(not HAS_TORCH, reason="needs PyTorch (pip install -e '.[bench]')")
def test_spin_check_times_pytorch_three_ways(capsys):
    from benchmarks import spin_check

    assert spin_check.main(["--rounds", "1", "--threads", "1"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].startswith("PyTorch M1 step, ms: clean") and len(rows) == 2
    assert all(float(v) > 0 for v in rows[1].split(" / "))


def test_settle_calls_the_function_for_the_whole_span_then_syncs():
    import time

    calls, synced = [], []
    clock = timing.HostClock(sync=lambda: synced.append(len(calls)))
    t0 = time.perf_counter()
    timing.settle(lambda: calls.append(time.perf_counter()), clock, 0.02)
    assert time.perf_counter() - t0 >= 0.02 and len(calls) > 1  # back-to-back calls, 20 ms
    assert synced == [0, len(calls)]  # the device waited on before and after
    calls.clear()
    timing.settle(lambda: calls.append(1), clock, 0.0)
    assert calls == []
    assert timing.Settings.quick().settle_s == 0 and timing.Settings().settle_s >= 0.2


def test_bench_writes_to_the_current_directory_not_the_source_tree(tmp_path, monkeypatch):
    """`devnet bench` writes its results under the current directory, never into the checkout's
    benchmarks/results/ (which may be read-only or someone else's)."""
    before = set(report.RESULTS_DIR.iterdir())
    monkeypatch.chdir(tmp_path)
    assert bench_main(["step", "--quick", "--device", "cpu", "-q", "--sizes", "3-5-2:b2",
                       "--no-torch", "--no-sklearn", "--no-plots"]) == 0
    written = list(tmp_path.glob("*.json"))
    assert len(written) == 1 and json.loads(written[0].read_text())["step"]
    assert set(report.RESULTS_DIR.iterdir()) == before
    out = tmp_path / "elsewhere"
    assert bench_main(["step", "--quick", "--device", "cpu", "-q", "--sizes", "3-5-2:b2",
                       "--no-torch", "--no-sklearn", "--no-plots", "--out", str(out)]) == 0
    assert len(list(out.glob("*.json"))) == 1


def test_bench_rejects_few_repetitions_and_unknown_suites(capsys):
    with pytest.raises(SystemExit):
        bench_main(["--repetitions", "3", "--device", "cpu"])
    with pytest.raises(SystemExit):
        bench_main(["stepp", "--device", "cpu"])
    assert "valid: kernels" in capsys.readouterr().err


def test_report_readme_rewrites_only_the_marked_block(tmp_path):
    res = _run(tmp_path, "step", "fusion", "--no-torch", "--no-sklearn", "--no-plots",
               "--kernel-names", "bias_act_fwd[tanh],adam_step")
    results = tmp_path / "bench.json"
    readme = tmp_path / "README.md"
    readme.write_text("# title\nkept\n<!-- bench:start -->\nold figure 50x\n"
                      "<!-- bench:end -->\ntail kept\n")
    assert bench_main(["report", "--readme", str(readme), str(results)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\nkept\n<!-- bench:start -->\n")
    assert text.endswith("<!-- bench:end -->\ntail kept\n")
    assert "old figure" not in text and "tiny" in text
    tanh = [r for r in res["fusion"] if r["kernel"] == "bias_act_fwd[tanh]"][0]
    assert f"{tanh['speedup']:.3g}" in text and "same" in text  # the figures come from the JSON
    no_block = tmp_path / "other.md"
    no_block.write_text("nothing\n")
    assert bench_main(["report", "--readme", str(no_block), str(results)]) == 2
    assert no_block.read_text() == "nothing\n"


@pytest.fixture
def small_model(backend, rng):
    model = dn.MLP([6, 12, 12, 3], backend=backend, seed=1)
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
    assert ("loss", "softmax_xent") in ops and ("optimizer", "adam_step_hyper") in ops
    assert ("optimizer", "opt_advance") in ops
    assert len(ops) == 3 + 3 + 1 + 3 + 3 + 2 + 2 + 1  # + the python/glue row
    assert all(o.time_s >= 0 for o in rep.ops)
    mm = [o for o in rep.ops if "matmul" in o.op]
    assert all(o.flops > 0 and o.bytes > 0 for o in mm)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["batch_size"] == 5 and d["model"] == "6-12-12-3"
    assert "adam_step" in str(rep)
    assert set(rep.by_op()) >= {"forward matmul  X@W", "adam_step_hyper", "opt_advance"}
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


# --- the plain-NumPy baseline computes what the kernels compute ---------------------------------

_F64 = dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", reference.ACTIVATION_NAMES)
@pytest.mark.parametrize("with_z", [False, True])
def test_baseline_activations_match_the_reference(act, with_z, rng):
    A = 2 * rng.standard_normal((7, 5))
    b = rng.standard_normal(5)
    Z1 = np.full_like(A, np.nan) if with_z else None
    Z2 = np.full_like(A, np.nan) if with_z else None
    A1, A2 = A.copy(), A.copy()
    baseline.bias_act_fwd(act, A1, b, Z1, 0.03)
    reference.bias_act_fwd(act, A2, b, Z2, 0.03)
    np.testing.assert_allclose(A1, A2, **_F64)
    if with_z:
        np.testing.assert_allclose(Z1, Z2, **_F64)
    Z = A + b
    G = rng.standard_normal(A.shape)
    for alias in (False, True):
        d1, db1 = (G.copy(), np.full(5, np.nan)) if alias else (np.full_like(G, np.nan),
                                                                np.full(5, np.nan))
        d2, db2 = np.full_like(G, np.nan), np.full(5, np.nan)
        baseline.act_bwd(act, d1 if alias else G, A2, Z, d1, db1, 0.03)
        reference.act_bwd(act, G, A2, Z, d2, db2, 0.03)
        np.testing.assert_allclose(d1, d2, **_F64)
        np.testing.assert_allclose(db1, db2, **_F64)


def test_baseline_same_accuracy_tanh(rng):
    x = (6 * rng.standard_normal(1000)).astype(np.float32)
    out = x.copy()
    baseline.tanh_rational_(out)
    ulps = np.abs(out - np.tanh(x.astype(np.float64))) / np.spacing(np.abs(out))
    assert float(ulps.max()) <= 8


@pytest.mark.parametrize("name,target", [("softmax_xent", "labels"), ("softmax_xent", "probs"),
                                         ("sigmoid_bce", "binary"), ("mse", "values"),
                                         ("mae", "values"), ("huber", "values"),
                                         ("poisson", "counts")])
@pytest.mark.parametrize("weighted", [False, True])
def test_baseline_losses_match_the_reference(name, target, weighted, rng):
    Z = 3 * rng.standard_normal((9, 4))
    T = {"labels": lambda: rng.integers(0, 4, 9), "probs": lambda: rng.random((9, 4)),
         "binary": lambda: rng.integers(0, 2, (9, 4)).astype(float),
         "values": lambda: rng.standard_normal((9, 4)),
         "counts": lambda: rng.poisson(2.0, (9, 4)).astype(float)}[target]()
    w = rng.random(9) + 0.5 if weighted else None
    kw = {"delta": 0.8} if name == "huber" else {}
    g1, g2 = np.full_like(Z, np.nan), np.full_like(Z, np.nan)
    v1 = getattr(baseline, name)(Z.copy(), T, g1, w, 0.3, **kw)
    v2 = getattr(reference, name)(Z.copy(), T, g2, w, 0.3, **kw)
    np.testing.assert_allclose(g1, g2, **_F64)
    np.testing.assert_allclose(float(v1), float(v2), **_F64)
    if name == "softmax_xent":  # grad may alias the logits
        Zc = Z.copy()
        v3 = baseline.softmax_xent(Zc, T, Zc, w, 0.3)
        np.testing.assert_allclose(Zc, g2, **_F64)
        np.testing.assert_allclose(float(v3), float(v2), **_F64)


_STEP_CALLS = {
    "sgd_step": lambda k, b, wd: k.sgd_step(b["p"], b["g"], 0.05, wd),
    "momentum_step": lambda k, b, wd: k.momentum_step(b["p"], b["g"], b["a"], 0.05, 0.9, wd),
    "nesterov_step": lambda k, b, wd: k.nesterov_step(b["p"], b["g"], b["a"], 0.05, 0.9, wd),
    "rmsprop_step": lambda k, b, wd: k.rmsprop_step(b["p"], b["g"], b["sq"], None, None, 0.01,
                                                    0.9, 0.0, 1e-8, wd, False),
    "rmsprop_step[centered,momentum]": lambda k, b, wd: k.rmsprop_step(
        b["p"], b["g"], b["sq"], b["a"], b["gavg"], 0.01, 0.9, 0.9, 1e-8, wd, True),
    "adam_step": lambda k, b, wd: k.adam_step(b["p"], b["g"], b["a"], b["sq"], None, 1e-2, 0.9,
                                              0.999, 1e-8, wd, 0.271, 0.003, False),
    "adam_step[amsgrad]": lambda k, b, wd: k.adam_step(b["p"], b["g"], b["a"], b["sq"],
                                                       b["vmax"], 1e-2, 0.9, 0.999, 1e-8, wd,
                                                       0.271, 0.003, True),
    "adamw_step": lambda k, b, wd: k.adamw_step(b["p"], b["g"], b["a"], b["sq"], None, 1e-2,
                                                0.9, 0.999, 1e-8, wd, 0.271, 0.003, False),
}


@pytest.mark.parametrize("name", list(_STEP_CALLS))
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_baseline_steps_match_the_reference(name, wd, rng):
    n = 33
    bufs = {"p": rng.standard_normal(n), "g": rng.standard_normal(n),
            "a": rng.standard_normal(n), "sq": rng.uniform(1.5, 2.5, n),
            "gavg": 0.1 * rng.standard_normal(n), "vmax": rng.uniform(0, 3, n)}
    b1 = {k: v.copy() for k, v in bufs.items()}
    b2 = {k: v.copy() for k, v in bufs.items()}
    _STEP_CALLS[name](baseline, b1, wd)
    _STEP_CALLS[name](reference, b2, wd)
    for key in bufs:
        np.testing.assert_allclose(b1[key], b2[key], **_F64, err_msg=key)
    assert not np.array_equal(b1["p"], bufs["p"])


# --- the deep-network kernels: LayerNorm, dropout, their fused activation forms -----------------

@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (7, 13), (33, 70)])
def test_baseline_layernorm_matches_the_reference(shape, rng):
    n, m = shape
    X = rng.standard_normal(shape) * rng.uniform(0.1, 3) + rng.uniform(-5, 5)
    gamma, beta = rng.standard_normal(m), rng.standard_normal(m)
    outs = []
    for k in (baseline, reference):
        Y, mean, rstd = np.full(shape, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        k.layernorm_fwd(X, gamma, beta, Y, mean, rstd)
        outs.append((Y, mean, rstd))
    for got, want in zip(*outs, strict=True):
        np.testing.assert_allclose(got, want, **_F64)
    _, mean, rstd = outs[1]
    G, R = rng.standard_normal(shape), rng.standard_normal(shape)
    # dX alone, dX + the residual skip R, and dX written over G or over R (allowed aliases)
    for skip, alias in ((None, None), (R, None), (None, "G"), (R, "R")):
        res = []
        for k in (baseline, reference):
            G1, R1 = G.copy(), None if skip is None else skip.copy()
            dX = {"G": G1, "R": R1, None: np.full(shape, np.nan)}[alias]
            dgamma, dbeta = np.full(m, np.nan), np.full(m, np.nan)
            k.layernorm_bwd(G1, X, mean, rstd, gamma, dX, dgamma, dbeta, R1)
            res.append((dX, dgamma, dbeta))
        for got, want in zip(*res, strict=True):
            np.testing.assert_allclose(got, want, **_F64, err_msg=f"skip={skip is not None}, "
                                       f"alias={alias}")


@pytest.mark.parametrize("p", [0.0, 0.4])
@pytest.mark.parametrize("act", sorted(set(reference.ACTIVATION_NAMES) - reference.ROWWISE))
def test_baseline_dropout_kernels_match_the_reference(act, p, rng):
    from devnet.kernels import scalar

    n, m = 17, 11
    A0, G, R = (rng.standard_normal((n, m)) * 2 for _ in range(3))
    b = rng.standard_normal(m)
    key = scalar.dropout_key(int(rng.integers(2**63)), int(rng.integers(10**6)), 3)
    keep_z = act in reference.NEEDS_PREACTIVATION
    res = []
    for k in (baseline, reference):
        A = A0.copy()
        Z = np.full_like(A, np.nan) if keep_z else None
        for skip in (None, R):
            A = A0.copy()
            out = np.full_like(A, np.nan) if skip is not None else None
            k.bias_act_drop_fwd(act, A, b, Z, 0.05, p, key, skip, out)
        dZ, db = np.full_like(A, np.nan), np.full(m, np.nan)
        k.act_drop_bwd(act, G, A, Z, dZ, db, 0.05, p, key)
        G2, db2 = G.copy(), np.full(m, np.nan)
        k.act_drop_bwd(act, G2, A, Z, G2, db2, 0.05, p, key)  # in place: dZ is G
        res.append((A, out, dZ, db, G2, db2))
    for i, (got, want) in enumerate(zip(*res, strict=True)):
        np.testing.assert_allclose(got, want, **_F64, err_msg=str(i))
    if p:
        assert (res[0][0] == 0).any() and (res[0][2] == 0).any()


def test_baseline_dropout_mask_is_the_kernels_mask_bit_for_bit(rng):
    from devnet.kernels import scalar

    p = float(rng.uniform(0.05, 0.95))
    key = scalar.dropout_key(int(rng.integers(2**63)), 9, 1)
    A = rng.standard_normal((300, 257)).astype(np.float32)
    B = A.copy()
    baseline.dropout_fwd(A, p, key)
    reference.dropout_fwd(B, p, key)
    np.testing.assert_array_equal(A, B)
    np.testing.assert_array_equal(baseline.dropout_keep(np, A.shape, p, key),
                                  reference.dropout_mask(np, A.shape, p, key))


def test_fusion_covers_every_kernel_and_poisson_gets_counts():
    assert bench_fusion.not_covered() == {
        table.ADVANCE_KERNEL: "one thread over a few scalars: nothing to fuse"}
    # every kernel but the advance; an optimizer's in-place entry under its step's name
    assert {n.split("[")[0] for n in bench_fusion.CASE_NAMES} == \
        set(KERNEL_NAMES) - set(table.STEP_HYPER_KERNELS) - {table.ADVANCE_KERNEL} \
        | set(table.STEP_KERNELS)
    case = {c.name: c for c in bench_fusion.CASES}["poisson"]
    ops = case.make(np, np.random.default_rng(0), 1 << 12, "float32")
    T = ops["T"]
    assert T.shape == ops["Z"].shape and (T >= 0).all() and np.array_equal(T, np.round(T))
    assert (T == 0).any() and (T >= 3).any()  # Poisson(2) counts, zeros included


# --- the deep, lbfgs and distributed suites ------------------------------------------------------

def test_bench_deep_suite_runs_on_tiny_sizes(tmp_path, capsys):
    res = _run(tmp_path, "deep", "--no-torch", "--no-sklearn", "--no-plots")
    deep = res["deep"]
    assert set(deep) == {"layernorm_vs_copy", "layernorm_vs_unfused", "step"}
    assert all(_positive(v) for v in deep["layernorm_vs_copy"]["gb_s"].values())
    for stats in (deep["layernorm_vs_unfused"]["fwd_speedup"],
                  deep["layernorm_vs_unfused"]["bwd_speedup"],
                  deep["step"]["residual_ln_over_plain"]):
        assert len(stats["reps"]) >= 5 and stats["min"] <= stats["median"] <= stats["max"]
    assert "deep networks" in capsys.readouterr().out


@pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn is not installed (the 'bench' extra)")
def test_bench_lbfgs_suite_sits_in_the_sklearn_results(tmp_path, capsys):
    res = _run(tmp_path, "lbfgs", "--no-torch", "--no-plots")
    rows = res["sklearn"]["lbfgs"]
    assert [r["dataset"] for r in rows] == ["digits", "synthetic"]
    for r in rows:
        assert r["device"] == "cpu" and 1 <= r["devnet_iters"] <= 5
        assert _positive(r["devnet_iter_s"]) and _positive(r["sklearn_iter_s"])
        assert r["devnet_over_sklearn"] == pytest.approx(r["devnet_iter_s"] / r["sklearn_iter_s"])
    assert "devnet_epoch_s" not in res["sklearn"]  # the epoch comparison was not asked for
    assert "L-BFGS vs scikit-learn" in capsys.readouterr().out


HAS_MPI = importlib.util.find_spec("mpi4py") is not None


def _mpiexec() -> bool:
    from devnet import distributed
    from devnet.errors import DevnetError

    try:
        distributed.mpiexec_command(1)
    except DevnetError:
        return False
    return True


@pytest.mark.skipif(not HAS_MPI or not _mpiexec(),
                    reason="mpi4py or mpiexec missing (pip install 'devnet-mlp[mpi]')")
def test_bench_distributed_suite_runs_two_ranks(tmp_path, capsys):
    res = _run(tmp_path, "distributed", "--nproc", "2", "--no-torch", "--no-sklearn",
               "--no-plots")
    d = res["distributed"]
    assert d["sizes"] == [16, 32, 32, 4] and d["global_batch"] == 64  # the quick sizes
    (run,) = d["runs"]
    assert run["ranks"] == 2 and _positive(run["samples_per_s"])
    # the machine's ceiling, relative to the first rank count run (here 2 itself)
    assert d["gemm_speedup"] in ({2: 1.0}, {"2": 1.0})
    assert _positive(run["allreduce_ms"]) and _positive(run["ring_model_ms"])
    assert "data-parallel fit" in capsys.readouterr().out


def test_bench_distributed_suite_says_why_it_skipped(tmp_path, monkeypatch):
    from devnet import distributed
    from devnet.errors import MissingDependencyError

    def no_mpiexec(nproc, hosts=None):
        raise MissingDependencyError("no mpiexec found (test)")
    monkeypatch.setattr(distributed, "mpiexec_command", no_mpiexec)
    res = _run(tmp_path, "distributed", "--no-torch", "--no-sklearn", "--no-plots")
    assert "distributed" not in res
    assert res["skipped"]["distributed"] in (
        "no mpiexec found (test)", "mpi4py not installed (pip install 'devnet-mlp[mpi]')")


def test_every_suite_is_registered():
    import benchmarks

    assert set(benchmarks.SUITES) >= {"kernels", "fusion", "step", "sklearn", "lbfgs", "scaling",
                                      "threads", "launch", "deep", "distributed"}


def test_deep_targets_are_graded_at_the_issues_sizes_only():
    def stats(reps):
        return {"median": float(np.median(reps)), "min": min(reps), "max": max(reps),
                "reps": reps}
    full = {"layernorm_vs_unfused": {"elements": 1 << 20, "fwd_speedup": stats([3.0] * 5),
                                     "bwd_speedup": stats([2.5, 2.5, 2.5, 2.5, 1.9])},
            "step": {"sizes": [784, 1024, 1024, 10], "batch": 256,
                     "residual_ln_over_plain": stats([1.1, 1.2, 1.2, 1.2, 1.2])}}
    got = {t["target"]: t for t in report.check_targets({"deep": full})}
    fwd = got["unfused NumPy / fused LayerNorm forward, 1M float32"]
    bwd = got["unfused NumPy / fused LayerNorm backward, 1M float32"]
    step = got["residual+LayerNorm step / plain step, M b256"]
    assert fwd["met"] is True and fwd["repetitions"] == 5
    assert bwd["value"] == 2.5 and bwd["worst"] == 1.9 and bwd["met"] is False
    assert step["met"] is True and step["max"] == 1.2
    quick = {"layernorm_vs_unfused": {**full["layernorm_vs_unfused"], "elements": 1 << 14},
             "step": {**full["step"], "sizes": [32, 64, 64, 10], "batch": 32}}
    assert report.check_targets({"deep": quick}) == []  # tiny sizes are not graded


CEIL = {"copy_gbs": 10.0, "gemm_gflops": 10.0}  # fixed ceilings: no measuring in the tests


@pytest.mark.parametrize("kwargs, match", [
    ({"repeats": 0}, "repeats"), ({"repeats": 1.5}, "repeats"), ({"repeats": True}, "repeats"),
    ({"warmup": -1}, "warmup"), ({"warmup": None}, "warmup"),
    ({"ceilings": {"copy_gbs": 0.0, "gemm_gflops": 1.0}}, "copy_gbs"),
    ({"ceilings": [1, 2]}, "ceilings must be the dict"),
])
def test_profile_bad_arguments_were_raw_statistics_or_zero_division_errors(kwargs, match, rng):
    X, y = _data(rng, 16, 8)
    model = dn.MLP([8, 16, 3], seed=0, backend="cpu")
    kwargs = {"ceilings": CEIL, **kwargs}
    with pytest.raises(dn.ConfigError, match=match):
        dn.profile(model, X, y, **kwargs)


def test_profile_timed_out_of_range_labels_and_nan_inputs_instead_of_refusing(rng):
    X, y = _data(rng, 16, 8)
    model = dn.MLP([8, 16, 3], seed=0, backend="cpu")
    with pytest.raises(dn.DataError, match=r"labels.*\[0, 3\)"):
        dn.profile(model, X, y + 3, repeats=1, ceilings=CEIL)
    X[2, 1] = np.nan
    with pytest.raises(dn.DataError, match="NaN"):
        dn.profile(model, X, y, repeats=1, ceilings=CEIL)
    with pytest.raises(dn.ConfigError, match="MLP"):
        dn.profile(None, X, y, repeats=1, ceilings=CEIL)


@pytest.mark.parametrize("kwargs", [{"dropout": 0.3}, {"norm": "layernorm"},
                                    {"block": "residual", "norm": "layernorm", "dropout": 0.2}])
def test_profile_of_deep_options_crashed_or_booked_their_kernels_as_the_loss(kwargs, rng):
    X, y = _data(rng, 32, 16)
    model = dn.MLP([16, 16, 16, 3], seed=0, backend="cpu", **kwargs)
    report = dn.profile(model, X, y, repeats=2, ceilings=CEIL)
    assert [o.op for o in report.ops if o.layer == "loss"] == ["softmax_xent"]
    assert not any(o.layer.endswith("?") for o in report.ops)
    # the ops and the glue add up to the step; shares to 1
    assert sum(o.time_s for o in report.ops) == pytest.approx(max(report.step_s, report.ops_s))
    for o in report.ops:  # rates recomputed from the byte and flop counts
        if o.time_s > 0:
            assert o.gbs == pytest.approx(o.bytes / o.time_s / 1e9)
            assert o.pct_bandwidth == pytest.approx(o.gbs / CEIL["copy_gbs"])
    if kwargs.get("norm"):
        ln = next(o for o in report.ops if o.op == "layernorm_fwd")
        # X, Y (32, 16) float32; gamma, beta (16,); mean, rstd (32,)
        assert ln.bytes == 2 * 32 * 16 * 4 + 2 * 16 * 4 + 2 * 32 * 4


def test_profile_booked_opt_advance_as_reading_its_whole_table(rng):
    X, y = _data(rng, 32, 8)
    model = dn.MLP([8, 16, 3], seed=0, backend="cpu")
    opt = Adam(model.parameters(), lr=1e-3)
    report = dn.profile(model, X, y, optimizer=opt, repeats=1, ceilings=CEIL)
    adv = next(o for o in report.ops if o.op == "opt_advance")
    # the hyper array, and one row of the table (lr, bc1, bc2: float64)
    assert adv.bytes == opt.hyper.nbytes + 3 * 8
    step = next(o for o in report.ops if o.op == "adam_step_hyper")
    assert step.bytes == 7 * model.params.nbytes  # p, m, v read and written; g read
    mm = next(o for o in report.ops if o.op.startswith("forward") and o.layer == "layers.0")
    assert mm.flops == 2 * 32 * 8 * 16 and mm.bytes == (32 * 8 + 8 * 16 + 32 * 16) * 4


@pytest.mark.parametrize("kwargs, match", [({"dtype": "int8"}, "dtype"),
                                           ({"copy_mb": 0}, "copy_mb"),
                                           ({"repeats": 0}, "repeats"),
                                           ({"gemm_n": -3}, "gemm_n")])
def test_measure_ceilings_took_integer_dtypes_and_empty_buffers(kwargs, match):
    with pytest.raises(dn.ConfigError, match=match):
        measure_ceilings(dn.get_backend("cpu"), **kwargs)


@pytest.mark.parametrize("extra, match", [(["--batch-size", "-4"], None),
                                          (["--batch-size", "0"], None),
                                          (["--json", "/nonexistent/dir/x.json"], "folder"),
                                          (["--json", "."], "directory")])
def test_profile_command_crashed_on_bad_batch_size_or_json_path(extra, match, capsys):
    argv = ["--sizes", "8-16-3", "--repeats", "1", "--device", "cpu", *extra]
    if match is None:
        with pytest.raises(SystemExit) as info:
            profile_main(argv)
        assert info.value.code == 2 and "--batch-size" in capsys.readouterr().err
    else:
        with pytest.raises(dn.ConfigError, match=match):
            profile_main(argv)


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "poisson"])
def test_profile_command_fed_standard_normal_targets_to_any_loss(loss, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert profile_main(["--sizes", "8-16-2", "--batch-size", "16", "--repeats", "1",
                         "--device", "cpu", "--loss", loss, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["loss"] == loss


def _data(rng, n=96, n_in=5, k=3):
    return rng.standard_normal((n, n_in)).astype("float32"), rng.integers(0, k, n)


# --- the peers suite: JAX, PyTorch eager, torch.compile, scikit-learn's estimator -----------

HAS_JAX = importlib.util.find_spec("jax") is not None and \
    importlib.util.find_spec("optax") is not None
needs_jax = pytest.mark.skipif(not HAS_JAX, reason="JAX and optax are not installed (the "
                               "'bench' extra: pip install -e '.[bench]')")
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (the 'bench' "
                                 "extra)")
# float32 on 3-8-6-4 with the same weights: the peers differ from devnet by rounding only
_PEER_TOL = {"rtol": 2e-5, "atol": 2e-6}


def _peer_case(rng, n=11):
    """A devnet model with fresh weights and n rows (11: batches of 4 end with a partial 3)."""
    from benchmarks import bench_peers

    model = dn.MLP([3, 8, 6, 4], seed=int(rng.integers(2**31)), backend="cpu")
    X = rng.standard_normal((n, 3)).astype(np.float32)
    y = rng.integers(0, 4, n)
    return model, X, y, bench_peers.initial_weights(model)


def _devnet_step(model, X, y):
    from benchmarks import bench_peers

    opt = dn.optim.Adam(model.parameters(), lr=bench_peers.LR)
    step = dn.train.Step(model, "cross_entropy", opt)
    return float(step(X, y))


def _assert_same_weights(got, want):
    for (gW, gb), (wW, wb) in zip(got, want, strict=True):
        np.testing.assert_allclose(gW, wW, **_PEER_TOL)
        np.testing.assert_allclose(gb, wb, **_PEER_TOL)


@needs_jax
def test_jax_peer_step_and_gradients_match_devnet(rng):
    import jax
    import optax

    from benchmarks import bench_peers

    model, X, y, w0 = _peer_case(rng, n=5)
    peer = bench_peers.JaxPeer(jax, optax, w0)
    x, t = peer.put(X), peer.labels(y)
    # the gradient from the same weights
    step = dn.train.Step(model, "cross_entropy")
    value = float(step.loss_and_grad(X, y))
    grads = peer.grad_fn(peer.params, x, t)
    for layer, (dW, db) in zip(model.layers, grads, strict=True):
        np.testing.assert_allclose(np.asarray(dW), layer.dW, **_PEER_TOL)
        np.testing.assert_allclose(np.asarray(db), layer.db, **_PEER_TOL)
    assert float(peer.loss_fn(peer.params, x, t)) == pytest.approx(value, rel=1e-6)
    # one Adam step (jit, donated buffers): the same loss and the same weights after it
    assert float(peer.step(x, t)) == pytest.approx(_devnet_step(model, X, y), rel=1e-6)
    _assert_same_weights(peer.weights(), bench_peers.initial_weights(model))
    assert not np.allclose(peer.weights()[0][0], w0[0][0])  # the step moved the weights


@needs_jax
def test_jax_scan_epoch_matches_devnet_fit_with_a_partial_last_batch(rng):
    import jax
    import optax

    from benchmarks import bench_peers

    model, X, y, w0 = _peer_case(rng)
    hist = dn.fit(model, X, y, loss="cross_entropy", optimizer=dn.optim.Adam(
        model.parameters(), lr=bench_peers.LR), epochs=1, batch_size=4, shuffle=False,
        progress=False, train_metrics=False)
    peer = bench_peers.JaxPeer(jax, optax, w0)
    order = peer.put(np.arange(len(X), dtype=np.int32))
    loss = float(peer.epoch(peer.put(X), peer.labels(y), order, 4))
    # the epoch's loss weighs the last batch (3 rows) by its share of a batch, as fit does
    assert loss == pytest.approx(hist.history["loss"][0], rel=1e-5)
    _assert_same_weights(peer.weights(), bench_peers.initial_weights(model))


@needs_torch
@pytest.mark.parametrize("adam, compile_backend", [({"foreach": True}, None),
                                                   ({"fused": True}, None),
                                                   ({}, "aot_eager")])
def test_torch_peers_step_and_epoch_match_devnet(adam, compile_backend, rng):
    """Eager with each raced Adam, and the whole step under torch.compile: the benchmark
    compiles with inductor, which takes minutes here; aot_eager captures the same step
    (Dynamo, AOTAutograd, the compiled optimizer) without generating C++."""
    import torch

    from benchmarks import bench_peers

    model, X, y, w0 = _peer_case(rng)
    twin = dn.MLP([3, 8, 6, 4], backend="cpu")
    twin.params[...] = model.params
    peer = bench_peers.TorchPeer(torch, w0, adam=adam, compile=compile_backend)
    x, t = peer.put(X[:4]), peer.labels(y[:4])
    assert float(peer.step(x, t)) == pytest.approx(_devnet_step(model, X[:4], y[:4]), rel=1e-6)
    _assert_same_weights(peer.weights(), bench_peers.initial_weights(model))
    # an epoch over rows in a given order, partial last batch included
    peer = bench_peers.TorchPeer(torch, w0, adam=adam, compile=compile_backend)
    order = rng.permutation(len(X))
    loss = float(peer.epoch(peer.put(X), peer.labels(y), torch.from_numpy(order), 4))
    hist = dn.fit(twin, X[order], y[order], loss="cross_entropy", optimizer=dn.optim.Adam(
        twin.parameters(), lr=bench_peers.LR), epochs=1, batch_size=4, shuffle=False,
        progress=False, train_metrics=False)
    assert loss == pytest.approx(hist.history["loss"][0], rel=1e-5)
    _assert_same_weights(peer.weights(), bench_peers.initial_weights(twin))


def test_peers_ratios_take_each_familys_fastest_per_round():
    from benchmarks import bench_peers

    def rep(*medians):
        return timing.Repeated([timing.Timing(m, m, m, 1, 1) for m in medians])

    t = {"devnet Step": rep(2.0, 2.0, 2.0, 2.0, 2.0),
         "devnet fit[auto] epoch/steps": rep(1.0, 3.0, 1.0, 1.0, 1.0),
         "jax jit": rep(4.0, 4.0, 1.0, 4.0, 4.0), "jax scan epoch/steps": rep(2.0, 2.0, 2.0, 2.0,
                                                                              8.0),
         "torch adam(fused=True)": rep(8.0, 8.0, 8.0, 8.0, 8.0),
         "torch adam(foreach=True)": rep(10.0, 10.0, 10.0, 10.0, 1.0)}
    row = {}
    bench_peers.fill_ratios(row, t)
    assert row["devnet"] == "devnet fit[auto] epoch/steps" and row["devnet_s"] == 1.0
    # per round: devnet's best (1, 2, 1, 1, 1) over JAX's best (2, 2, 1, 2, 4)
    assert row["devnet_over_jax_reps"] == [0.5, 1.0, 1.0, 0.5, 0.25]
    assert row["devnet_over_jax"] == 0.5 and row["jax_peer"] == "jax scan epoch/steps"
    assert row["devnet_over_torch_reps"] == [1 / 8, 2 / 8, 1 / 8, 1 / 8, 1.0]
    assert row["torch_peer"] == "torch adam(fused=True)"
    # the fastest peer of all, per round: min(2, 8, 1) ... min(4, 1) in the last round
    assert row["devnet_over_fastest_peer_reps"] == [0.5, 1.0, 1.0, 0.5, 1.0]
    assert row["fastest_peer"] == "jax scan epoch/steps"
    assert set(row["devnet_variants"]) == {"devnet Step", "devnet fit[auto] epoch/steps"}
    assert "devnet_over_torch_compile" not in row and "devnet_over_sklearn" not in row


def test_peers_workloads_are_the_targets_sizes():
    from benchmarks import bench_peers

    for (suite, config), size in report.TARGET_SIZES.items():
        if suite == "peers":
            assert bench_peers.WORKLOADS[config].size == size, config
    assert {t[2] for t in report.TARGETS if t[1] == "peers"} == set(bench_peers.WORKLOADS)
    assert set(bench_peers.QUICK_WORKLOADS) <= set(bench_peers.WORKLOADS)
    with pytest.raises(SystemExit, match="unknown peer workload.*valid: step-tiny"):
        bench_peers.parse_workloads("step-tiny,step-XL", quick=False)


@needs_jax
def test_bench_peers_suite_writes_every_peer_and_grades_nothing_quick(tmp_path, capsys):
    res = _run(tmp_path, "peers", "--peer-workloads", "step-tiny,estimator-digits",
               "--no-plots")
    assert res["meta"]["versions"]["jax"] and res["meta"]["versions"]["optax"]
    peers = res["peers"]
    assert peers["threads"]["requested"] >= 1 and peers["threads"]["jax"] >= 1
    assert "how" in peers["threads"] and peers["skipped"]["torch.compile"] == "--quick"
    rows = {r["config"]: r for r in peers["rows"]}
    step = rows["step-tiny"]
    assert step["size"] == "2-8-2 b4" and step["steps_per_call"] >= 1
    assert {"jax jit", "jax scan epoch/steps", "devnet Step"} <= set(step["times_s"])
    assert all(_positive(s) for s in step["times_s"].values())
    assert step["jax_peer"] in ("jax jit", "jax scan epoch/steps")
    assert len(step["devnet_over_jax_reps"]) == step["repetitions"] >= 5
    assert _positive(step["devnet_over_fastest_peer"])
    if bench_peers_engines():  # fit's engines: both benchmarked, and which one ran is kept
        assert "devnet fit[auto] epoch/steps" in step["times_s"]
        assert set(step["engines_ran"].values()) <= {"python", "compiled"}
    if HAS_TORCH:
        assert set(step["torch_peer"].split(" ", 1)[1:]) <= set(bench_step.TORCH_ADAM)
        assert _positive(step["devnet_over_torch"])
    if HAS_SKLEARN:
        est = rows["estimator-digits"]
        assert _positive(est["devnet_over_sklearn"]) and est["fastest_peer"].startswith("sklearn")
        # both estimators ran every epoch asked for (no early stop)
        assert set(est["iterations"].values()) == {est["epochs"]}
    graded = [t for t in res["targets"] if t["target"] in
              {x[0] for x in report.TARGETS if x[1] == "peers"}]
    assert graded and all(t["met"] is None for t in graded)
    out = capsys.readouterr().out
    assert "devnet/JAX" in out and "step-tiny" in out
    assert "| devnet/JAX |" in report.readme_block(res, "quick.json")


def bench_peers_engines():
    from benchmarks import bench_peers

    return bench_peers.fit_engines()


def test_bench_peers_suite_without_jax_says_why(tmp_path):
    res = _run(tmp_path, "peers", "--peer-workloads", "step-tiny", "--no-jax", "--no-torch",
               "--no-plots")
    assert res["skipped"]["peers: jax"] == "--no-jax"
    (row,) = res["peers"]["rows"]
    assert "devnet_over_jax" not in row and "fastest_peer" not in row
    assert _positive(row["devnet_s"])


@needs_torch
def test_bench_peers_times_torch_compile_of_the_step(rng):
    import torch

    from benchmarks import bench_peers

    w = bench_peers.QUICK_WORKLOADS["step-tiny"]
    peers = bench_peers.Peers(torch=torch, torch_compile="aot_eager", skipped={})
    row = bench_peers.run_workload(dn.get_backend("cpu"), "step-tiny", w,
                                   timing.Settings.quick(), peers, seed=0, log=lambda m: None)
    assert "torch_compile_skipped" not in row
    assert _positive(row["torch_compile_s"]) and row["torch_compile_peer"] == "torch.compile"
    assert len(row["devnet_over_torch_compile_reps"]) == row["repetitions"]


def test_peers_per_step_competitors_are_timed_per_call_then_divided():
    from benchmarks import bench_peers

    def epoch():
        pass

    fns = {"a": (bench_peers.per_step(epoch, 4), None), "b": (lambda: None, None)}
    t = {"a": timing.Repeated([timing.Timing(8.0, 4.0, 12.0, 3, 2)]),
         "b": timing.Repeated([timing.Timing(8.0, 4.0, 12.0, 3, 2)])}
    bench_peers._per_step_times(t, fns)
    assert t["a"].reps[0] == timing.Timing(2.0, 1.0, 3.0, 3, 2)
    assert t["b"].reps[0] == timing.Timing(8.0, 4.0, 12.0, 3, 2)
