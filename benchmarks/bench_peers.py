"""Peers suite: devnet against the strongest alternatives a user could pick instead.

The peers, each on the same MLP (layer sizes, ReLU, softmax cross-entropy, float32), the same
initial weights (copied from the devnet model), Adam (lr 1e-4, betas (0.9, 0.999), eps 1e-8)
and the same batches:

- **JAX at its best**: the whole step under ``jax.jit`` with the parameters and the optax Adam
  state donated (``jax jit``), and whole epochs under ``lax.scan`` (``jax scan``: the rows
  gathered from the epoch's order inside the compiled call, a partial last batch as one more
  step in the same call). Calls are dispatched asynchronously; the clock waits for the last
  result only, as a training loop would. JAX's figure is the faster of the two.
- **PyTorch eager** with its fastest Adam here (``fused=True`` or ``foreach=True``, both
  raced), and **torch.compile** of the whole step (zero_grad, forward, loss, backward and the
  optimizer step in one compiled function, inductor, default Adam: the compiled optimizer).
- **scikit-learn**'s own ``MLPClassifier.fit`` against devnet's estimator.

Workloads (``WORKLOADS``): one training step at tiny 2-8-2 b4, S, M1, M; one epoch on digits
(1797x64, hidden (128, 64), b32: the whole ``dn.fit(epochs=1)`` call, set-up included) and on
random data of MNIST's shape (60000x784, hidden (256, 256), b128: the time of an epoch does not
depend on the values); and the scikit-learn estimator's ``fit`` on digits (hidden (128, 64),
50 epochs). devnet runs as ``dn.train.Step`` (the Python executor) and, where ``dn.fit`` has an
``engine`` argument, through ``fit`` with ``engine="python"`` and its default: its step figure
is then the fastest of those (an epoch's time over its steps for ``fit``).

Every competitor of a workload is measured interleaved, ``repetitions`` rounds, each block
after its own settling calls (the libraries' thread pools differ). Per round, each family
(devnet, JAX, PyTorch eager, ...) counts its fastest member; a ratio is the median of the
per-round ratios, stored with min, max and every round.

Threads: devnet uses NumPy's BLAS threads; PyTorch is set to the same count; JAX's CPU client
sizes its pool from the process's CPU affinity and has no thread-count flag (jaxlib 0.10 ignores
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``: a 2048 matmul still kept
1.96 cores busy), so the two match when the thread count is the number of cores this process
may use; otherwise ``threads.jax_matches`` is false and the log says to run under ``taskset``.
"""

from __future__ import annotations

import inspect
import os
import statistics
import time
import warnings
from dataclasses import dataclass

import numpy as np

import devnet as dn

from .bench_kernels import put_ratio
from .bench_step import TORCH_ADAM, torch_clock, torch_device
from .env import optional
from .timing import HostClock, Repeated, Settings, Timing, clock_for, interleaved, is_gpu

LR = 1e-4
FAMILIES = ("devnet", "jax", "torch", "torch.compile", "sklearn")


@dataclass(frozen=True)
class Workload:
    """One comparison: a step, an epoch or an estimator's fit, on an architecture and batch.

    ``samples``: the rows of random data (None: the digits set, 1797x64; a step workload:
    ``steps`` batches); ``epochs``: the estimator's ``max_iter``; ``steps``: steps per call of
    the epoch-based step figures (fit, scan).
    """

    kind: str
    sizes: tuple[int, ...]
    batch: int
    samples: int | None = None
    epochs: int = 1
    steps: int = 16

    @property
    def data(self) -> str:
        return "digits" if self.samples is None and self.kind != "step" else "random"

    @property
    def rows(self) -> int:
        if self.kind == "step":
            return self.steps * self.batch
        return self.samples if self.samples is not None else 1797

    @property
    def size(self) -> str:
        """What the workload measures, in the terms of ``report.TARGET_SIZES``."""
        arch = "-".join(map(str, self.sizes))
        if self.kind == "step":
            return f"{arch} b{self.batch}"
        hidden = tuple(self.sizes[1:-1])
        if self.kind == "epoch":
            return f"{self.rows}x{self.sizes[0]} hidden {hidden} b{self.batch}"
        return f"{self.rows}x{self.sizes[0]} hidden {hidden} {self.epochs} epochs"


WORKLOADS = {
    "step-tiny": Workload("step", (2, 8, 2), 4, steps=256),
    "step-S": Workload("step", (64, 128, 128, 10), 64, steps=256),
    "step-M1": Workload("step", (784, 256, 256, 10), 128),
    "step-M": Workload("step", (784, 1024, 1024, 10), 256),
    "epoch-digits": Workload("epoch", (64, 128, 64, 10), 32),
    "epoch-60000": Workload("epoch", (784, 256, 256, 10), 128, samples=60000),
    "estimator-digits": Workload("estimator", (64, 128, 64, 10), 200, epochs=50),
}
QUICK_WORKLOADS = {
    "step-tiny": Workload("step", (2, 8, 2), 4, steps=8),
    "step-S": Workload("step", (16, 32, 10), 8, steps=8),
    "epoch-digits": Workload("epoch", (64, 16, 10), 64),
    "epoch-60000": Workload("epoch", (16, 32, 10), 32, samples=256),
    "estimator-digits": Workload("estimator", (64, 16, 10), 200, epochs=3),
}


def parse_workloads(spec: str | None, quick: bool) -> dict[str, Workload]:
    """Workloads by name (comma-separated), or all of them; an unknown name lists the valid."""
    table = QUICK_WORKLOADS if quick else WORKLOADS
    if not spec:
        return dict(table)
    names = [s for s in spec.split(",") if s]
    unknown = [s for s in names if s not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown peer workload(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(WORKLOADS)}")
    return {n: table[n] for n in names if n in table}


def dataset(w: Workload, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 (n, n_in), integer labels (n,)): digits, or random rows of the right shape."""
    if w.data == "digits":
        X, y = dn.data.load_digits()
        X = np.ascontiguousarray(X[:, : w.sizes[0]], dtype=np.float32)
        return X, (y % w.sizes[-1]).astype(np.int64)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((w.rows, w.sizes[0]), dtype=np.float32)
    return X, rng.integers(0, w.sizes[-1], w.rows).astype(np.int64)


def initial_weights(model) -> list[tuple[np.ndarray, np.ndarray]]:
    """A devnet model's (W (n_in, n_out), b (n_out,)) per layer, copied to the host."""
    be = model.backend
    return [(np.array(be.to_numpy(layer.W)), np.array(be.to_numpy(layer.b)))
            for layer in model.layers]


def fit_engines() -> tuple[str, ...]:
    """The engines devnet's fit is benchmarked with: ("python", "auto") when ``dn.fit`` has an
    ``engine`` argument, else () (fit has one path, the Step's)."""
    if "engine" not in inspect.signature(dn.fit).parameters:
        return ()
    return ("python", "auto")


# --- clocks -------------------------------------------------------------------------------------

def per_step(fn, k: int):
    """Mark ``fn`` as running ``k`` steps per call: its times are divided by ``k`` after the
    measurement (``measure`` sizes its samples by the time of a whole call)."""
    fn.steps = k
    return fn


def _per_step_times(t: dict[str, Repeated], fns: dict) -> None:
    """Divide the times of the competitors marked by ``per_step`` by their steps per call."""
    for name, (fn, _) in fns.items():
        k = getattr(fn, "steps", 1)
        if k != 1:
            t[name] = Repeated([Timing(x.median / k, x.min / k, x.max / k, x.repeats, x.number)
                                for x in t[name].reps])


class Reported:
    """The times a competitor reports itself (``add``), summed since ``start``: fit's own
    epoch time, without the call's set-up."""

    def __init__(self):
        self.spent = 0.0

    def add(self, seconds: float) -> None:
        self.spent += seconds

    def start(self):
        self.spent = 0.0
        return None

    def stop(self, token) -> float:
        return self.spent


class JaxClock:
    """perf_counter, waiting first for the last result a JAX competitor left in ``last``:
    calls are dispatched asynchronously in between, as in a JAX training loop."""

    def __init__(self, jax):
        self.jax = jax
        self.last = None

    def _wait(self):
        if self.last is not None:
            self.jax.block_until_ready(self.last)

    def start(self):
        self._wait()
        return time.perf_counter()

    def stop(self, token) -> float:
        self._wait()
        return time.perf_counter() - token


# --- JAX ----------------------------------------------------------------------------------------

class JaxPeer:
    """The MLP in JAX: ``step`` is one jitted training step, ``epoch`` one jitted ``lax.scan``
    epoch; parameters and optax Adam state are donated to both (updated in place)."""

    def __init__(self, jax, optax, weights, lr: float = LR, device=None):
        jnp = jax.numpy
        self.jax = jax
        self.device = device or jax.devices("cpu")[0]
        put = self.put
        self.params = [(put(W), put(b)) for W, b in weights]
        opt = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
        self.state = opt.init(self.params)

        def forward(params, x):
            last = len(params) - 1
            for i, (W, b) in enumerate(params):
                x = x @ W + b
                if i < last:
                    x = jax.nn.relu(x)
            return x

        def loss_fn(params, x, y):
            logits = forward(params, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def step(params, state, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state, loss

        def epoch(params, state, X, y, order, batch):
            # full batches under scan; a partial last batch is one more step, weighted by its
            # share of a batch as devnet's fit weighs it in the epoch's loss
            n = order.shape[0]
            full = n // batch

            def body(carry, rows):
                p, s, total = carry
                p, s, loss = step(p, s, X[rows], y[rows])
                return (p, s, total + loss), None

            init = (params, state, jnp.zeros((), jnp.float32))
            (params, state, total), _ = jax.lax.scan(
                body, init, order[: full * batch].reshape(full, batch))
            if n % batch:
                rows = order[full * batch:]
                params, state, loss = step(params, state, X[rows], y[rows])
                total = total + loss * ((n % batch) / batch)
            return params, state, total * (batch / n)

        self.loss_fn = jax.jit(loss_fn)
        self.grad_fn = jax.jit(jax.grad(loss_fn))
        self._step = jax.jit(step, donate_argnums=(0, 1))
        self._epoch = jax.jit(epoch, static_argnames=("batch",), donate_argnums=(0, 1))

    def put(self, a):
        return self.jax.device_put(np.asarray(a), self.device)

    def labels(self, y):
        return self.put(np.asarray(y, dtype=np.int32))

    def step(self, x, y):
        """One training step on device arrays; returns the loss (a device scalar)."""
        self.params, self.state, loss = self._step(self.params, self.state, x, y)
        return loss

    def epoch(self, X, y, order, batch: int):
        """One epoch over the rows of device arrays X, y in ``order``; returns the mean loss."""
        self.params, self.state, loss = self._epoch(self.params, self.state, X, y, order,
                                                    batch=batch)
        return loss

    def weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.asarray(W), np.asarray(b)) for W, b in self.params]


# --- PyTorch ------------------------------------------------------------------------------------

class TorchPeer:
    """The MLP in PyTorch: ``step`` runs zero_grad, forward, loss, backward and Adam, eagerly or,
    with ``compile``, as one ``torch.compile``d function (``compile``: the backend's name)."""

    def __init__(self, torch, weights, lr: float = LR, adam=None, compile: str | None = None,
                 device="cpu"):
        self.torch, self.device = torch, device
        layers = []
        for i, (W, b) in enumerate(weights):
            lin = torch.nn.Linear(*W.shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            if i < len(weights) - 1:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers).to(device=device, dtype=torch.float32)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(0.9, 0.999),
                                    eps=1e-8, **(adam or {}))
        crit = torch.nn.CrossEntropyLoss()
        model, opt = self.model, self.opt

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            return loss.detach()

        # one graph per batch shape (a partial last batch is a second one), no dynamic shapes
        self._step = step if compile is None else torch.compile(step, backend=compile,
                                                                dynamic=False)

    def put(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def labels(self, y):
        return self.put(np.asarray(y, dtype=np.int64))

    def step(self, x, y):
        return self._step(x, y)

    def epoch(self, X, y, order, batch: int):
        """One epoch over the rows of X, y in ``order`` (a device index tensor)."""
        n = order.shape[0]
        total = None
        for lo in range(0, n, batch):
            rows = order[lo: lo + batch]
            loss = self._step(X[rows], y[rows]) * (rows.shape[0] / batch)
            total = loss if total is None else total + loss
        return total * (batch / n)

    def weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        lins = [m for m in self.model if isinstance(m, self.torch.nn.Linear)]
        return [(m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy())
                for m in lins]


# --- the competitors of a workload --------------------------------------------------------------

def _devnet_model(backend, w: Workload, seed: int):
    model = dn.MLP(list(w.sizes), backend=backend, seed=seed)
    return model, dn.optim.Adam(model.parameters(), lr=LR)


def _fit(model, opt, X, y, batch, engine, seed):
    kw = {} if engine is None else {"engine": engine}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dn.fit(model, X, y, loss="cross_entropy", optimizer=opt, epochs=1,
                      batch_size=batch, seed=seed, progress=False, train_metrics=False, **kw)


def _fit_call(model, opt, X, y, batch, engine, seed, reported: Reported | None = None):
    """A closure running one ``fit`` epoch; it keeps the engine that ran (``.engine``) and
    hands the epoch's own time to ``reported`` when given."""

    def run():
        hist = _fit(model, opt, X, y, batch, engine, seed)
        run.engine = hist.params.get("engine")
        if reported is not None:
            reported.add(hist.history["time"][-1])

    run.engine = None
    return run


def devnet_competitors(backend, w: Workload, X, y, seed: int) -> dict:
    """devnet's ways to run the workload: name -> (fn, clock)."""
    clock = clock_for(backend)
    out = {}
    if w.kind == "step":
        model, opt = _devnet_model(backend, w, seed)
        step = dn.train.Step(model, "cross_entropy", opt)
        xb, yb = backend.asarray(X[: w.batch]), backend.asarray(y[: w.batch])
        out["devnet Step"] = (lambda: step(xb, yb), clock)
        for engine in fit_engines():
            if engine == "python":
                continue  # the Step above is the Python executor's step
            model, opt = _devnet_model(backend, w, seed)
            rep = Reported()
            n = w.steps * w.batch

            run = _fit_call(model, opt, X[:n], y[:n], w.batch, engine, seed, rep)
            out[f"devnet fit[{engine}] epoch/steps"] = (per_step(run, w.steps), rep)
    elif w.kind == "epoch":
        for engine in fit_engines() or (None,):
            model, opt = _devnet_model(backend, w, seed)
            name = "devnet fit" if engine is None else f"devnet fit[{engine}]"
            out[name] = (_fit_call(model, opt, X, y, w.batch, engine, seed), clock)
    else:
        from devnet.sklearn import MLPClassifier

        def fit():
            clf = MLPClassifier(**estimator_params(w, seed), device=backend.device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(X, y)
            fit.iters = clf.n_iter_

        out["devnet MLPClassifier.fit"] = (fit, HostClock())
    return out


def estimator_params(w: Workload, seed: int) -> dict:
    """The same estimator settings for devnet's and scikit-learn's MLPClassifier: Adam, no
    early stop before ``max_iter`` (n_iter_no_change = max_iter), no L2."""
    return {"hidden_layer_sizes": tuple(w.sizes[1:-1]), "activation": "relu", "solver": "adam",
            "alpha": 0.0, "batch_size": w.batch, "learning_rate_init": LR,
            "max_iter": w.epochs, "n_iter_no_change": w.epochs, "random_state": seed,
            "shuffle": True}


def jax_competitors(jax, optax, weights, w: Workload, X, y, seed: int, device=None) -> dict:
    """JAX's ways to run the workload: jit step, and scan epochs (per step for step rows)."""
    out = {}
    if w.kind == "step":
        peer = JaxPeer(jax, optax, weights, device=device)
        xb, yb = peer.put(X[: w.batch]), peer.labels(y[: w.batch])
        clock = JaxClock(jax)

        def one(peer=peer, clock=clock):
            clock.last = peer.step(xb, yb)

        out["jax jit"] = (one, clock)
    if w.kind in ("step", "epoch"):
        peer = JaxPeer(jax, optax, weights, device=device)
        n = w.steps * w.batch if w.kind == "step" else X.shape[0]
        Xd, yd = peer.put(X[:n]), peer.labels(y[:n])
        rng = np.random.default_rng(seed)
        clock = JaxClock(jax)

        def epoch(peer=peer, clock=clock):
            order = peer.put(rng.permutation(n).astype(np.int32))
            clock.last = peer.epoch(Xd, yd, order, w.batch)

        name = "jax scan epoch/steps" if w.kind == "step" else "jax scan"
        out[name] = (per_step(epoch, w.steps) if w.kind == "step" else epoch, clock)
    return out


def torch_competitors(torch, weights, w: Workload, X, y, seed: int, device="cpu",
                      compile_backend: str | None = None) -> dict:
    """PyTorch eager with each raced Adam, and ``torch.compile`` of the step when asked."""
    out = {}
    if w.kind == "estimator":
        return out
    clock = torch_clock(torch, device)
    configs = {f"torch {k}": (v, None) for k, v in TORCH_ADAM.items()}
    if compile_backend:
        configs["torch.compile"] = ({}, compile_backend)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, (adam, backend) in configs.items():
        peer = TorchPeer(torch, weights, adam=adam, compile=backend, device=device)
        if w.kind == "step":
            xb, yb = peer.put(X[: w.batch]), peer.labels(y[: w.batch])
            out[name] = (lambda peer=peer, xb=xb, yb=yb: peer.step(xb, yb), clock)
        else:
            Xd, yd = peer.put(X), peer.labels(y)

            def epoch(peer=peer, Xd=Xd, yd=yd):
                order = torch.randperm(Xd.shape[0], generator=gen).to(peer.device)
                peer.epoch(Xd, yd, order, w.batch)

            out[name] = (epoch, clock)
    return out


def sklearn_competitors(w: Workload, X, y, seed: int) -> dict:
    from sklearn.neural_network import MLPClassifier

    def fit():
        clf = MLPClassifier(**estimator_params(w, seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(X, y)
        fit.iters = clf.n_iter_

    return {"sklearn MLPClassifier.fit": (fit, HostClock())}


def family(name: str) -> str:
    """The family a competitor belongs to (``FAMILIES``), from its name."""
    if name.startswith("torch.compile"):
        return "torch.compile"
    return name.split(" ", 1)[0]


# --- the suite ----------------------------------------------------------------------------------

@dataclass
class Peers:
    """The optional peer libraries, and why each one that is missing is left out."""

    jax: object = None
    optax: object = None
    torch: object = None
    sklearn: object = None
    torch_compile: str | None = "inductor"  # the backend, or None (skipped: see skipped)
    skipped: dict | None = None


def load_peers(no_jax: bool, torch, sklearn, torch_compile: bool | str, gpu: bool) -> Peers:
    """JAX and optax (CPU, or the GPU where devnet runs on one), with the reasons for any
    peer left out: a missing package, a flag, a device JAX does not have."""
    skipped = {}
    jax = optax = None
    if no_jax:
        skipped["jax"] = "--no-jax"
    else:
        jax, optax = optional("jax"), optional("optax")
        if jax is None or optax is None:
            missing = " and ".join(n for n, m in (("jax", jax), ("optax", optax)) if m is None)
            skipped["jax"] = f"{missing} not installed (pip install 'devnet-mlp[bench]')"
            jax = optax = None
        elif gpu and not _jax_gpu(jax):
            skipped["jax"] = "JAX sees no GPU here (a CPU-only jaxlib): no GPU peer"
            jax = optax = None
    if torch is None:
        skipped["torch"] = "PyTorch not installed or --no-torch"
    if torch_compile is not True:
        skipped["torch.compile"] = str(torch_compile or "disabled")
    if sklearn is None:
        skipped["sklearn"] = "scikit-learn not installed or --no-sklearn"
    return Peers(jax, optax, torch, sklearn, "inductor" if torch_compile is True else None,
                 skipped)


def _jax_gpu(jax) -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def jax_device(jax, backend):
    """The JAX device beside devnet's: its GPU on a CUDA backend, else the CPU."""
    return jax.devices("gpu")[0] if is_gpu(backend) else jax.devices("cpu")[0]


def jax_threads(threads: int) -> dict:
    """JAX's CPU pool (sized from this process's CPU affinity) against the requested count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"jax": cores, "requested": threads, "jax_matches": cores == threads,
            "how": "devnet: NumPy's BLAS threads; PyTorch: torch.set_num_threads; JAX: its CPU "
                   "client's pool is one thread per core this process may use (jaxlib has no "
                   "thread-count flag), so the run matches when threads = those cores "
                   "(taskset -c 0-<threads-1> python -m benchmarks peers otherwise)"}


def run(backend, workloads: dict[str, Workload], settings: Settings, peers: Peers,
        threads: int, seed: int = 0, log=print) -> dict:
    """Every workload against every peer present: ``{"rows": [...], "threads": {...}}``."""
    gpu = is_gpu(backend)
    thr = jax_threads(threads)
    if peers.jax is not None and not gpu and not thr["jax_matches"]:
        log(f"  JAX uses {thr['jax']} threads, devnet and PyTorch {threads}: run under "
            f"taskset -c 0-{threads - 1} for the same count")
    rows = []
    for key, w in workloads.items():
        if w.kind == "estimator" and (gpu or peers.sklearn is None):
            log(f"  peers {key}: skipped (scikit-learn's estimator, CPU only)")
            continue
        rows.append(run_workload(backend, key, w, settings, peers, seed, log))
    return {"rows": rows, "threads": thr, "engines": list(fit_engines()),
            "skipped": dict(peers.skipped or {})}


def run_workload(backend, key: str, w: Workload, settings: Settings, peers: Peers, seed: int,
                 log=print) -> dict:
    """One workload: its competitors interleaved, then the per-family ratios."""
    X, y = dataset(w, seed)
    model, _ = _devnet_model(backend, w, seed)
    weights = initial_weights(model)
    fns = devnet_competitors(backend, w, X, y, seed)
    if peers.jax is not None:
        fns.update(jax_competitors(peers.jax, peers.optax, weights, w, X, y, seed,
                                   jax_device(peers.jax, backend)))
    row = {"config": key, "kind": w.kind, "size": w.size, "sizes": list(w.sizes),
           "batch": w.batch, "samples": w.rows, "data": w.data}
    if w.kind == "step":
        row["steps_per_call"] = w.steps
    if w.kind == "estimator":
        row["epochs"] = w.epochs
    if peers.torch is not None:
        tdev = torch_device(backend)
        torch_fns = torch_competitors(peers.torch, weights, w, X, y, seed, tdev,
                                      peers.torch_compile)
        compiled = torch_fns.pop("torch.compile", None)
        fns.update(torch_fns)
        if compiled is not None:
            why = _warm_compiled(compiled[0])  # compiles: seconds to minutes, untimed
            if why is None:
                fns["torch.compile"] = compiled
            else:
                row["torch_compile_skipped"] = why
    if w.kind == "estimator" and peers.sklearn is not None:
        fns.update(sklearn_competitors(w, X, y, seed))
    per = settings
    if w.kind != "step":  # calls of a second or more: few samples per round, no budget
        per = Settings(warmup=1, budget_s=0.0, min_repeats=2, max_repeats=2,
                       min_sample_s=0.0, repetitions=settings.repetitions,
                       settle_s=min(settings.settle_s, 0.25))
    t = interleaved(fns, per, settings.repetitions, settle_pools=True)
    _per_step_times(t, fns)
    row["repetitions"] = settings.repetitions
    row["times_s"] = {name: r.median for name, r in t.items()}
    row["times_reps_s"] = {name: r.medians for name, r in t.items()}
    ran = {name: fn.engine for name, (fn, _) in fns.items() if hasattr(fn, "engine")}
    if ran:
        row["engines_ran"] = ran  # what fit's engine="auto" picked (history.params)
    if w.kind == "estimator":
        row["iterations"] = {name: getattr(fn, "iters", None) for name, (fn, _) in fns.items()}
    fill_ratios(row, t)
    log("  peers " + summary(row))
    return row


def _warm_compiled(fn) -> str | None:
    """Call a ``torch.compile``d competitor until compiled; None, or why it cannot run."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
            fn()
    except Exception as exc:  # no C++ compiler, unsupported platform, inductor error: say which
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return None


def best_of(t: dict[str, Repeated], fam: str) -> tuple[str, list[float]] | None:
    """A family's fastest member (by median) and, per round, the family's fastest time."""
    names = [n for n in t if family(n) == fam]
    if not names:
        return None
    per_round = [min(t[n].medians[i] for n in names) for i in range(len(t[names[0]].medians))]
    return min(names, key=lambda n: t[n].median), per_round


def _stats(ratios: list[float]) -> dict:
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "reps": ratios}


def fill_ratios(row: dict, t: dict[str, Repeated]) -> None:
    """devnet (its fastest way, per round) over each peer family's fastest, and over the
    fastest peer of all; plus every devnet variant over JAX and over the fastest peer."""
    dv = best_of(t, "devnet")
    row["devnet"], dv_rounds = dv
    row["devnet_s"] = statistics.median(dv_rounds)
    peers_rounds = []
    for fam, field in (("jax", "jax"), ("torch", "torch"), ("torch.compile", "torch_compile"),
                       ("sklearn", "sklearn")):
        best = best_of(t, fam)
        if best is None:
            continue
        name, rounds = best
        row[f"{field}_peer"], row[f"{field}_s"] = name, statistics.median(rounds)
        put_ratio(row, f"devnet_over_{field}", _stats([a / b for a, b in
                                                       zip(dv_rounds, rounds, strict=True)]))
        peers_rounds.append((name, rounds))
    if not peers_rounds:
        return
    fastest = [min(r[i] for _, r in peers_rounds) for i in range(len(dv_rounds))]
    row["fastest_peer"] = min(peers_rounds, key=lambda p: statistics.median(p[1]))[0]
    row["fastest_peer_s"] = statistics.median(fastest)
    put_ratio(row, "devnet_over_fastest_peer",
              _stats([a / b for a, b in zip(dv_rounds, fastest, strict=True)]))
    jax = best_of(t, "jax")
    row["devnet_variants"] = {
        name: {"s": t[name].median,
               "over_jax": None if jax is None else statistics.median(
                   a / b for a, b in zip(t[name].medians, jax[1], strict=True)),
               "over_fastest_peer": statistics.median(
                   a / b for a, b in zip(t[name].medians, fastest, strict=True))}
        for name in t if family(name) == "devnet"}


def summary(row: dict) -> str:
    s = f"{row['config']} ({row['size']}): {row['devnet']} {_ms(row['devnet_s'])}"
    for field, label in (("jax", "JAX"), ("torch", "torch eager"),
                         ("torch_compile", "torch.compile"), ("sklearn", "sklearn")):
        if f"{field}_s" in row:
            s += (f"; {label} {_ms(row[field + '_s'])}, devnet/{label} "
                  f"{row['devnet_over_' + field]:.3f} [{row['devnet_over_' + field + '_min']:.3f}"
                  f"-{row['devnet_over_' + field + '_max']:.3f}]")
    return s


def _ms(s: float) -> str:
    return f"{s * 1e3:.4g} ms"
