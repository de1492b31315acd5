"""devnet's benchmarks: kernels, fusion, training step, scaling; beside PyTorch and scikit-learn.

Suites (``SUITES``): kernels, fusion, step, sklearn (with lbfgs), lbfgs, scaling, threads,
launch (CUDA), deep (LayerNorm, residual step), distributed (mpiexec; skipped without MPI),
peers (devnet vs JAX jit/scan, PyTorch eager and torch.compile, scikit-learn's estimator).

Run ``python -m benchmarks`` (or ``devnet bench``) from the repository root; ``--help`` lists the
options, ``--quick`` runs tiny sizes in seconds (reported, never graded against the targets).
Everything is measured in ONE process, after warm-up, as medians of many samples, with the device
synchronised before every clock read (CUDA events on a GPU); competitors are measured
interleaved, ``--repetitions`` times round, and every graded ratio keeps its spread. Results: a
table on stdout, ``<out>/<host>-<device>-<date>.json`` (``--out``, default the current
directory) and PNG plots beside it.
``python -m benchmarks report --readme RESULTS.json`` rewrites README.md's speed claims from a
results file. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SUITES = ("kernels", "fusion", "step", "sklearn", "lbfgs", "scaling", "threads", "launch", "deep",
          "distributed", "peers")

__all__ = ["main", "SUITES"]


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x)


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="devnet bench", description="devnet benchmarks: kernels, training step vs PyTorch "
        "and scikit-learn, scaling, deep networks, data-parallel; table on stdout, JSON and "
        "PNG in --out (default: the current directory).")
    p.add_argument("suites", nargs="*", default=[],
                   metavar="SUITE", help=f"suites to run (default: all): {', '.join(SUITES)}")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and few repetitions (seconds; what the tests run): "
                   "figures are reported, no target is graded")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--kernels", default="fused", choices=("fused", "reference"),
                   help="devnet's kernel table for the step suites (default: fused)")
    p.add_argument("--sizes", default=None,
                   help="step configs, comma-separated: tiny,S,M1,M,L or '784-256-10:b128'")
    p.add_argument("--kernel-sizes", type=_floats, default=None, metavar="MB,...",
                   help="operand sizes in MB for the kernel suite")
    p.add_argument("--kernel-names", default=None,
                   help="only these kernels in the kernel and fusion suites (comma-separated)")
    p.add_argument("--fusion-elements", type=int, default=None, metavar="N",
                   help="elements per operand of the fusion suite (default 1048576)")
    p.add_argument("--batches", type=_ints, default=None, help="batch sizes of the batch sweep")
    p.add_argument("--widths", type=_ints, default=None, help="widths of the width sweep")
    p.add_argument("--sklearn-samples", type=int, default=None,
                   help="samples of the scikit-learn epoch comparison (default 60000)")
    p.add_argument("--epochs", type=int, default=5,
                   help="measured epochs per scikit-learn comparison, after one warm-up epoch "
                   "(the repetitions of that ratio)")
    p.add_argument("--nproc", type=_ints, default=None, metavar="N,...",
                   help="rank counts of the distributed suite (default 1,2)")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch intra-op threads (default: NumPy's BLAS thread count)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of samples per measurement (default 0.6; quick 0.02)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--no-jax", action="store_true", help="skip JAX (the peers suite)")
    p.add_argument("--peer-workloads", default=None, metavar="NAME,...",
                   help="workloads of the peers suite (default: all): step-tiny, step-S, "
                   "step-M1, step-M, epoch-digits, epoch-60000, estimator-digits")
    p.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for the JSON and PNG files (default: the current directory)")
    p.add_argument("--repetitions", type=int, default=None, metavar="N",
                   help="interleaved repetitions behind every graded ratio (default 5, min 5)")
    p.add_argument("--no-torch-compile", action="store_true",
                   help="skip the torch.compile peer (it compiles for minutes on a small CPU)")
    p.add_argument("--json", type=Path, default=None, help="exact JSON output path")
    p.add_argument("--no-json", action="store_true", help="write no JSON")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def report_main(argv: list[str]) -> int:
    """``python -m benchmarks report [--readme [README]] RESULTS.json``: print or publish."""
    import json

    from . import report

    p = argparse.ArgumentParser(prog="python -m benchmarks report",
                                description="Print a results JSON's tables, or rewrite the "
                                "README block between <!-- bench:start --> and "
                                "<!-- bench:end --> from it.")
    p.add_argument("results", type=Path, help="a JSON written by python -m benchmarks")
    p.add_argument("--readme", nargs="?", type=Path, const=Path("README.md"), default=None,
                   metavar="README", help="rewrite this README's bench block (default README.md)")
    args = p.parse_args(argv)
    try:
        results = json.loads(args.results.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    if results.get("schema") != report.SCHEMA:
        print(f"{args.results}: schema {results.get('schema')!r}, expected {report.SCHEMA!r} "
              "(rerun the benchmarks)", file=sys.stderr)
        return 2
    if args.readme is None:
        print(report.render(results))
        return 0
    if not report.update_readme(args.readme, results, str(args.results)):
        print(f"{args.readme}: no {report.README_START} ... {report.README_END} block",
              file=sys.stderr)
        return 2
    print(f"rewrote the bench block of {args.readme} from {args.results}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (or ``report``); returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    import devnet as dn

    from . import bench_step, env
    from .timing import Settings, is_gpu

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; valid: {', '.join(SUITES)}, "
                     "or 'report'")
    suites = tuple(args.suites) or SUITES
    backend = dn.get_backend(args.device, kernels=args.kernels)
    gpu = is_gpu(backend)
    settings = Settings.quick() if args.quick else Settings()
    if args.budget is not None:
        settings.budget_s = args.budget
    if args.repetitions is not None:
        if args.repetitions < 5:
            parser.error("--repetitions must be at least 5: graded ratios need a spread")
        settings.repetitions = args.repetitions
    threads = args.threads or env.numpy_blas_threads(default=1)
    torch, sklearn = bench_step.optional_peers(args.no_torch, args.no_sklearn, threads)
    try:
        return _run_suites(args, suites, backend, gpu, settings, threads, torch, sklearn)
    finally:  # PyTorch's thread count is process-wide: leave it as it was (tests run after)
        if torch is not None:
            torch.set_num_threads(torch.PEER_THREADS_BEFORE)


def _run_suites(args, suites, backend, gpu, settings, threads, torch, sklearn) -> int:
    from . import (
        bench_fusion,
        bench_kernels,
        bench_scaling,
        bench_step,
        bench_threads,
        env,
        report,
    )
    argv = args.argv

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    results: dict = {"schema": report.SCHEMA,
                     "meta": env.meta(backend, args.quick, argv, threads if torch else None),
                     "skipped": {}}
    if torch is None:
        results["skipped"]["torch"] = "PyTorch not installed (pip install 'devnet-mlp[bench]')" \
            if not args.no_torch else "--no-torch"
    if sklearn is None or gpu:
        results["skipped"]["sklearn"] = ("the epoch comparison runs on the CPU only (L-BFGS "
                                         "runs on the device)" if gpu and sklearn is not None
                                         else "scikit-learn runs on the CPU only" if gpu else
                                         "--no-sklearn" if args.no_sklearn else
                                         "scikit-learn not installed")

    names = args.kernel_names.split(",") if args.kernel_names else None
    if "kernels" in suites:
        sizes = args.kernel_sizes or (bench_kernels.QUICK_SIZES_MB if args.quick
                                      else bench_kernels.SIZES_MB)
        log("kernel suite")
        results["kernels"] = bench_kernels.run(backend, settings, sizes, names, seed=args.seed,
                                               log=log)
    if "fusion" in suites:
        log("fusion suite (fused vs unfused, every kernel)")
        elements = args.fusion_elements or (bench_fusion.QUICK_ELEMENTS if args.quick
                                            else bench_fusion.ELEMENTS)
        results["fusion"] = bench_fusion.run(backend, settings, elements, names, seed=args.seed,
                                             log=log)
        results["fusion_not_covered"] = bench_fusion.not_covered()
    if "step" in suites:
        if args.sizes:
            configs = [bench_step.parse_config(s) for s in args.sizes.split(",")]
        else:
            configs = list((bench_step.QUICK_CONFIGS if args.quick
                            else bench_step.CONFIGS).values())
        log("training-step suite")
        results["step"] = bench_step.run(
            backend, configs, settings, torch, sklearn,
            sklearn_samples=256 if args.quick else None, epochs=args.epochs,
            seed=args.seed, log=log,
            torch_compile=("--quick" if args.quick else "--no-torch-compile"
                           if args.no_torch_compile else True))
    if "sklearn" in suites and sklearn is not None and not gpu:
        n = args.sklearn_samples or (256 if args.quick else 60000)
        arch = (16, 32, 32, 10) if args.quick else (784, 256, 256, 10)
        log("scikit-learn epoch comparison")
        results["sklearn"] = bench_step.sklearn_target(
            backend, sklearn, n, arch, 32 if args.quick else 128,
            epochs=args.epochs, seed=args.seed, log=log)
    if ("sklearn" in suites or "lbfgs" in suites) and sklearn is not None:
        # the L-BFGS solver against scikit-learn's, seconds per iteration; part of
        # the sklearn suite, or alone as "lbfgs"
        from . import bench_lbfgs

        log("scikit-learn L-BFGS comparison")
        rows = results.setdefault("sklearn", {})
        rows["lbfgs"] = bench_lbfgs.run(
            args.device, bench_lbfgs.QUICK if args.quick else bench_lbfgs.DATASETS,
            max_iter=5 if args.quick else 50, seed=args.seed, log=log)
    if "scaling" in suites:
        log("scaling suite")
        kw = {}
        if args.quick:
            kw = {"arch": (16, 32, 32, 10), "width_batch": 8}
        results["scaling"] = bench_scaling.run(
            backend, settings,
            batches=args.batches or (bench_scaling.QUICK_BATCHES if args.quick
                                     else bench_scaling.BATCHES),
            widths=args.widths or (bench_scaling.QUICK_WIDTHS if args.quick
                                   else bench_scaling.WIDTHS),
            torch=torch, seed=args.seed, log=log, **kw)
    if "threads" in suites and not gpu:
        configs = ([bench_step.parse_config(s) for s in args.sizes.split(",")] if args.sizes
                   else list((bench_step.QUICK_CONFIGS if args.quick
                              else bench_step.CONFIGS).values()))
        log("thread-pool suite (serial vs parallel elementwise kernels)")
        results["threads"] = bench_threads.run(backend, configs, settings, seed=args.seed,
                                               log=log)
    if "launch" in suites:  # bench_launch: skips (saying why) off the CUDA backend
        results["launch"] = __import__("benchmarks.bench_launch").bench_launch.run(
            backend, settings, quick=args.quick, log=log)
    if "deep" in suites:
        from . import bench_deep

        log("deep-network suite (LayerNorm, residual + LayerNorm step)")
        results["deep"] = bench_deep.run(backend, settings, quick=args.quick, seed=args.seed,
                                         log=log)
    if "distributed" in suites:
        _run_distributed(args, results, log, settings.repetitions)
    if "peers" in suites:
        _run_peers(args, results, backend, gpu, settings, threads, torch, sklearn, log)
    # thread pools as they stand after the runs (Numba's layer is only known after one ran)
    results["meta"]["threads"] = env.threads(threads if torch else None)
    results["meta"]["loadavg_end"] = env.loadavg()
    others = env.other_share(results["meta"]["cpu_start"], env.cpu_clock(), env.cores())
    results["meta"]["other_cpu_share"] = others
    results["meta"]["quiet"], results["meta"]["quiet_reason"] = env.quiet(
        results["meta"]["loadavg_start"], others, env.cores())
    results["targets"] = report.check_targets(results)
    results["targets_not_measured"] = report.not_measured(results)

    print(report.render(results))
    if not args.no_json:
        path = args.json or report.result_path(results, args.out)
        report.write_json(results, path)
        print(f"\nwrote {path}")
        if not args.no_plots:
            for png in report.write_plots(results, path.with_suffix("")):
                print(f"wrote {png}")
    return 0


def _run_peers(args, results, backend, gpu, settings, threads, torch, sklearn, log) -> None:
    """devnet against JAX, PyTorch eager, torch.compile and scikit-learn's estimator."""
    from . import bench_peers

    workloads = bench_peers.parse_workloads(args.peer_workloads, args.quick)
    compile_ = ("--quick" if args.quick else "--no-torch-compile" if args.no_torch_compile
                else True)
    peers = bench_peers.load_peers(args.no_jax, torch, sklearn, compile_, gpu)
    log("peers suite (devnet vs JAX, PyTorch eager, torch.compile, scikit-learn)")
    results["peers"] = bench_peers.run(backend, workloads, settings, peers, threads,
                                       seed=args.seed, log=log)
    results["skipped"].update({f"peers: {k}": why for k, why in peers.skipped.items()})


def _run_distributed(args, results: dict, log, repetitions: int) -> None:
    """The data-parallel suite under mpiexec (CPU ranks); skipped, saying why, without MPI."""
    import importlib.util
    import subprocess

    from devnet import distributed
    from devnet.errors import DevnetError

    from . import bench_distributed

    if importlib.util.find_spec("mpi4py") is None:
        results["skipped"]["distributed"] = "mpi4py not installed (pip install 'devnet-mlp[mpi]')"
        return
    try:
        distributed.mpiexec_command(1)
    except DevnetError as exc:
        results["skipped"]["distributed"] = str(exc)
        return
    nprocs = args.nproc or (1, 2)
    sizes, batch = ((bench_distributed.QUICK, 64) if args.quick
                    else (bench_distributed.M, 512))
    log(f"distributed suite: {'-'.join(map(str, sizes))}, global batch {batch}, ranks "
        f"{', '.join(map(str, nprocs))}")
    try:
        results["distributed"] = bench_distributed.run(
            nprocs, sizes, batch, steps=4 if args.quick else 20, epochs=2 if args.quick else 3,
            repetitions=1 if args.quick else repetitions)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        results["skipped"]["distributed"] = f"the MPI job failed: {exc}"
