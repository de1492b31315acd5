"""Training-step suite: devnet vs PyTorch eager vs scikit-learn, and devnet's GEMM floor.

One step = forward, fused loss + gradient, backward (no input gradient), Adam. The GEMM floor
is the same step's matrix products alone (forward, dW and dX, the layouts the MLP uses) through
``backend.matmul`` in the same run: what the step would cost if every elementwise kernel and all
Python glue were free. scikit-learn's MLPClassifier is timed per epoch (``partial_fit``) against
a ``devnet.fit`` epoch over the same data, epoch by epoch in turn.

The PyTorch peer is PyTorch at its fastest eager configuration for each size: the same
architecture, loss and dtype, ``zero_grad(set_to_none=True)``, ``torch.set_num_threads`` set to
devnet's BLAS thread count, and Adam with ``fused=True`` or ``foreach=True``, whichever is faster
at that size (both are measured, both recorded; ``torch_config`` names the winner). The graded
ratio ``devnet_over_torch`` is against that peer. ``torch.compile`` (inductor, the whole step:
zero_grad, forward, loss, backward and the compiled default Adam in one function, as the peers
suite compiles it) is reported separately, or skipped with the reason.

devnet, the floor and every PyTorch configuration are measured interleaved,
``settings.repetitions`` times round; each ratio is the median of the per-repetition ratios,
stored with its min, max and every repetition.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

import devnet as dn

from .bench_kernels import put_ratio
from .env import optional
from .timing import (
    HostClock,
    Rotation,
    Settings,
    TorchEventClock,
    clock_for,
    interleaved,
    is_gpu,
    n_rotations,
    ratio_stats,
)

# PyTorch's Adam configurations raced for the peer (its default per-tensor loop is slower on
# the CPU than either; measured 4.6 ms vs 1.4 ms over 1.86M parameters)
TORCH_ADAM = {"adam(fused=True)": {"fused": True}, "adam(foreach=True)": {"foreach": True}}


@dataclass(frozen=True)
class Config:
    """An architecture and batch size; ``gpu_only`` ones are skipped on the CPU."""

    name: str
    sizes: tuple[int, ...]
    batch: int
    gpu_only: bool = False

    @property
    def label(self) -> str:
        return f"{'-'.join(map(str, self.sizes))} b{self.batch}"


CONFIGS = {
    "tiny": Config("tiny", (2, 8, 1), 4),
    "S": Config("S", (64, 128, 128, 10), 64),
    "M1": Config("M1", (784, 256, 256, 10), 128),
    "M": Config("M", (784, 1024, 1024, 10), 256),
    "L": Config("L", (784, 4096, 4096, 4096, 10), 8192, gpu_only=True),
}
QUICK_CONFIGS = {
    "tiny": Config("tiny", (2, 8, 1), 4),
    "S": Config("S", (16, 32, 10), 8),
}


def parse_config(spec: str) -> Config:
    """A named config (``CONFIGS``) or ``"784-256-10:b128"`` / ``"784-256-10"`` (b64)."""
    if spec in CONFIGS:
        return CONFIGS[spec]
    arch, _, batch = spec.partition(":")
    try:
        sizes = tuple(int(s) for s in arch.split("-"))
        b = int(batch.lstrip("b")) if batch else 64
    except ValueError:
        raise SystemExit(f"bad size {spec!r}: give one of {', '.join(CONFIGS)} or "
                         "'784-256-10:b128'") from None
    if len(sizes) < 2:
        raise SystemExit(f"bad size {spec!r}: at least an input and an output width")
    return Config(spec, sizes, b)


def loss_name(sizes) -> str:
    """cross_entropy over >= 2 classes; one output is a binary (sigmoid) classifier."""
    return "cross_entropy" if sizes[-1] > 1 else "binary_cross_entropy"


def step_flops(sizes, batch: int) -> float:
    """Matrix-product FLOPs of one step: forward, dW, and dX for every layer but the first."""
    pairs = list(zip(sizes[:-1], sizes[1:], strict=False))
    total = sum(2 * batch * a * b for a, b in pairs) * 2
    return float(total + sum(2 * batch * a * b for a, b in pairs[1:]))


def _data(rng, sizes, n, dtype=np.float32):
    X = rng.standard_normal((n, sizes[0]), dtype=np.float32).astype(dtype)
    if sizes[-1] > 1:
        y = rng.integers(0, sizes[-1], n).astype(np.int64)
    else:
        y = rng.integers(0, 2, (n, 1)).astype(dtype)
    return X, y


# --- devnet -------------------------------------------------------------------------------------

def devnet_step(backend, sizes, batch: int, seed: int = 0, dtype="float32"):
    """A closure running one devnet training step (rotating batches on a GPU)."""
    model = dn.MLP(list(sizes), backend=backend, seed=seed, dtype=dtype)
    loss = dn.losses.get(loss_name(sizes))
    opt = dn.optim.Adam(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(seed)
    k = n_rotations(batch * sizes[0] * 4, is_gpu(backend))
    batches = []
    for _ in range(k):
        X, y = _data(rng, sizes, batch, dtype)
        batches.append((backend.asarray(X), backend.asarray(y)))
    rot = Rotation(batches)
    train_step = dn.train.Step(model, loss, opt)  # the step fit runs

    def step():
        X, y = rot.next()
        train_step(X, y)

    return step


def gemm_floor(backend, sizes, batch: int, seed: int = 0, dtype="float32"):
    """A closure running the matrix products of one step only, as the MLP lays them out."""
    xp = backend.xp
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return backend.asarray(rng.standard_normal(shape, dtype=np.float32).astype(dtype))

    pairs = list(zip(sizes[:-1], sizes[1:], strict=False))
    W = [rand(a, b) for a, b in pairs]
    dW = [xp.empty_like(w) for w in W]
    A = [backend.empty((batch, b), dtype) for _, b in pairs]
    G = [rand(batch, b) for _, b in pairs]
    k = n_rotations(batch * sizes[0] * 4, is_gpu(backend))
    rot = Rotation([rand(batch, sizes[0]) for _ in range(k)])
    mm = backend.matmul

    def floor():
        X = rot.next()
        prev = X
        for w, a in zip(W, A, strict=False):
            mm(prev, w, out=a)
            prev = a
        for i in range(len(W) - 1, -1, -1):
            mm((X if i == 0 else A[i - 1]).T, G[i], out=dW[i])
            if i > 0:
                mm(G[i], W[i].T, out=G[i - 1])

    return floor


# --- PyTorch ------------------------------------------------------------------------------------

def torch_device(backend):
    """PyTorch's device for the peer run: the same CUDA device, else the CPU."""
    return backend.device if is_gpu(backend) else "cpu"


def torch_clock(torch, device):
    return TorchEventClock(torch) if str(device).startswith("cuda") else HostClock()


def _torch_mlp(torch, sizes, device):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).to(device=device, dtype=torch.float32)


def torch_step(torch, sizes, batch: int, device="cpu", seed: int = 0, adam=None,
               compile_model: bool = False):
    """A closure running one PyTorch training step (same model, loss, Adam ``adam`` kwargs).

    ``compile_model``: the whole step (zero_grad, forward, loss, backward, Adam) goes through
    ``torch.compile`` (compiled on the first call; the caller warms it up).
    """
    torch.manual_seed(seed)
    model = _torch_mlp(torch, sizes, device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, **(adam or {}))
    crit = (torch.nn.CrossEntropyLoss() if sizes[-1] > 1 else torch.nn.BCEWithLogitsLoss())
    rng = np.random.default_rng(seed)
    k = n_rotations(batch * sizes[0] * 4, str(device).startswith("cuda"))
    batches = []
    for _ in range(k):
        X, y = _data(rng, sizes, batch)
        batches.append((torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)))
    rot = Rotation(batches)

    def train(X, y):
        opt.zero_grad(set_to_none=True)
        crit(model(X), y).backward()
        opt.step()

    if compile_model:
        train = torch.compile(train, dynamic=False)

    def step():
        train(*rot.next())

    return step


def torch_floor(torch, sizes, batch: int, device="cpu", seed: int = 0):
    """PyTorch's matrix products of one step alone (its own GEMM floor, for reference)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    pairs = list(zip(sizes[:-1], sizes[1:], strict=False))
    X = rand(batch, sizes[0])
    W = [rand(a, b) for a, b in pairs]
    dW = [torch.empty_like(w) for w in W]
    A = [torch.empty(batch, b, device=device) for _, b in pairs]
    G = [rand(batch, b) for _, b in pairs]

    def floor():
        prev = X
        for w, a in zip(W, A, strict=False):
            torch.matmul(prev, w, out=a)
            prev = a
        for i in range(len(W) - 1, -1, -1):
            torch.matmul((X if i == 0 else A[i - 1]).T, G[i], out=dW[i])
            if i > 0:
                torch.matmul(G[i], W[i].T, out=G[i - 1])

    return floor


# --- the suite ----------------------------------------------------------------------------------

def run(backend, configs, settings: Settings, torch=None, sklearn=None, sklearn_samples=None,
        epochs: int = 3, seed: int = 0, log=print, torch_compile: bool | str = True) -> list[dict]:
    """One row per config: devnet step, GEMM floor, PyTorch peers, scikit-learn epoch.

    ``torch_compile``: True to try ``torch.compile``, or a string: the reason it is skipped.
    """
    clock = clock_for(backend)
    gpu = is_gpu(backend)
    tdev = torch_device(backend)
    rows = []
    for cfg in configs:
        if cfg.gpu_only and not gpu:
            log(f"  step {cfg.name}: skipped (GPU only)")
            continue
        row = {"config": cfg.name, "sizes": list(cfg.sizes), "batch": cfg.batch,
               "loss": loss_name(cfg.sizes), "gflop": step_flops(cfg.sizes, cfg.batch) / 1e9,
               "repetitions": settings.repetitions}
        fns = {"devnet": (devnet_step(backend, cfg.sizes, cfg.batch, seed), clock),
               "floor": (gemm_floor(backend, cfg.sizes, cfg.batch, seed), clock)}
        if torch is not None:
            tclock = torch_clock(torch, tdev)
            for name, kw in TORCH_ADAM.items():
                fns[name] = (torch_step(torch, cfg.sizes, cfg.batch, tdev, seed, kw), tclock)
            fns["torch_floor"] = (torch_floor(torch, cfg.sizes, cfg.batch, tdev, seed), tclock)
        t = interleaved(fns, settings, settings.repetitions, settle_pools=True)
        dv = t["devnet"]
        row.update(devnet_s=dv.median, devnet_min_s=min(dv.medians),
                   devnet_max_s=max(dv.medians), samples_per_s=cfg.batch / dv.median,
                   floor_s=t["floor"].median, floor_gflops=row["gflop"] / t["floor"].median)
        put_ratio(row, "devnet_over_floor", ratio_stats(dv, t["floor"]))
        if torch is not None:
            configs_s = {name: t[name].median for name in TORCH_ADAM}
            best = min(configs_s, key=configs_s.get)
            row.update(torch_config=best, torch_configs_s=configs_s, torch_s=configs_s[best],
                       torch_samples_per_s=cfg.batch / configs_s[best],
                       torch_floor_s=t["torch_floor"].median)
            put_ratio(row, "devnet_over_torch", ratio_stats(dv, t[best]))
            row.update(torch_compile_step(torch, cfg, tdev, seed, settings, torch_compile, dv))
        if sklearn is not None and not gpu:
            n = sklearn_samples or max(1024, 32 * cfg.batch)
            row.update(epoch_compare(backend, cfg.sizes, cfg.batch, n, epochs, sklearn, seed))
        rows.append(row)
        log("  step " + _summary(row))
    return rows


def torch_compile_step(torch, cfg, tdev, seed, settings, enabled, devnet) -> dict:
    """``torch.compile`` of the whole step, measured after devnet; or why it was skipped."""
    if enabled is not True:
        return {"torch_compile_skipped": str(enabled or "disabled")}
    try:
        # the default Adam: under torch.compile it is the compiled (generated) optimizer
        step = torch_step(torch, cfg.sizes, cfg.batch, tdev, seed, compile_model=True)
        step()  # compiles (minutes on a small machine the first time)
    except Exception as exc:  # no compiler, unsupported platform, inductor error: say which
        return {"torch_compile_skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                if str(exc) else type(exc).__name__}
    t = interleaved({"compiled": (step, torch_clock(torch, tdev))}, settings,
                    settings.repetitions)
    return {"torch_compile_s": t["compiled"].median,
            "devnet_over_torch_compile": devnet.median / t["compiled"].median}


def epoch_compare(backend, sizes, batch, n_samples, epochs, sklearn, seed=0) -> dict:
    """devnet.fit epoch vs MLPClassifier epoch on the same random (X, y), in turn.

    ``epochs`` rounds after one warm-up round; each round runs one devnet epoch then one
    scikit-learn epoch, and the ratio is taken per round.
    """
    import time

    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(seed)
    X, y = _data(rng, sizes, n_samples)
    model = dn.MLP(list(sizes), backend=backend, seed=seed)
    opt = dn.optim.Adam(model.parameters(), lr=1e-4)
    clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu", solver="adam",
                        alpha=0.0, batch_size=batch, learning_rate_init=1e-4, shuffle=True,
                        random_state=seed)
    labels = y.ravel().astype(np.int64)
    classes = np.arange(max(2, sizes[-1]))
    dv, sk = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(epochs + 1):
            # train_metrics=False: the same work as scikit-learn's epoch (no extra pass over
            # the training data for accuracy); the non-finite guard stays on, as by default
            hist = dn.fit(model, X, y, loss=loss_name(sizes), optimizer=opt, epochs=1,
                          batch_size=batch, seed=seed, progress=False, train_metrics=False)
            dv.append(hist.history["time"][-1])
            t0 = time.perf_counter()
            clf.partial_fit(X, labels, classes=classes)
            sk.append(time.perf_counter() - t0)
    dv, sk = dv[1:], sk[1:]
    ratios = [a / b for a, b in zip(dv, sk, strict=True)]
    # The least an epoch could cost here: its matrix products alone (the GEMM floor of one
    # step, as the step suite measures it, times the steps); over scikit-learn's epoch, the
    # ratio devnet would reach with nothing but GEMMs -- a bound below it cannot be met.
    floor = gemm_floor(backend, sizes, batch, seed)
    floor()
    floor_s = []
    for _ in range(30):
        t0 = time.perf_counter()
        floor()
        floor_s.append(time.perf_counter() - t0)
    epoch_floor = -(-n_samples // batch) * float(np.median(floor_s))
    row = {"epoch_samples": n_samples, "devnet_epoch_s": float(np.median(dv)),
           "sklearn_epoch_s": float(np.median(sk)), "epoch_repetitions": len(ratios),
           "epoch_floor_s": epoch_floor,
           "floor_over_sklearn": epoch_floor / float(np.median(sk))}
    put_ratio(row, "devnet_over_sklearn", {"median": float(np.median(ratios)),
                                           "min": min(ratios), "max": max(ratios),
                                           "reps": ratios})
    return row


def sklearn_target(backend, sklearn, n_samples=60000, sizes=(784, 256, 256, 10), batch=128,
                   epochs: int = 3, seed: int = 0, log=print) -> dict:
    """The issue's row: 60000x784, hidden (256, 256), batch 128, Adam, per epoch."""
    row = {"config": "sklearn-target", "sizes": list(sizes), "batch": batch}
    row.update(epoch_compare(backend, sizes, batch, n_samples, epochs, sklearn, seed))
    log(f"  sklearn {n_samples}x{sizes[0]} {sizes[1:-1]} b{batch}: devnet "
        f"{row['devnet_epoch_s']:.3f} s/epoch, sklearn {row['sklearn_epoch_s']:.3f} s/epoch, "
        f"ratio {row['devnet_over_sklearn']:.3f}; its GEMMs alone {row['epoch_floor_s']:.3f} "
        f"s/epoch (floor/sklearn {row['floor_over_sklearn']:.3f})")
    return row


def _summary(row: dict) -> str:
    s = (f"{row['config']:<5} {'-'.join(map(str, row['sizes']))} b{row['batch']}: devnet "
         f"{_ms(row['devnet_s'])}, floor {_ms(row['floor_s'])} "
         f"(x{row['devnet_over_floor']:.2f})")
    if "torch_s" in row:
        s += (f", torch {row['torch_config']} {_ms(row['torch_s'])} (devnet/torch "
              f"{row['devnet_over_torch']:.3f} [{row['devnet_over_torch_min']:.3f}-"
              f"{row['devnet_over_torch_max']:.3f}])")
    if "torch_compile_s" in row:
        s += f", torch.compile {_ms(row['torch_compile_s'])}"
    if "sklearn_epoch_s" in row:
        s += f", epoch devnet/sklearn {row['devnet_over_sklearn']:.3f}"
    return s


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if math.isfinite(s) else "-"


def optional_peers(no_torch: bool, no_sklearn: bool, threads: int):
    """(torch, sklearn) modules or None; PyTorch set to ``threads`` intra-op threads."""
    torch = None if no_torch else optional("torch")
    if torch is not None:
        # the caller restores the previous count (PEER_THREADS_BEFORE) when done: a global
        torch.PEER_THREADS_BEFORE = torch.get_num_threads()
        torch.set_num_threads(threads)
    sklearn = None if no_sklearn else optional("sklearn")
    return torch, sklearn
