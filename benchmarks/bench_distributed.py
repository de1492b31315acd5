"""Data-parallel scaling: samples/s of ``fit(comm=...)`` at 1..N ranks, and the all-reduce cost.

    python -m benchmarks.bench_distributed --nproc 1,2            # M: 784-1024-1024-10, batch 512
    python -m benchmarks.bench_distributed --nproc 1,2 --quick    # tiny, for the tests

For each rank count the job runs under mpiexec with one BLAS/OpenMP/Numba thread per rank and
reports: training samples/s (steady-state epochs of fit, float32, Adam, global batch fixed), the
time of one gradient all-reduce of the model's flat buffer, the MPI all-reduce bandwidth
measured on the spot with a large buffer (bus bandwidth, ring convention), and the ring model's
prediction for the gradient: 2(N-1)/N x 4 bytes x parameters / bandwidth. The speed-up of N
ranks over 1 is the ratio of samples/s from the same run of this script; beside it, the
machine's own ceiling: N processes running only the step's matrix products on their share of
the batch at once, no communication (cores that share memory bandwidth, caches or a turbo
budget scale less than N-fold whatever the training code does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

M = (784, 1024, 1024, 10)
QUICK = (16, 32, 32, 4)


def ring_seconds(n_ranks: int, n_params: int, bandwidth: float, itemsize: int = 4) -> float:
    """Ring all-reduce time: 2(N-1)/N x itemsize x params bytes at ``bandwidth`` bytes/s."""
    return 2 * (n_ranks - 1) / n_ranks * itemsize * n_params / bandwidth if n_ranks > 1 else 0.0


def _worker(sizes, batch: int, steps: int, epochs: int, out: str) -> None:
    """Inside the MPI job: time fit and the all-reduces; rank 0 writes JSON to ``out``."""
    import devnet as dn
    from devnet import distributed

    comm = distributed.init(limit_threads=False)
    rng = np.random.default_rng(0)
    n = batch * steps
    X = rng.normal(size=(n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=n)
    model = dn.MLP(list(sizes), dtype="float32", backend="cpu", seed=0)
    hist = dn.fit(model, X, y, loss="cross_entropy", optimizer="adam", epochs=epochs,
                  batch_size=batch, progress=False, train_metrics=False, guard=False,
                  comm=comm)
    epoch_s = min(hist.history["time"][1:] or hist.history["time"])  # first epoch: warm-up
    reps = 20
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(reps):
        comm.allreduce_sum_(model.grads)
    allreduce_s = (time.perf_counter() - t0) / reps
    big = np.ones(16 * 2**20 // 4, np.float32)  # 16 MiB
    comm.allreduce_sum_(big)
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(5):
        comm.allreduce_sum_(big)
    big_s = (time.perf_counter() - t0) / 5
    size = comm.size
    bus = 2 * (size - 1) / size * big.nbytes / big_s if size > 1 else float("nan")
    if comm.rank == 0:
        with open(out, "w") as f:
            json.dump({"ranks": size, "samples_per_s": n / epoch_s, "step_ms": epoch_s / steps
                       * 1e3, "allreduce_ms": allreduce_s * 1e3, "n_params": model.n_params,
                       "bus_bandwidth_GBps": bus / 1e9,
                       "ring_model_ms": ring_seconds(size, model.n_params, bus) * 1e3
                       if size > 1 else 0.0}, f)


def _gemm_worker(sizes, batch: int, steps: int, out: str) -> None:
    """Inside the MPI job: every rank runs the matrix products of ``steps`` steps on its share
    of the global batch at once, no communication; rank 0 writes the samples/s of the whole
    job (the slowest rank's time). Over 1 rank's, the speed-up the machine itself allows."""
    import devnet as dn
    from devnet import distributed

    from .bench_step import gemm_floor

    comm = distributed.init(limit_threads=False)
    floor = gemm_floor(dn.get_backend("cpu"), sizes, batch // comm.size)
    for _ in range(2):
        floor()
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        floor()
    times = comm.allgather_json(time.perf_counter() - t0)
    if comm.rank == 0:
        with open(out, "w") as f:
            json.dump({"ranks": comm.size, "samples_per_s": batch * steps / max(times)}, f)


def _job(nproc: int, sizes, batch: int, steps: int, epochs: int, timeout: float,
         worker: str = "_worker") -> dict:
    """One ``mpiexec -n nproc`` job of ``worker`` (``_worker``: fit; ``_gemm_worker``: the
    products alone, ``epochs`` unused); its rank 0's record."""
    from devnet import distributed

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        args = f"{batch}, {steps}, {epochs}, {out!r}" if worker == "_worker" else \
            f"{batch}, {steps}, {out!r}"
        code = (f"from benchmarks.bench_distributed import {worker}; "
                f"{worker}({list(sizes)!r}, {args})")
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        cmd = distributed.mpiexec_command(nproc) + [sys.executable, "-c", code]
        subprocess.run(cmd, check=True, timeout=timeout, env=env, cwd=root)
        with open(out) as f:
            return json.load(f)


def run(nprocs=(1, 2), sizes=M, batch: int = 512, steps: int = 20, epochs: int = 3,
        repetitions: int = 1, timeout: float = 600) -> dict:
    """Each rank count in its own mpiexec job, the counts interleaved ``repetitions`` times
    round (1, 2, 1, 2, ...: a load change hits both alike); the speed-up of N ranks is taken
    per round against the first count of that round.

    Returns {"runs": [the median round's record per count, with ``samples_per_s_reps``],
    "speedup": {N: median}, "speedup_reps": {N: [...]}, "efficiency": {N: median},
    "gemm_speedup": {N: the median speed-up of the ranks' matrix products alone, run at once
    with no communication (``_gemm_worker``): the ceiling this machine puts on the speed-up},
    "config", and ``speedup_<N>`` / ``_min`` / ``_max`` / ``_reps`` fields (graded rows)}.
    """
    rounds = [[_job(n, sizes, batch, steps, epochs, timeout) for n in nprocs]
              for _ in range(max(1, repetitions))]
    # the machine's own ceiling: the same rank counts running only their matrix products
    ceiling = [[_job(n, sizes, batch, steps, 0, timeout, "_gemm_worker") for n in nprocs]
               for _ in range(max(1, repetitions))]
    runs, speedup, speedup_reps = [], {}, {}
    for k, n in enumerate(nprocs):
        sps = [r[k]["samples_per_s"] for r in rounds]
        median_round = sorted(range(len(rounds)), key=lambda i: sps[i])[len(rounds) // 2]
        runs.append({**rounds[median_round][k], "samples_per_s_reps": sps})
        ratios = [r[k]["samples_per_s"] / r[0]["samples_per_s"] for r in rounds]
        speedup[n], speedup_reps[n] = float(np.median(ratios)), ratios
    gemm_speedup = {n: float(np.median([r[k]["samples_per_s"] / r[0]["samples_per_s"]
                                        for r in ceiling]))
                    for k, n in enumerate(nprocs)}
    base = nprocs[0]
    result = {"sizes": list(sizes), "global_batch": batch, "repetitions": len(rounds),
              "gemm_speedup": gemm_speedup,
              "config": f"{'-'.join(map(str, sizes))} b{batch}", "runs": runs,
              "speedup": speedup, "speedup_reps": speedup_reps,
              "efficiency": {n: v * base / n for n, v in speedup.items()}}
    if base == 1:
        for n in nprocs[1:]:
            reps = speedup_reps[n]
            result.update({f"speedup_{n}": speedup[n], f"speedup_{n}_min": min(reps),
                           f"speedup_{n}_max": max(reps), f"speedup_{n}_reps": reps})
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", default="1,2", help="rank counts, e.g. 1,2,4")
    parser.add_argument("--quick", action="store_true", help="a tiny model (checks only)")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--repetitions", type=int, default=3,
                        help="rounds of interleaved jobs (default 3)")
    args = parser.parse_args(argv)
    nprocs = tuple(int(p) for p in args.nproc.split(","))
    sizes, batch = (QUICK, 64) if args.quick else (M, 512)
    result = run(nprocs, sizes, batch, steps=4 if args.quick else args.steps,
                 repetitions=1 if args.quick else args.repetitions)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
