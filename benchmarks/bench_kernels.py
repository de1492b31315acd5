"""Kernel suite: each fused kernel's time and GB/s against a plain copy's GB/s, same run.

For every size (bytes of ONE operand, from cache-resident to >= 64 MB) the suite measures:

- ``copy``: ``dst[...] = src`` on the device (NumPy / CuPy), the memory ceiling at that size;
- each fused kernel from ``backend.kernels`` and, next to it, the unfused NumPy / CuPy sequence
  a competent user writes (``benchmarks.baseline``: in place, ``out=``); the test oracle
  (``devnet.kernels.reference``) is timed too, for reference only.

GB/s counts the bytes the op must move at least (each operand read once, each output written
once, in-place operands both), the same count for fused and unfused, so the unfused figure shows
what its extra passes and temporaries cost. Copy, fused and unfused are measured interleaved,
``settings.repetitions`` times round; graded ratios keep every repetition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from devnet.kernels import reference, table

from . import baseline
from .timing import Rotation, Settings, clock_for, interleaved, is_gpu, n_rotations, ratio_stats

COLS = 1024  # columns of the (rows, COLS) activation matrices
CLASSES = 10  # columns of the logits for the loss kernels
SIZES_MB = (0.25, 1, 4, 16, 64, 128)
QUICK_SIZES_MB = (0.0625, 0.25)


@dataclass
class KernelSpec:
    """One kernel: how to build its operands, call it, and count its bytes."""

    name: str
    make: Callable  # (xp, rng, n_elems, dtype) -> dict of operands
    fused: Callable  # (kernels, ops) -> None
    nbytes: Callable  # (ops) -> minimal bytes moved
    #: (module, ops) -> None for the plain and oracle sequences when they differ from
    #: ``fused``'s call: an optimizer step's scalars by value, the kernel's in ``ops["hyper"]``
    unfused: Callable | None = None


def _mat(xp, rng, n, dtype, cols=COLS):
    rows = max(1, n // cols)
    return xp.asarray(rng.standard_normal((rows, cols), dtype=np.float32).astype(dtype))


def _make_bias_act(xp, rng, n, dtype, keep_z=False):
    A = _mat(xp, rng, n, dtype)
    b = xp.asarray(rng.standard_normal(A.shape[1], dtype=np.float32).astype(dtype) * 1e-3)
    return {"A": A, "b": b, "Z": xp.empty_like(A) if keep_z else None}


def _make_act_bwd(xp, rng, n, dtype, keep_z=False):
    G = _mat(xp, rng, n, dtype)
    A = _mat(xp, rng, n, dtype)
    return {"G": G, "A": xp.abs(A) * (A > 0), "Z": A if keep_z else None,
            "dZ": xp.empty_like(G), "db": xp.empty(G.shape[1], dtype=dtype)}


def _make_xent(xp, rng, n, dtype):
    Z = _mat(xp, rng, n, dtype, cols=CLASSES)
    t = xp.asarray(rng.integers(0, CLASSES, Z.shape[0]))
    return {"Z": Z, "t": t, "g": xp.empty_like(Z)}


def _make_mse(xp, rng, n, dtype):
    P = _mat(xp, rng, n, dtype, cols=CLASSES)
    return {"Z": P, "t": _mat(xp, rng, n, dtype, cols=CLASSES), "g": xp.empty_like(P)}


def _make_flat(xp, rng, n, dtype, states, step, values):
    def vec():
        return xp.asarray(rng.standard_normal(n, dtype=np.float32).astype(dtype))
    ops = {"p": vec(), "g": vec(), "hyper": xp.asarray(table.hyper_values(step, values))}
    for i in range(states):
        ops[f"s{i}"] = xp.abs(vec())
    return ops


def _nb(*arrays):
    return sum(int(a.nbytes) for a in arrays if a is not None)


_SGD = dict(lr=1e-3, wd=0.0)
_ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0, bc1=0.1, bc2=0.001)


def _adam_by_value(k, o):
    k.adam_step(o["p"], o["g"], o["s0"], o["s1"], None, *_ADAM.values(), False)


SPECS = (
    KernelSpec("bias_act_fwd[relu]", lambda xp, r, n, d: _make_bias_act(xp, r, n, d),
               lambda k, o: k.bias_act_fwd("relu", o["A"], o["b"], None),
               lambda o: 2 * _nb(o["A"]) + _nb(o["b"])),
    KernelSpec("bias_act_fwd[gelu]", lambda xp, r, n, d: _make_bias_act(xp, r, n, d, True),
               lambda k, o: k.bias_act_fwd("gelu", o["A"], o["b"], o["Z"]),
               lambda o: 2 * _nb(o["A"]) + _nb(o["b"], o["Z"])),
    KernelSpec("act_bwd[relu]", lambda xp, r, n, d: _make_act_bwd(xp, r, n, d),
               lambda k, o: k.act_bwd("relu", o["G"], o["A"], None, o["dZ"], o["db"]),
               lambda o: _nb(o["G"], o["A"], o["dZ"], o["db"])),
    KernelSpec("act_bwd[gelu]", lambda xp, r, n, d: _make_act_bwd(xp, r, n, d, True),
               lambda k, o: k.act_bwd("gelu", o["G"], o["A"], o["Z"], o["dZ"], o["db"]),
               lambda o: _nb(o["G"], o["A"], o["Z"], o["dZ"], o["db"])),
    KernelSpec("softmax_xent", _make_xent,
               lambda k, o: k.softmax_xent(o["Z"], o["t"], o["g"], None, 1.0 / len(o["Z"])),
               lambda o: _nb(o["Z"], o["t"], o["g"])),
    KernelSpec("mse", _make_mse,
               lambda k, o: k.mse(o["Z"], o["t"], o["g"], None, 1.0 / o["Z"].size),
               lambda o: _nb(o["Z"], o["t"], o["g"])),
    # the steps as training runs them: in place, their scalars in hyper
    KernelSpec("sgd_step", lambda xp, r, n, d: _make_flat(xp, r, n, d, 0, "sgd_step", _SGD),
               lambda k, o: k.sgd_step_hyper(o["p"], o["g"], o["hyper"]),
               lambda o: 2 * _nb(o["p"]) + _nb(o["g"]),
               lambda k, o: k.sgd_step(o["p"], o["g"], *_SGD.values())),
    KernelSpec("adam_step", lambda xp, r, n, d: _make_flat(xp, r, n, d, 2, "adam_step", _ADAM),
               lambda k, o: k.adam_step_hyper(o["p"], o["g"], o["s0"], o["s1"], None,
                                              o["hyper"], False),
               lambda o: 2 * _nb(o["p"], o["s0"], o["s1"]) + _nb(o["g"]), _adam_by_value),
)
SPEC_NAMES = tuple(s.name for s in SPECS)


def run(backend, settings: Settings, sizes_mb=SIZES_MB, names=None, dtype="float32",
        seed: int = 0, log=print) -> list[dict]:
    """Measure copy, fused, plain and reference at every size; one row per (kernel, size)."""
    xp = backend.xp
    clock = clock_for(backend)
    gpu = is_gpu(backend)
    rng = np.random.default_rng(seed)
    specs = [s for s in SPECS if names is None or s.name in names]
    rows = []
    for mb in sizes_mb:
        n = max(COLS, int(mb * (1 << 20)) // np.dtype(dtype).itemsize)
        src = xp.asarray(rng.standard_normal(n, dtype=np.float32).astype(dtype))
        dst = xp.empty_like(src)
        for spec in specs:
            sets = [spec.make(xp, rng, n, dtype)]
            nbytes = spec.nbytes(sets[0])
            sets += [spec.make(xp, rng, n, dtype)
                     for _ in range(n_rotations(nbytes, gpu, cap=8) - 1)]
            rot = Rotation(sets)
            unfused = spec.unfused or spec.fused
            t = interleaved({
                "copy": (lambda d=dst, s=src: d.__setitem__(Ellipsis, s), clock),
                "fused": (lambda f=spec.fused, r=rot: f(backend.kernels, r.next()), clock),
                "plain": (lambda f=unfused, r=rot: f(baseline, r.next()), clock),
                "reference": (lambda f=unfused, r=rot: f(reference, r.next()), clock),
            }, settings, settings.repetitions)
            copy_gbs = 2 * src.nbytes / t["copy"].median / 1e9
            # fused GB/s over copy GB/s = (bytes / fused) / (copy bytes / copy time)
            over_copy = ratio_stats(t["copy"], t["fused"])
            k = nbytes / (2 * src.nbytes)
            row = {
                "kernel": spec.name, "size_mb": mb, "elements": n, "bytes": nbytes,
                "fused_s": t["fused"].median, "unfused_s": t["plain"].median,
                "reference_s": t["reference"].median,
                "fused_gbs": nbytes / t["fused"].median / 1e9,
                "unfused_gbs": nbytes / t["plain"].median / 1e9,
                "copy_gbs": copy_gbs,
                "repetitions": settings.repetitions, "rotations": len(sets),
            }
            put_ratio(row, "fused_over_copy", {key: (v * k if key != "reps" else
                                                      [r * k for r in v])
                                               for key, v in over_copy.items()})
            put_ratio(row, "speedup", ratio_stats(t["plain"], t["fused"]))
            put_ratio(row, "speedup_vs_reference", ratio_stats(t["reference"], t["fused"]))
            rows.append(row)
            log(f"  kernels {spec.name:<20} {mb:>8g} MB  fused {row['fused_s'] * 1e3:9.3f} ms "
                f"{row['fused_gbs']:7.2f} GB/s  plain {row['unfused_gbs']:7.2f} GB/s  "
                f"copy {copy_gbs:7.2f} GB/s  fused/copy {_spread(row, 'fused_over_copy')}")
            sets = rot = None
        src = dst = None
    return rows


def put_ratio(row: dict, field: str, stats: dict) -> None:
    """Store a ratio as ``field`` (median), ``field_min``, ``field_max``, ``field_reps``."""
    row[field] = stats["median"]
    row[f"{field}_min"] = stats["min"]
    row[f"{field}_max"] = stats["max"]
    row[f"{field}_reps"] = list(stats["reps"])


def _spread(row: dict, field: str) -> str:
    return f"{row[field]:.3g} [{row[field + '_min']:.3g}-{row[field + '_max']:.3g}]"
