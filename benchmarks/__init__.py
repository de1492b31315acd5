"""devnet's benchmarks: kernels, fusion, training step, scaling; beside PyTorch and scikit-learn.

Run ``python -m benchmarks`` (or ``devnet bench``) from the repository root; ``--help`` lists the
options, ``--quick`` runs tiny sizes in seconds. Everything is measured in ONE process, after
warm-up, as medians of many samples, with the device synchronised before every clock read (CUDA
events on a GPU). Results: a table on stdout, ``benchmarks/results/<host>-<device>-<date>.json``
and PNG plots beside it. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SUITES = ("kernels", "fusion", "step", "sklearn", "scaling", "threads")

__all__ = ["main", "SUITES"]


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x)


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="devnet bench", description="devnet benchmarks: kernels, training step vs PyTorch "
        "and scikit-learn, scaling; table on stdout, JSON and PNG under benchmarks/results/.")
    p.add_argument("suites", nargs="*", default=[],
                   metavar="SUITE", help=f"suites to run (default: all): {', '.join(SUITES)}")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and few repetitions (seconds; what the tests run)")
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
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs per scikit-learn comparison (the first is warm-up)")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch intra-op threads (default: NumPy's BLAS thread count)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of samples per measurement (default 0.6; quick 0.02)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for the JSON and PNG files (default benchmarks/results)")
    p.add_argument("--json", type=Path, default=None, help="exact JSON output path")
    p.add_argument("--no-json", action="store_true", help="write no JSON")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; returns the process exit code (0)."""
    import devnet as dn

    from . import (
        bench_fusion,
        bench_kernels,
        bench_scaling,
        bench_step,
        bench_threads,
        env,
        report,
    )
    from .timing import Settings, is_gpu

    args = build_parser().parse_args(argv)
    suites = tuple(args.suites) or SUITES
    backend = dn.get_backend(args.device, kernels=args.kernels)
    gpu = is_gpu(backend)
    settings = Settings.quick() if args.quick else Settings()
    if args.budget is not None:
        settings.budget_s = args.budget
    threads = args.threads or env.numpy_blas_threads(default=1)
    torch, sklearn = bench_step.optional_peers(args.no_torch, args.no_sklearn, threads)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    results: dict = {"schema": report.SCHEMA,
                     "meta": env.meta(backend, args.quick, argv if argv is not None
                                      else sys.argv[1:], threads if torch else None),
                     "skipped": {}}
    if torch is None:
        results["skipped"]["torch"] = "PyTorch not installed (pip install 'devnet[bench]')" \
            if not args.no_torch else "--no-torch"
    if sklearn is None or gpu:
        results["skipped"]["sklearn"] = ("scikit-learn runs on the CPU only" if gpu else
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
    if "step" in suites:
        if args.sizes:
            configs = [bench_step.parse_config(s) for s in args.sizes.split(",")]
        else:
            configs = list((bench_step.QUICK_CONFIGS if args.quick
                            else bench_step.CONFIGS).values())
        log("training-step suite")
        results["step"] = bench_step.run(
            backend, configs, settings, torch, sklearn,
            sklearn_samples=256 if args.quick else None, epochs=2 if args.quick else args.epochs,
            seed=args.seed, log=log)
    if "sklearn" in suites and sklearn is not None and not gpu:
        n = args.sklearn_samples or (256 if args.quick else 60000)
        arch = (16, 32, 32, 10) if args.quick else (784, 256, 256, 10)
        log("scikit-learn epoch comparison")
        results["sklearn"] = bench_step.sklearn_target(
            backend, sklearn, n, arch, 32 if args.quick else 128,
            epochs=2 if args.quick else args.epochs, seed=args.seed, log=log)
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
    # thread pools as they stand after the runs (Numba's layer is only known after one ran)
    results["meta"]["threads"] = env.threads(threads if torch else None)
    results["meta"]["loadavg_end"] = env.loadavg()
    results["targets"] = report.check_targets(results)

    print(report.render(results))
    if not args.no_json:
        path = args.json or report.result_path(results, args.out)
        report.write_json(results, path)
        print(f"\nwrote {path}")
        if not args.no_plots:
            for png in report.write_plots(results, path.with_suffix("")):
                print(f"wrote {png}")
    return 0
