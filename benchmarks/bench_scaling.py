"""Scaling suite: step time vs batch size and vs width, devnet next to its GEMM floor and PyTorch.

Where the devnet curve is flat the step is overhead (Python, kernel launches); where it follows
the floor the step is arithmetic. GFLOP/s counts the step's matrix products only.
"""

from __future__ import annotations

from .bench_step import (
    TORCH_ADAM,
    devnet_step,
    gemm_floor,
    step_flops,
    torch_clock,
    torch_device,
    torch_step,
)
from .timing import Settings, clock_for, measure, settle

BATCHES = (1, 4, 16, 64, 256, 1024, 4096, 16384)
WIDTHS = (64, 128, 256, 512, 1024, 2048, 4096)
QUICK_BATCHES = (1, 8)
QUICK_WIDTHS = (8, 16)
BATCH_ARCH = (784, 256, 256, 10)  # the batch sweep's model
WIDTH_BATCH = 256  # the width sweep's batch; model 784-w-w-10


def _point(backend, sweep, sizes, batch, settings, torch, seed) -> dict:
    clock = clock_for(backend)
    gflop = step_flops(sizes, batch) / 1e9
    step = devnet_step(backend, sizes, batch, seed)
    # the previous point ended with PyTorch's step: its pool idle first (timing.interleaved)
    settle(step, clock, settings.settle_s if torch is not None else 0)
    t = measure(step, clock, settings)
    f = measure(gemm_floor(backend, sizes, batch, seed), clock, settings)
    row = {"sweep": sweep, "sizes": list(sizes), "batch": batch, "width": sizes[1],
           "gflop": gflop, "devnet_s": t.median, "floor_s": f.median,
           "samples_per_s": batch / t.median, "devnet_gflops": gflop / t.median,
           "floor_gflops": gflop / f.median, "devnet_over_floor": t.median / f.median}
    if torch is not None:
        dev = torch_device(backend)
        # not graded: one PyTorch configuration (fused Adam), not the per-size race
        peer, tclock = torch_step(torch, sizes, batch, dev, seed,
                                  TORCH_ADAM["adam(fused=True)"]), torch_clock(torch, dev)
        settle(peer, tclock, settings.settle_s)  # devnet's OpenBLAS threads idle first
        tt = measure(peer, tclock, settings)
        row.update(torch_s=tt.median, devnet_over_torch=t.median / tt.median)
    return row


def run(backend, settings: Settings, batches=BATCHES, widths=WIDTHS, arch=BATCH_ARCH,
        width_batch=WIDTH_BATCH, torch=None, seed: int = 0, log=print) -> list[dict]:
    """One row per point of the batch sweep, then of the width sweep."""
    rows = []
    for b in batches:
        rows.append(_point(backend, "batch", arch, b, settings, torch, seed))
        log("  scaling " + _line(rows[-1]))
    n_in, n_out = arch[0], arch[-1]
    for w in widths:
        rows.append(_point(backend, "width", (n_in, w, w, n_out), width_batch, settings, torch,
                           seed))
        log("  scaling " + _line(rows[-1]))
    return rows


def _line(r: dict) -> str:
    s = (f"{r['sweep']:<5} {'-'.join(map(str, r['sizes']))} b{r['batch']}: devnet "
         f"{r['devnet_s'] * 1e3:.3f} ms ({r['devnet_gflops']:.1f} GFLOP/s), floor "
         f"{r['floor_s'] * 1e3:.3f} ms")
    if "torch_s" in r:
        s += f", torch {r['torch_s'] * 1e3:.3f} ms"
    return s
