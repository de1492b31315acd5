"""Per-layer, per-op breakdown of one training step, against ceilings measured on the spot.

``profile(model, X, y)`` runs the training step itself (``devnet.train.Step``) with the backend
swapped for a proxy that times every ``matmul`` and kernel call it forwards; each op is
attributed to its layer by the arrays it is handed (``W``, ``b``, ``dW``, ``db`` are views
owned by one layer).

An op's time is its median over ``repeats`` instrumented steps: ``host_s`` the host's time in
the call (on a GPU the launch cost: ops are not synchronised, the host runs ahead as in
training), ``time_s`` the op's run (on a GPU, CUDA events around it on the backend's stream).
The step time is the median of uninstrumented steps; what the ops leave of it is
``python/glue``. Ceilings: a plain copy's bandwidth and a large square GEMM's GFLOP/s, measured
in the same call. ``devnet profile --sizes 784-1024-1024-10`` runs ``main``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import partial
from types import SimpleNamespace

import numpy as np

from devnet import losses as losses_mod
from devnet import optim as optim_mod
from devnet.backend import get_backend
from devnet.errors import ConfigError, lookup
from devnet.kernels import table
from devnet.train.engine import choose
from devnet.train.feed import make_feed
from devnet.train.setup import resolve_loss
from devnet.train.step import Step
from devnet.validation import check_model, check_X, check_y, count, positive_int, positive_number

__all__ = ["profile", "ProfileReport", "OpRecord", "measure_ceilings", "main"]

# kernels owned by one layer: the argument that names the layer, and the row's label
# ({} is the activation, the kernel's first argument); other kernels: loss or optimizer
_LAYER_OPS = {"bias_act_fwd": ("b", "bias+{}"),
              "bias_act_drop_fwd": ("b", "bias+{}+dropout"),
              "act_bwd": ("db", "{}' + bias grad"),
              "act_drop_bwd": ("db", "dropout+{}' + bias grad"),
              "layernorm_fwd": ("gamma", "layernorm_fwd"),
              "layernorm_bwd": ("dgamma", "layernorm_bwd")}
_OPTIMIZER_KERNELS = frozenset((*table.STEP_KERNELS, *table.STEP_HYPER_KERNELS,
                                table.ADVANCE_KERNEL, table.CLIP_KERNEL, table.L2_KERNEL))


@dataclass
class OpRecord:
    """One op of the step: where it sits, what it costs and how close to the ceilings."""

    layer: str
    op: str
    time_s: float
    share: float = 0.0
    bytes: int = 0
    flops: float = 0.0
    gbs: float = 0.0
    gflops: float = 0.0
    pct_bandwidth: float = 0.0
    pct_gemm: float = 0.0
    calls: int = 1
    host_s: float = 0.0  #: host time in the call(s): the launch cost on a GPU


class _Recorder:
    """Collects (layer, op, clock, bytes, flops) for every forwarded call of one step."""

    def __init__(self, backend, model):
        self.backend = backend
        self.events: list[tuple] = []
        self.layer_of = {view: {id(getattr(layer, view)): i
                                for i, layer in enumerate(model.layers)
                                if getattr(layer, view, None) is not None}
                         for view in ("W", "dW", "b", "db", "gamma", "dgamma")}
        self.current = 0  # the layer whose backward ran last (dX matmul follows its dW)

    def timed(self, layer, op, nbytes, flops, fn, *args, **kwargs):
        # no sync per op: the host runs ahead as in training; the clocks are read after the step
        clock = self.backend.clock(sync=False)
        out = fn(*args, **kwargs)
        self.events.append((layer, op, clock.stop(), nbytes, flops))
        return out

    def matmul(self, real, a, b, out):
        flops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
        nbytes = sum(int(m.nbytes) for m in (a, b, out))
        if id(b) in self.layer_of["W"]:
            label = (f"layers.{self.layer_of['W'][id(b)]}", "forward matmul  X@W")
        elif id(out) in self.layer_of["dW"]:
            self.current = self.layer_of["dW"][id(out)]
            label = (f"layers.{self.current}", "backward matmul dW=X.T@dZ")
        else:
            label = (f"layers.{self.current}", "backward matmul dX=dZ@W.T")
        return self.timed(*label, nbytes, flops, real, a, b, out=out)

    def kernel(self, name, fn, *args, **kwargs):
        nbytes = table.traffic(name, args, kwargs)  # each operand read once, outputs written
        if name in _LAYER_OPS:
            arg, label = _LAYER_OPS[name]
            bound = dict(zip((p.name for p in table.ENTRIES[name]), args), **kwargs)
            layer = f"layers.{self.layer_of[arg].get(id(bound.get(arg)), '?')}"
            op = label.format(args[0])
        elif name in _OPTIMIZER_KERNELS:
            layer, op = "optimizer", name
        else:
            layer, op = "loss", name
        return self.timed(layer, op, nbytes, 0.0, fn, *args, **kwargs)


class _ProxyBackend:
    """Forwards everything to ``real``; ``matmul`` and every kernel of both tables (the
    public ``kernels`` and the ``raw_kernels`` devnet calls itself) go through the recorder."""

    def __init__(self, real, recorder: _Recorder):
        self._real = real
        self._rec = recorder
        self.kernels = self._recorded(real.kernels)
        self.raw_kernels = self._recorded(real.raw_kernels)

    def _recorded(self, kernels) -> SimpleNamespace:
        return SimpleNamespace(**{name: partial(self._rec.kernel, name, fn) if callable(fn)
                                  else fn for name, fn in vars(kernels).items()})

    def matmul(self, a, b, out):
        return self._rec.matmul(self._real.matmul, a, b, out)

    def __getattr__(self, name):
        return getattr(self._real, name)


# --- ceilings -----------------------------------------------------------------------------------

_CEILINGS = ("copy_gbs", "gemm_gflops")


def _check_ceilings(ceilings) -> dict:
    """``ceilings`` (``measure_ceilings``' dict) with positive finite rates, or a ConfigError."""
    if not isinstance(ceilings, dict):
        raise ConfigError(f"ceilings must be the dict measure_ceilings returns (keys "
                          f"{', '.join(_CEILINGS)}), got {type(ceilings).__name__}")
    for key in _CEILINGS:
        positive_number(f"ceilings[{key!r}]", ceilings.get(key))
    return ceilings


def measure_ceilings(backend, dtype="float32", copy_mb: float = 64, gemm_n: int | None = None,
                     repeats: int = 5) -> dict:
    """Copy bandwidth (GB/s) and a large square GEMM's GFLOP/s on ``backend``, measured now.

    ``dtype``: float32 or float64; ``copy_mb`` > 0: the copied buffer; ``gemm_n``: the GEMM's
    side (None: 8192 on a GPU, 1024 on the CPU); ``repeats``: timings whose median is taken.
    """
    backend = get_backend(backend)
    try:
        dtype = np.dtype(dtype).name
    except TypeError:
        pass  # not a dtype: lookup names it and lists the valid ones
    lookup({"float32": 0, "float64": 0}, dtype, "dtype")
    positive_number("copy_mb", copy_mb)
    if gemm_n is not None:
        gemm_n = positive_int("gemm_n", gemm_n)
    repeats = positive_int("repeats", repeats)
    xp = backend.xp
    n = int(copy_mb * (1 << 20)) // np.dtype(dtype).itemsize
    src = xp.ones(n, dtype=dtype)
    dst = xp.empty_like(src)

    def median_time(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            clock = backend.clock()
            fn()
            times.append(clock.elapsed())
        return statistics.median(times)

    t_copy = median_time(lambda: dst.__setitem__(Ellipsis, src))
    gpu = hasattr(getattr(xp, "cuda", None), "Event")  # CuPy's arrays
    m = gemm_n or (8192 if gpu else 1024)
    rng = np.random.default_rng(0)
    a, b = (backend.asarray(rng.standard_normal((m, m), dtype=np.float32).astype(dtype))
            for _ in range(2))
    c = backend.empty((m, m), dtype)
    t_gemm = median_time(lambda: backend.matmul(a, b, out=c))
    return {"copy_gbs": 2 * src.nbytes / t_copy / 1e9, "gemm_gflops": 2.0 * m**3 / t_gemm / 1e9,
            "copy_mb": copy_mb, "gemm_n": m}


# --- the report ---------------------------------------------------------------------------------

@dataclass
class ProfileReport:
    """The breakdown of one training step; ``str()`` is a table, ``to_dict()`` JSON-ready."""

    model: str
    device: str
    kernels: str
    batch_size: int
    loss: str
    optimizer: str
    step_s: float
    ops_s: float
    ceilings: dict
    ops: list[OpRecord] = field(default_factory=list)
    repeats: int = 0
    engine: str = "python"  #: the engine fit's engine="auto" runs this step with
    engine_reason: str = ""  #: why (``devnet.train.engine``)
    compiled_step_s: float | None = None  #: per step, compiled (``profile(compiled=True)``)

    def to_dict(self) -> dict:
        return asdict(self)

    def by_op(self) -> dict[str, float]:
        """Seconds per op kind summed over layers (e.g. every forward matmul together)."""
        out: dict[str, float] = defaultdict(float)
        for o in self.ops:
            out[o.op] += o.time_s
        return dict(out)

    def __str__(self) -> str:
        head = (f"profile of one training step: {self.model} batch {self.batch_size} on "
                f"{self.device} (kernels {self.kernels}), loss {self.loss}, {self.optimizer}\n"
                f"step {self.step_s * 1e3:.4g} ms (median of {self.repeats}); ops sum "
                f"{self.ops_s * 1e3:.4g} ms; ceilings: copy {self.ceilings['copy_gbs']:.1f} GB/s, "
                f"GEMM {self.ceilings['gemm_gflops']:.1f} GFLOP/s\n"
                f"fit's engine: {self.engine} ({self.engine_reason})" +
                ("" if self.compiled_step_s is None else
                 f"; compiled step {self.compiled_step_s * 1e3:.4g} ms"))
        rows = [[o.layer, o.op, f"{o.host_s * 1e6:.1f}", f"{o.time_s * 1e6:.1f}",
                 f"{100 * o.share:.1f}",
                 f"{o.gbs:.2f}" if o.bytes else "-", f"{o.gflops:.2f}" if o.flops else "-",
                 f"{100 * o.pct_bandwidth:.0f}" if o.bytes else "-",
                 f"{100 * o.pct_gemm:.0f}" if o.flops else "-"] for o in self.ops]
        # host us: time in the call (on a GPU: the launch); us: the op's run (GPU: events)
        headers = ["layer", "op", "host us", "us", "% step", "GB/s", "GFLOP/s", "% copy BW",
                   "% GEMM"]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

        def line(cells):
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

        lines = [head, line(headers)]
        lines.append("-" * len(lines[-1]))
        lines += [line(r) for r in rows]
        return "\n".join(lines)


def profile(model, X, y, loss="cross_entropy", optimizer="adam", repeats: int = 20,
            warmup: int = 3, ceilings: dict | None = None, compiled: bool = False,
            **opt_kwargs) -> ProfileReport:
    """Break one training step of ``model`` on the batch (X, y) into its ops.

    Args:
        model: a devnet MLP (its parameters are trained by the profiled steps).
        X: (n, n_in) batch; y: its targets for ``loss`` (labels (n,) for cross_entropy).
        loss: a loss name or Loss, or "auto" (fit's rule, ``devnet.task``, which refuses a
            batch too small to tell labels from targets); optimizer: a name or an Optimizer.
        repeats: instrumented (and uninstrumented) steps whose medians are reported.
        ceilings: reuse ``measure_ceilings(...)`` output instead of measuring again.
        compiled: also time the step under fit's compiled engine (``compiled_step_s``: the
            batch run ``repeats`` times in one call, after compiling the step's driver).
    """
    check_model(model)
    repeats = positive_int("repeats", repeats)
    warmup = count("warmup", warmup)
    if ceilings is not None:
        ceilings = _check_ceilings(ceilings)
    be = model.backend
    # the step runs with its data checks off, as in fit: check here, or bad data is timed
    X = check_X(model, X)
    if isinstance(loss, str) and loss == "auto":
        loss = resolve_loss(model, loss, "auto", y)
    loss = losses_mod.get(loss)
    y = check_y(model, loss, y, len(X))
    opt = optim_mod.get(optimizer, model, **opt_kwargs)
    Xd = be.asarray(X, dtype=model.dtype)
    yd = be.asarray(y)
    train_step = Step(model, loss, opt)

    for _ in range(max(1, warmup)):
        train_step(Xd, yd)
    step_times = []
    for _ in range(repeats):
        clock = be.clock()
        train_step(Xd, yd)
        step_times.append(clock.elapsed())

    rec = _Recorder(be, model)
    per_step = []  # per instrumented step: {(layer, op): (s, host s, calls, bytes, flops)}
    model.backend = opt.backend = _ProxyBackend(be, rec)
    try:
        for _ in range(repeats + 1):
            rec.events.clear()
            train_step(Xd, yd)
            be.synchronize()  # once per step: the ops' events are complete
            totals: dict[tuple[str, str], tuple] = {}
            for layer, op, clock, nbytes, flops in rec.events:
                t, host, calls, _, _ = totals.get((layer, op), (0.0, 0.0, 0, 0, 0.0))
                totals[(layer, op)] = (t + clock.elapsed(), host + clock.host_s, calls + 1,
                                       nbytes, flops)
            per_step.append(totals)
    finally:
        model.backend, opt.backend = be, be

    ceil = ceilings or measure_ceilings(be, model.dtype.name)
    step_s = statistics.median(step_times)
    ops = []
    for key in dict.fromkeys(k for totals in per_step for k in totals):  # first-seen order
        seen = [totals[key] for totals in per_step if key in totals]
        kept = seen[1:] or seen  # the first instrumented step pays first-call costs
        t = statistics.median(s[0] for s in kept)
        host_t = statistics.median(s[1] for s in kept)
        _, _, calls, nbytes, flops = seen[-1]
        gbs = nbytes * calls / t / 1e9 if t > 0 else 0.0
        gfl = flops * calls / t / 1e9 if t > 0 else 0.0
        ops.append(OpRecord(*key, t, 0.0, nbytes * calls, flops * calls, gbs, gfl,
                            gbs / ceil["copy_gbs"], gfl / ceil["gemm_gflops"], calls, host_t))
    ops_s = sum(o.time_s for o in ops)
    ops.append(OpRecord("step", "python/glue (step - ops)", max(0.0, step_s - ops_s)))
    for o in ops:
        o.share = o.time_s / step_s if step_s > 0 else 0.0
    sizes = "-".join(map(str, model.layer_sizes))
    engine, why, compiled_s = _engine(train_step, X, y, repeats, compiled)
    return ProfileReport(sizes, be.device, getattr(be.kernels, "source", "?"), int(Xd.shape[0]),
                         loss.name, type(opt).__name__, step_s, ops_s, ceil, ops, repeats,
                         engine, why, compiled_s)


def _engine(step, X, y, repeats: int, timed: bool):
    """(engine, reason, seconds per compiled step or None): what fit's engine="auto" runs
    ``step`` with on the host batch (X, y). ``timed``: also run the batch ``repeats`` times in
    one compiled call, once the driver is compiled."""
    n, be = len(X), step.model.backend
    copies = repeats + 1 if timed else 1
    feed = make_feed(be, np.concatenate([X] * copies), np.concatenate([y] * copies), None, n)
    chosen = choose("auto", step, feed, n, step_index=True)  # fit gives the step index
    if not timed or chosen.runner is None:
        return chosen.name, chosen.reason, None
    chosen.runner.run(None, 0, 1)  # compiles the driver
    clock = be.clock()
    chosen.runner.run(None, 1, repeats, index=1)
    return chosen.name, chosen.reason, clock.elapsed() / repeats


# --- the command --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``devnet profile``: profile one training step of an MLP on random data; returns 0."""
    from devnet.nn import MLP

    p = argparse.ArgumentParser(prog="devnet profile",
                                description="Per-layer, per-op breakdown of one training step.")
    p.add_argument("--sizes", default="784-1024-1024-10",
                   help="layer sizes n_in-h1-...-n_out (default 784-1024-1024-10)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--kernels", default="fused", choices=("fused", "reference"))
    p.add_argument("--activation", default="relu")
    p.add_argument("--loss", default=None, help="default: cross_entropy (mse for one output)")
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="write the report as JSON to PATH (or stdout with no PATH)")
    args = p.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.replace(",", "-").split("-")]
    except ValueError:
        p.error(f"--sizes must look like 784-256-10, got {args.sizes!r}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.json not in (None, "-"):  # refused now, not after the minutes of profiling
        _check_output(args.json)
    backend = get_backend(args.device, kernels=args.kernels)
    model = MLP(sizes, activation=args.activation, backend=backend, dtype=args.dtype,
                seed=args.seed)
    loss = args.loss or ("cross_entropy" if sizes[-1] > 1 else "mse")
    rng = np.random.default_rng(args.seed)
    X = rng.standard_normal((args.batch_size, sizes[0])).astype(args.dtype)
    y = _random_targets(losses_mod.get(loss).name, rng, args.batch_size, sizes[-1], args.dtype)
    report = profile(model, X, y, loss=loss, optimizer=args.optimizer, repeats=args.repeats)
    if args.json == "-":
        json.dump(report.to_dict(), sys.stdout, indent=1)
        print()
        return 0
    print(report)
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(report.to_dict(), f, indent=1)
        except OSError as exc:
            raise ConfigError(f"--json: cannot write {args.json!r}: {exc}") from None
        print(f"wrote {args.json}")
    return 0


def _random_targets(loss: str, rng, n: int, n_out: int, dtype: str) -> np.ndarray:
    """Targets ``loss`` accepts for a batch of n: labels, 0/1, counts or reals."""
    if loss == "cross_entropy":
        return rng.integers(0, n_out, n)
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, (n, n_out)).astype(dtype)
    if loss == "poisson":
        return rng.poisson(1.0, (n, n_out)).astype(dtype)
    return rng.standard_normal((n, n_out)).astype(dtype)


def _check_output(path: str) -> None:
    """ConfigError unless ``path`` can be created or overwritten as a file."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise ConfigError(f"--json: {path!r} is a directory; give a file name")
    if not os.path.isdir(folder):
        raise ConfigError(f"--json: cannot write {path!r}: folder {folder!r} does not exist")


if __name__ == "__main__":
    sys.exit(main())
