"""Deep-network suite: fused LayerNorm and the residual + LayerNorm training step.

- LayerNorm forward and backward at ``ln_mb`` MB per operand (float32 rows of ``ln_width``):
  GB/s (bytes the op must move: forward reads X and writes Y, backward reads G and X and writes
  dX) against a copy of the same operand (``xp.copyto``: read + write) measured interleaved;
  the claim is >= 0.7 of copy bandwidth at >= 64 MB on the CPU.
- The same two ops at ``unfused_elements`` (1M) against the unfused NumPy / CuPy sequence a
  user would write (mean, variance, normalise, scale; and the matching backward): >= 2x.
- One training step (forward, softmax cross-entropy, backward, Adam) of a residual + LayerNorm
  MLP against the plain MLP of the same widths (``step_sizes``, M: 784-1024-1024-10, batch
  256): <= 1.25x.

Every comparison is measured interleaved (``timing.interleaved``) and reported as the median of
the per-repetition ratios with its spread. Run: ``python -m benchmarks.bench_deep [--quick]``.
"""

from __future__ import annotations

import argparse

import numpy as np

import devnet as dn

from .timing import Settings, clock_for, interleaved, ratio_stats

LN_MB = 64
LN_WIDTH = 1024
UNFUSED_ELEMENTS = 1 << 20
STEP_SIZES = (784, 1024, 1024, 10)
STEP_BATCH = 256
QUICK = dict(ln_mb=1, unfused_elements=1 << 14, step_sizes=(32, 64, 64, 10), step_batch=32)


def _ln_arrays(backend, rows, width, rng):
    xp = backend.xp
    f32 = np.float32

    def put(a):
        return backend.asarray(a.astype(f32))

    X = put(rng.standard_normal((rows, width)) * 2 + 1)
    G = put(rng.standard_normal((rows, width)))
    gamma, beta = put(rng.standard_normal(width)), put(rng.standard_normal(width))
    return dict(X=X, G=G, gamma=gamma, beta=beta, Y=xp.empty_like(X), dX=xp.empty_like(X),
                mean=xp.empty(rows, f32), rstd=xp.empty(rows, f32),
                dgamma=xp.empty(width, f32), dbeta=xp.empty(width, f32))


def _fused(kernels, a):
    def fwd():
        kernels.layernorm_fwd(a["X"], a["gamma"], a["beta"], a["Y"], a["mean"], a["rstd"])

    def bwd():
        kernels.layernorm_bwd(a["G"], a["X"], a["mean"], a["rstd"], a["gamma"], a["dX"],
                              a["dgamma"], a["dbeta"])
    return fwd, bwd


def _unfused(xp, a, eps=1e-5):
    """What one writes without a fused kernel: each line a pass (and a temporary)."""
    X, G, gamma, beta = a["X"], a["G"], a["gamma"], a["beta"]

    def fwd():
        mean = X.mean(axis=1, keepdims=True)
        var = X.var(axis=1, keepdims=True)
        rstd = 1 / xp.sqrt(var + np.float32(eps))
        a["xhat"] = (X - mean) * rstd
        a["rstd_u"] = rstd
        return a["xhat"] * gamma + beta

    def bwd():
        xhat, rstd = a["xhat"], a["rstd_u"]
        g = G * gamma
        dgamma = (G * xhat).sum(axis=0)
        dbeta = G.sum(axis=0)
        dx = rstd * (g - g.mean(axis=1, keepdims=True)
                     - xhat * (g * xhat).mean(axis=1, keepdims=True))
        return dx, dgamma, dbeta
    return fwd, bwd


def layernorm_vs_copy(backend, settings, mb=LN_MB, width=LN_WIDTH, seed=0, log=print) -> dict:
    """Fused LayerNorm forward / backward GB/s against a copy of the same operand."""
    rng = np.random.default_rng(seed)
    rows = max(1, (mb << 20) // (4 * width))
    a = _ln_arrays(backend, rows, width, rng)
    fwd, bwd = _fused(backend.kernels, a)
    dst = backend.xp.empty_like(a["X"])
    clock = clock_for(backend)
    reps = interleaved({"fwd": (fwd, clock), "bwd": (bwd, clock),
                        "copy": (lambda: backend.xp.copyto(dst, a["X"]), clock)},
                       settings, settings.repetitions)
    nbytes = a["X"].nbytes
    gbs = {"fwd": 2 * nbytes / reps["fwd"].median / 1e9,
           "bwd": 3 * nbytes / reps["bwd"].median / 1e9,
           "copy": 2 * nbytes / reps["copy"].median / 1e9}
    row = {"mb": nbytes / 2**20, "shape": [rows, width], "gb_s": gbs,
           "fwd_of_copy": gbs["fwd"] / gbs["copy"], "bwd_of_copy": gbs["bwd"] / gbs["copy"]}
    log(f"layernorm {rows}x{width} float32 ({row['mb']:.0f} MB): fwd {gbs['fwd']:.1f} GB/s, "
        f"bwd {gbs['bwd']:.1f} GB/s, copy {gbs['copy']:.1f} GB/s -> fwd "
        f"{row['fwd_of_copy']:.2f}x, bwd {row['bwd_of_copy']:.2f}x of copy")
    return row


def layernorm_vs_unfused(backend, settings, elements=UNFUSED_ELEMENTS, width=LN_WIDTH, seed=0,
                         log=print) -> dict:
    """Fused LayerNorm forward / backward against the unfused xp sequence."""
    rng = np.random.default_rng(seed)
    width = min(width, elements)
    a = _ln_arrays(backend, max(1, elements // width), width, rng)
    fwd, bwd = _fused(backend.kernels, a)
    ufwd, ubwd = _unfused(backend.xp, a)
    ufwd()  # the unfused backward reads the unfused forward's xhat
    clock = clock_for(backend)
    reps = interleaved({"fwd": (fwd, clock), "unfused_fwd": (ufwd, clock),
                        "bwd": (bwd, clock), "unfused_bwd": (ubwd, clock)},
                       settings, settings.repetitions)
    row = {"elements": int(a["X"].size),
           "fwd_speedup": ratio_stats(reps["unfused_fwd"], reps["fwd"]),
           "bwd_speedup": ratio_stats(reps["unfused_bwd"], reps["bwd"]),
           "ms": {k: v.median * 1e3 for k, v in reps.items()}}
    log(f"layernorm {row['elements']:,} elements: fused fwd {row['ms']['fwd']:.3f} ms vs "
        f"unfused {row['ms']['unfused_fwd']:.3f} ms ({row['fwd_speedup']['median']:.2f}x); "
        f"bwd {row['ms']['bwd']:.3f} ms vs {row['ms']['unfused_bwd']:.3f} ms "
        f"({row['bwd_speedup']['median']:.2f}x)")
    return row


def step_cost(backend, settings, sizes=STEP_SIZES, batch=STEP_BATCH, seed=0, log=print) -> dict:
    """One training step of residual + LayerNorm against the plain MLP of the same widths."""
    rng = np.random.default_rng(seed)
    X = backend.asarray(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = backend.asarray(rng.integers(0, sizes[-1], batch))
    loss = dn.losses.get("cross_entropy")
    clock = clock_for(backend)
    fns = {}
    for name, deep in (("plain", {}), ("residual_ln", {"block": "residual",
                                                        "norm": "layernorm"})):
        model = dn.MLP(list(sizes), backend=backend, seed=seed, **deep)
        opt = dn.optim.Adam(model.parameters(), lr=1e-3)
        train_step = dn.train.Step(model, loss, opt)  # the step fit runs

        def step(train_step=train_step):
            train_step(X, y)
        fns[name] = (step, clock)
    with backend.thread_limits():
        reps = interleaved(fns, settings, settings.repetitions)
    row = {"sizes": list(sizes), "batch": batch,
           "ms": {k: v.median * 1e3 for k, v in reps.items()},
           "residual_ln_over_plain": ratio_stats(reps["residual_ln"], reps["plain"])}
    log(f"step {'-'.join(map(str, sizes))} b{batch}: plain {row['ms']['plain']:.3f} ms, "
        f"residual+LN {row['ms']['residual_ln']:.3f} ms -> "
        f"{row['residual_ln_over_plain']['median']:.3f}x")
    return row


def run(backend, settings: Settings, quick: bool = False, seed: int = 0, log=print) -> dict:
    """The three measurements; sizes from the module constants, or ``QUICK`` ones."""
    q = QUICK if quick else {}
    return {
        "layernorm_vs_copy": layernorm_vs_copy(backend, settings, q.get("ln_mb", LN_MB),
                                               seed=seed, log=log),
        "layernorm_vs_unfused": layernorm_vs_unfused(
            backend, settings, q.get("unfused_elements", UNFUSED_ELEMENTS), seed=seed, log=log),
        "step": step_cost(backend, settings, q.get("step_sizes", STEP_SIZES),
                          q.get("step_batch", STEP_BATCH), seed=seed, log=log),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, few samples (seconds)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    backend = dn.get_backend(args.device)
    run(backend, Settings.quick() if args.quick else Settings(), quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
