"""Thread pools on the CPU: the training step with devnet's elementwise kernels run serially
(OpenBLAS keeps both cores for the matrix products) against the same kernels as Numba parallel
regions, at every step config. This is the measurement behind ``kernels.cpu.PARALLEL_MIN``."""

from __future__ import annotations

from .bench_step import devnet_step
from .timing import Settings, clock_for, measure


def run(backend, configs, settings: Settings, seed: int = 0, log=print) -> list[dict]:
    """One row per config: serial-kernel step, parallel-kernel step and their ratio."""
    import importlib

    cpu = importlib.import_module(backend.kernels.source)
    if not hasattr(cpu, "set_parallel_min"):
        log(f"  threads: skipped ({backend.kernels.source} has no serial/parallel switch)")
        return []
    clock = clock_for(backend)
    default = cpu.PARALLEL_MIN
    rows = []
    for cfg in configs:
        if cfg.gpu_only:
            continue
        times = {}
        try:
            for mode, threshold in (("serial", default), ("parallel", 0)):
                cpu.set_parallel_min(threshold)
                times[mode] = measure(devnet_step(backend, cfg.sizes, cfg.batch, seed), clock,
                                      settings).median
        finally:
            cpu.set_parallel_min(default)
        row = {"config": cfg.name, "sizes": list(cfg.sizes), "batch": cfg.batch,
               "serial_s": times["serial"], "parallel_s": times["parallel"],
               "parallel_over_serial": times["parallel"] / times["serial"]}
        rows.append(row)
        log(f"  threads {cfg.name}: serial {row['serial_s'] * 1e3:.3f} ms, parallel "
            f"{row['parallel_s'] * 1e3:.3f} ms ({row['parallel_over_serial']:.2f}x)")
    return rows
