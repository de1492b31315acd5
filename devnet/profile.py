"""Per-layer, per-op breakdown of one training step, against ceilings measured on the spot.

``profile(model, X, y)`` runs the training step itself (``devnet.train.Step``: the model's
forward, the loss's ``forward_backward_``, the model's backward without the input gradient and
``opt.step()``) with the backend swapped for a thin proxy that times every ``matmul`` and kernel
call it forwards, so the ops timed are exactly the ops the MLP runs. Each op is attributed to
its layer from the arrays it is handed (``W``, ``b``, ``dW``, ``db`` are views owned by one
layer).

Each op's time is the median over ``repeats`` instrumented steps. On the CPU an op's time is
its wall time (its work is done when the call returns). On a GPU two times are kept: ``host_s``,
the host's time in the call (launch cost; nothing is synchronised between ops, so the host runs
ahead as in training) and ``time_s``, the GPU's time between CUDA events recorded on the
backend's stream around the op, read after the step (so it is the kernel's execution, not the
launch latency). The step time is the median of uninstrumented steps, and the
difference between the step and the sum of its ops is reported as ``python/glue``. Ceilings:
the bandwidth of a plain copy and the GFLOP/s of a large square GEMM, measured in the same call.

    report = dn.profile(model, X, y, loss="cross_entropy")
    print(report); report.to_dict()

``devnet profile --sizes 784-1024-1024-10 --batch-size 256`` (the CLI calls ``main``).
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import numpy as np

from devnet import losses as losses_mod
from devnet import optim as optim_mod
from devnet.backend import get_backend
from devnet.errors import ConfigError, lookup
from devnet.kernels import table
from devnet.train.setup import resolve_loss
from devnet.train.step import Step
from devnet.validation import check_model, check_X, check_y, positive_int

__all__ = ["profile", "ProfileReport", "OpRecord", "measure_ceilings", "main"]


# --- clocks -------------------------------------------------------------------------------------

def _events(backend):
    """CuPy's CUDA Event class when the backend's arrays live on a GPU, else None."""
    return getattr(getattr(backend.xp, "cuda", None), "Event", None)


class _Pending:
    """One op's times: the host's now, the GPU's once its end event has completed."""

    __slots__ = ("host_s", "start", "end", "xp")

    def __init__(self, host_s, start=None, end=None, xp=None):
        self.host_s, self.start, self.end, self.xp = host_s, start, end, xp

    def device_s(self) -> float:
        if self.start is None:
            return self.host_s
        self.end.synchronize()
        return self.xp.cuda.get_elapsed_time(self.start, self.end) / 1e3


class _Clock:
    """Times one region: CUDA events on a GPU, perf_counter after synchronize on the CPU."""

    def __init__(self, backend):
        self.backend = backend
        self.Event = _events(backend)
        self.stream = getattr(backend, "stream", None)  # the backend's own stream, if any

    def op_start(self):
        """Start timing one op without synchronising (see ``op_stop``)."""
        if self.Event is None:
            return time.perf_counter(), None
        ev = self.Event()
        ev.record(self.stream)
        return time.perf_counter(), ev

    def op_stop(self, token) -> _Pending:
        """The op's host time now; on a GPU its device time once the events are read."""
        t0, start = token
        host = time.perf_counter() - t0
        if start is None:
            return _Pending(host)
        end = self.Event()
        end.record(self.stream)
        return _Pending(host, start, end, self.backend.xp)

    def start(self):
        # the backend's own timer (``Backend.clock``): on a GPU, events on its stream and
        # device -- an event on the current device's default stream would time another GPU
        return self.backend.clock()

    def stop(self, token) -> float:
        return token.elapsed()


# --- byte and flop models -----------------------------------------------------------------------

def _nb(*arrays) -> int:
    return sum(int(a.nbytes) for a in arrays if hasattr(a, "nbytes"))


# the array argument that names a kernel's layer (the recorder's view of that name), by kernel;
# other kernels: loss or optimizer
_LAYER_ARG = {"bias_act_fwd": "b", "bias_act_drop_fwd": "b", "act_bwd": "db",
              "act_drop_bwd": "db", "layernorm_fwd": "gamma", "layernorm_bwd": "dgamma"}
_OPTIMIZER_KERNELS = frozenset((*table.STEP_KERNELS, *table.STEP_HYPER_KERNELS,
                                table.ADVANCE_KERNEL, table.CLIP_KERNEL, table.L2_KERNEL))


def _argument(name: str, arg: str, args: tuple, kwargs: dict):
    """Argument ``arg`` of a call to kernel ``name``, positional or by keyword (declared order:
    ``table.ENTRIES``)."""
    if arg in kwargs:
        return kwargs[arg]
    pos = [p.name for p in table.ENTRIES[name]].index(arg)
    return args[pos] if pos < len(args) else None


# --- the proxy backend --------------------------------------------------------------------------

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
    """Collects (layer, op, seconds, bytes, flops) for every forwarded call of one step."""

    def __init__(self, backend, model, optimizer):
        self.clock = _Clock(backend)
        self.events: list[tuple[str, str, float, int, float]] = []
        self.layer_of_W = {id(layer.W): i for i, layer in enumerate(model.layers)}
        self.layer_of_dW = {id(layer.dW): i for i, layer in enumerate(model.layers)}
        self.layer_of = {view: {id(getattr(layer, view)): i
                                for i, layer in enumerate(model.layers)
                                if getattr(layer, view, None) is not None}
                         for view in ("b", "db", "gamma", "dgamma")}
        self.current = 0  # the layer whose backward ran last (dX matmul follows its dW)
        self.optimizer = optimizer

    def timed(self, layer, op, nbytes, flops, fn, *args, **kwargs):
        token = self.clock.op_start()
        out = fn(*args, **kwargs)
        self.events.append((layer, op, self.clock.op_stop(token), nbytes, flops))
        return out

    def matmul(self, real, a, b, out):
        flops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
        nbytes = _nb(a, b, out)
        if id(b) in self.layer_of_W:
            i = self.layer_of_W[id(b)]
            label = (f"layers.{i}", "forward matmul  X@W")
        elif id(out) in self.layer_of_dW:
            self.current = self.layer_of_dW[id(out)]
            label = (f"layers.{self.current}", "backward matmul dW=X.T@dZ")
        else:
            label = (f"layers.{self.current}", "backward matmul dX=dZ@W.T")
        return self.timed(*label, nbytes, flops, real, a, b, out=out)

    def kernel(self, name, fn, *args, **kwargs):
        # minimal bytes: each operand read once, outputs written (in place: both)
        nbytes = table.traffic(name, args, kwargs)
        if name in _LAYER_ARG:
            arg = _LAYER_ARG[name]
            which = self.layer_of[arg].get(id(_argument(name, arg, args, kwargs)), "?")
            layer = f"layers.{which}"
            op = {"bias_act_fwd": f"bias+{args[0]}",
                  "bias_act_drop_fwd": f"bias+{args[0]}+dropout",
                  "act_bwd": f"{args[0]}' + bias grad",
                  "act_drop_bwd": f"dropout+{args[0]}' + bias grad"}.get(name, name)
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
        recorder, table = self._rec, {}
        for name, fn in vars(kernels).items():
            if callable(fn):
                table[name] = (lambda n, f: lambda *a, **kw: recorder.kernel(n, f, *a, **kw))(
                    name, fn)
            else:
                table[name] = fn
        return SimpleNamespace(**table)

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
        value = ceilings.get(key)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"ceilings[{key!r}] must be a finite number > 0 (the rate the "
                              f"shares are taken of), got {value!r}; ceilings needs keys "
                              f"{', '.join(_CEILINGS)}")
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
    if isinstance(copy_mb, bool) or not isinstance(copy_mb, numbers.Real) \
            or not math.isfinite(copy_mb) or copy_mb <= 0:
        raise ConfigError(f"copy_mb must be a finite number > 0, got {copy_mb!r}")
    if gemm_n is not None:
        gemm_n = positive_int("gemm_n", gemm_n)
    repeats = positive_int("repeats", repeats)
    xp, clock = backend.xp, _Clock(backend)
    gpu = _events(backend) is not None
    n = int(copy_mb * (1 << 20)) // np.dtype(dtype).itemsize
    src = xp.ones(n, dtype=dtype)
    dst = xp.empty_like(src)

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            token = clock.start()
            fn()
            times.append(clock.stop(token))
        return statistics.median(times)

    t_copy = best(lambda: dst.__setitem__(Ellipsis, src))
    m = gemm_n or (8192 if gpu else 1024)
    rng = np.random.default_rng(0)
    a = backend.asarray(rng.standard_normal((m, m), dtype=np.float32).astype(dtype))
    b = backend.asarray(rng.standard_normal((m, m), dtype=np.float32).astype(dtype))
    c = backend.empty((m, m), dtype)
    t_gemm = best(lambda: backend.matmul(a, b, out=c))
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ops"] = [asdict(o) for o in self.ops]
        return d

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
                f"GEMM {self.ceilings['gemm_gflops']:.1f} GFLOP/s")
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
            warmup: int = 3, ceilings: dict | None = None, **opt_kwargs) -> ProfileReport:
    """Break one training step of ``model`` on the batch (X, y) into its ops.

    Args:
        model: a devnet MLP (its parameters are trained by the profiled steps).
        X: (n, n_in) batch; y: its targets for ``loss`` (labels (n,) for cross_entropy).
        loss: a loss name or Loss, or "auto" (fit's rule, ``devnet.task``: it reads y, and
            refuses a batch too small to tell labels from targets); optimizer: a name or an
            Optimizer over ``model``.
        repeats: instrumented (and uninstrumented) steps whose medians are reported.
        ceilings: reuse ``measure_ceilings(...)`` output instead of measuring again.
    """
    check_model(model)
    repeats = positive_int("repeats", repeats)
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
        raise ConfigError(f"warmup must be an integer >= 0, got {warmup!r}")
    if ceilings is not None:
        ceilings = _check_ceilings(ceilings)
    be = model.backend
    # the step runs with its data checks off (checked=True, as in fit): check once here, as
    # fit does -- a label out of range or a NaN would otherwise be timed, not refused
    X = check_X(model, X)
    if isinstance(loss, str) and loss == "auto":
        loss = resolve_loss(model, loss, "auto", y)
    loss = losses_mod.get(loss)
    y = check_y(model, loss, y, len(X))
    opt = optim_mod.get(optimizer, model, **opt_kwargs)
    Xd = be.asarray(X, dtype=model.dtype)
    yd = be.asarray(y)
    clock = _Clock(be)
    train_step = Step(model, loss, opt)

    def step(backend):
        # the training step itself; ``backend``: the one swapped into the model and optimizer
        train_step(Xd, yd)

    for _ in range(max(1, warmup)):
        step(be)
    step_times = []
    for _ in range(repeats):
        token = clock.start()
        step(be)
        step_times.append(clock.stop(token))

    rec = _Recorder(be, model, opt)
    proxy = _ProxyBackend(be, rec)
    per_op: dict[tuple[str, str], list[float]] = defaultdict(list)
    per_op_host: dict[tuple[str, str], list[float]] = defaultdict(list)
    meta: dict[tuple[str, str], tuple[int, float, int]] = {}
    model.backend, opt.backend = proxy, proxy
    try:
        for _ in range(repeats + 1):
            rec.events.clear()
            step(proxy)
            be.synchronize()  # once per step: the ops' events are complete
            counts: dict[tuple[str, str], float] = defaultdict(float)
            host: dict[tuple[str, str], float] = defaultdict(float)
            ncalls: dict[tuple[str, str], int] = defaultdict(int)
            for layer, op, pending, nbytes, flops in rec.events:
                counts[(layer, op)] += pending.device_s()
                host[(layer, op)] += pending.host_s
                ncalls[(layer, op)] += 1
                meta[(layer, op)] = (nbytes, flops, 0)
            for key, t in counts.items():
                per_op[key].append(t)
                per_op_host[key].append(host[key])
                nbytes, flops, _ = meta[key]
                meta[key] = (nbytes, flops, ncalls[key])
    finally:
        model.backend, opt.backend = be, be

    ceil = ceilings or measure_ceilings(be, model.dtype.name)
    step_s = statistics.median(step_times)
    ops = []
    for (layer, op), times in per_op.items():
        t = statistics.median(times[1:] if len(times) > 1 else times)
        host_times = per_op_host[(layer, op)]
        host_t = statistics.median(host_times[1:] if len(host_times) > 1 else host_times)
        nbytes, flops, calls = meta[(layer, op)]
        gbs = nbytes * calls / t / 1e9 if t > 0 else 0.0
        gfl = flops * calls / t / 1e9 if t > 0 else 0.0
        ops.append(OpRecord(layer, op, t, 0.0, nbytes * calls, flops * calls, gbs, gfl,
                            gbs / ceil["copy_gbs"], gfl / ceil["gemm_gflops"], calls, host_t))
    ops_s = sum(o.time_s for o in ops)
    ops.append(OpRecord("step", "python/glue (step - ops)", max(0.0, step_s - ops_s)))
    for o in ops:
        o.share = o.time_s / step_s if step_s > 0 else 0.0
    sizes = "-".join(map(str, model.layer_sizes))
    return ProfileReport(sizes, be.device, getattr(be.kernels, "source", "?"), int(Xd.shape[0]),
                         loss.name, type(opt).__name__, step_s, ops_s, ceil, ops, repeats)


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
    else:
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
    import os

    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise ConfigError(f"--json: {path!r} is a directory; give a file name")
    if not os.path.isdir(folder):
        raise ConfigError(f"--json: cannot write {path!r}: folder {folder!r} does not exist")


if __name__ == "__main__":
    sys.exit(main())
