"""Why the step suite settles between competitors: PyTorch timed right after NumPy's products.

NumPy's OpenBLAS workers spin for about 2**28 cycles after a product; PyTorch's own threads,
started meanwhile, share the cores with them. This times PyTorch's M1 step (784-256-256-10,
b128, fused Adam, ``--threads`` threads) three ways, ``--rounds`` times:

- clean: after 0.5 s without NumPy products;
- after products: right after 200 NumPy products of the step's first layer;
- settled: after the same products, then ``timing.Settings.settle_s`` of PyTorch's own steps
  (what ``timing.interleaved(..., settle_pools=True)`` does).

    python -m benchmarks.spin_check [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .bench_step import TORCH_ADAM, torch_step
from .timing import HostClock, Settings, settle


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.spin_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    step = torch_step(torch, (784, 256, 256, 10), 128, "cpu", 0, TORCH_ADAM["adam(fused=True)"])
    rng = np.random.default_rng(0)
    A = rng.standard_normal((128, 784), dtype=np.float32)
    B = rng.standard_normal((784, 256), dtype=np.float32)
    C = np.empty((128, 256), np.float32)

    def products():
        for _ in range(200):
            np.matmul(A, B, out=C)

    def timed(n=50):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - t0) / n * 1e3

    for _ in range(100):
        step()
    print("PyTorch M1 step, ms: clean / right after NumPy products / settled")
    for _ in range(args.rounds):
        time.sleep(0.5)
        clean = timed()
        products()
        dirty = timed()
        products()
        settle(step, HostClock(), Settings().settle_s)
        settled = timed()
        print(f"{clean:.3f} / {dirty:.3f} / {settled:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
