"""devnet.train's Step, feeds and guard replay, and the package's import graph."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import devnet as dn
from devnet.errors import ConfigError, DivergenceError
from devnet.train import Step, StepHook
from devnet.train.feed import DeviceFeed, HostFeed, free_device_memory, make_feed
from devnet.train.guard import diagnose_step

ROOT = Path(__file__).resolve().parents[2]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}


def _model_and_data(rng, backend, dtype=np.float32, n=24, sizes=(5, 7, 3)):
    model = dn.MLP(list(sizes), backend=backend, dtype=np.dtype(dtype).name,
                   seed=int(rng.integers(1 << 30)))
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], n).astype(np.int64)
    return model, X, y


def _params(model):
    return model.backend.to_numpy(model.params).copy()


# --- Step -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_is_the_hand_written_sequence(rng, backend, dtype):
    model, X, y = _model_and_data(rng, backend, dtype)
    twin = dn.MLP(model.layer_sizes, backend=backend, dtype=model.dtype.name, seed=None)
    twin.params[...] = model.params
    loss = dn.losses.get("cross_entropy")
    step = Step(model, loss, dn.optim.Adam(model.parameters(), lr=1e-2))
    opt = dn.optim.Adam(twin.parameters(), lr=1e-2)
    grad = backend.empty((len(X), 3), twin.dtype)
    xd, yd = backend.asarray(X), backend.asarray(y)
    values = []
    for i in range(3):
        step(xd, yd, index=i)
        values.append(float(loss.forward_backward_(twin.forward(xd, training=True, step=i),
                                                    yd, grad)))
        twin.backward(grad, input_grad=False)
        opt.step()
    np.testing.assert_allclose(_params(model), _params(twin), **TOL[dtype])
    # the running loss: the three values summed on the device, read once here
    np.testing.assert_allclose(float(step.running), sum(values), **TOL[dtype])


def test_running_loss_weighs_each_step_and_resets(rng, backend):
    model, X, y = _model_and_data(rng, backend)
    class Still:  # an optimizer that leaves the parameters: every step has the same value
        def step(self):
            pass

    step = Step(model, dn.losses.get("cross_entropy"), Still())
    xd, yd = backend.asarray(X), backend.asarray(y)
    value = float(step(xd, yd))
    step(xd, yd, weight=0.25)
    step(xd, yd, weight=0.0)
    np.testing.assert_allclose(float(step.running), 1.25 * value, rtol=1e-6)
    step.reset()
    assert float(step.running) == 0.0


def test_loss_and_grad_leaves_the_parameters_alone(rng, backend):
    model, X, y = _model_and_data(rng, backend)
    step = Step(model, dn.losses.get("cross_entropy"))
    before = _params(model)
    value = step.loss_and_grad(backend.asarray(X), backend.asarray(y))
    assert np.isfinite(float(value))
    np.testing.assert_array_equal(_params(model), before)
    assert np.abs(backend.to_numpy(model.grads)).sum() > 0


def test_step_without_optimizer_refuses_to_update(rng, backend):
    model, X, y = _model_and_data(rng, backend)
    step = Step(model, dn.losses.get("cross_entropy"))
    with pytest.raises(ConfigError, match="without an optimizer.*loss_and_grad"):
        step(backend.asarray(X), backend.asarray(y))


def test_step_refuses_a_hook_without_the_hook_methods(rng, backend):
    model, _, _ = _model_and_data(rng, backend)
    with pytest.raises(ConfigError, match="output_grad_ and param_grad_.*StepHook"):
        Step(model, dn.losses.get("mse"), hooks=[object()])


class _Recorder(StepHook):
    """Scales dL/dpred by ``factor`` and records the order and the gradient it sees."""

    def __init__(self, model, factor=1.0, collective=False):
        self.model, self.factor, self.collective, self.calls = model, factor, collective, []

    def output_grad_(self, grad, value, batch):
        self.calls.append("output")
        grad *= self.factor
        return value * self.factor

    def param_grad_(self, value, batch):
        self.calls.append("param")
        self.grads = self.model.backend.to_numpy(self.model.grads).copy()
        return value + 1.0


def test_hooks_run_around_backward_in_order_and_shape_value_and_gradient(rng, backend):
    model, X, y = _model_and_data(rng, backend, np.float64)
    loss = dn.losses.get("cross_entropy")
    xd, yd = backend.asarray(X), backend.asarray(y)
    plain = Step(model, loss)
    v0 = float(plain.loss_and_grad(xd, yd))
    g0 = backend.to_numpy(model.grads).copy()
    factor = float(rng.uniform(1.5, 3.0))
    hook = _Recorder(model, factor)
    v1 = float(Step(model, loss, hooks=[hook]).loss_and_grad(xd, yd))
    assert hook.calls == ["output", "param"]
    np.testing.assert_allclose(v1, factor * v0 + 1.0, rtol=1e-12)
    # backprop is linear in dL/dpred: the hook's scaling reaches every parameter gradient
    np.testing.assert_allclose(hook.grads, factor * g0, rtol=1e-12, atol=1e-15)


def test_guard_replay_leaves_collective_hooks_out(rng, backend):
    """A single process replaying a step must not enter an all-reduce the other ranks skip."""
    model, X, y = _model_and_data(rng, backend)
    local, collective = _Recorder(model), _Recorder(model, collective=True)
    step = Step(model, dn.losses.get("cross_entropy"), dn.optim.SGD(model.parameters(), lr=0.1),
                hooks=[local, collective])
    from devnet.train.step import Batch

    batch = Batch(backend.asarray(X), backend.asarray(y), None, np.arange(len(X)))
    assert diagnose_step(step, batch) is None
    assert local.calls == ["output", "param"] and collective.calls == []


def test_guard_replays_the_shuffled_batch_through_the_step(rng, backend):
    """The replay gathers the same shuffled batch again and runs it through the same Step."""
    model, X, y = _model_and_data(rng, backend, n=40)
    opt = dn.optim.SGD(model, lr=1e30)
    with pytest.raises(DivergenceError) as info:
        dn.fit(model, X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=8,
               progress=False, guard_every=1)
    err = info.value
    assert err.layer is not None, str(err)  # the replay reproduced the failure and named it
    assert np.isfinite(_params(model)).all()  # rewound to the last finite state


# --- feeds ------------------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shuffled", [False, True])
def test_host_and_device_feeds_give_the_same_batches(rng, backend, weighted, shuffled):
    n = int(rng.integers(20, 40))
    X = rng.standard_normal((n, 4)).astype(np.float32)
    y = rng.integers(0, 3, n).astype(np.int64)
    w = rng.uniform(0.1, 2.0, n).astype(np.float32) if weighted else None
    feeds = [make_feed(backend, X, y, w, capacity=8, kind=kind) for kind in ("host", "device")]
    assert isinstance(feeds[0], HostFeed) and isinstance(feeds[1], DeviceFeed)
    order = rng.permutation(n) if shuffled else None
    rows = np.arange(n) if order is None else order
    for feed in feeds:
        feed.start_epoch(order)
        for lo in range(0, n, 8):
            hi = min(lo + 8, n)
            xb, yb, wb, idx, row0 = feed.batch(lo, hi)
            assert row0 == 0
            np.testing.assert_array_equal(idx, rows[lo:hi])
            np.testing.assert_array_equal(backend.to_numpy(xb), X[rows[lo:hi]])
            np.testing.assert_array_equal(backend.to_numpy(yb), y[rows[lo:hi]])
            if weighted:
                np.testing.assert_array_equal(backend.to_numpy(wb), w[rows[lo:hi]])
            else:
                assert wb is None


def test_feed_choice_follows_free_device_memory(rng):
    cpu = dn.get_backend("cpu")
    X = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.integers(0, 2, 64).astype(np.int64)
    assert free_device_memory(cpu) is None  # the host: no copy, data used in place
    assert isinstance(make_feed(cpu, X, y), DeviceFeed)

    class Small(type(cpu)):
        def __init__(self, free):
            super().__init__()
            self.free = free

        def free_memory(self):
            return self.free

    need = X.nbytes + y.nbytes
    assert isinstance(make_feed(Small(4 * need), X, y), DeviceFeed)
    assert isinstance(make_feed(Small(4 * need - 1), X, y), HostFeed)


@pytest.mark.parametrize("kind", ["host", "device"])
def test_feed_refuses_an_order_the_unchecked_gather_would_clamp(rng, kind):
    """The gathers skip per-index bounds checks (``mode="clip"``): an order outside [0, n)
    must be refused once per epoch, never silently clamped to the last row."""
    X = rng.standard_normal((10, 3)).astype(np.float32)
    feed = make_feed(dn.get_backend("cpu"), X, rng.integers(0, 2, 10), capacity=4, kind=kind)
    for bad, match in ((np.array([0, 10, 2]), r"outside \[0, 10\): 0..10"),
                       (np.array([-1, 3]), r"outside \[0, 10\): -1..3"),
                       (np.array([0.0, 1.0]), "1-D integer"), (np.zeros((2, 2), int), "1-D")):
        with pytest.raises(ConfigError, match=match):
            feed.start_epoch(bad)
    order = rng.permutation(10)
    feed.start_epoch(order)
    np.testing.assert_array_equal(feed.batch(2, 6).x, X[order[2:6]])


def test_unknown_feed_kind_lists_the_valid_ones(rng):
    X = rng.standard_normal((4, 2))
    with pytest.raises(ConfigError, match="unknown feed 'disk'; valid feeds: auto, device, host"):
        make_feed(dn.get_backend("cpu"), X, np.zeros(4), kind="disk")


def test_fit_is_the_same_whichever_feed(rng, backend, monkeypatch):
    model, X, y = _model_and_data(rng, backend, n=30)
    start = model.params.copy()
    results = []
    for kind in ("host", "device"):
        model.params[...] = start
        monkeypatch.setattr("devnet.train.loop.make_feed",
                            lambda *a, kind=kind, **k: make_feed(*a, **k, kind=kind))
        hist = dn.fit(model, X, y, loss="cross_entropy", epochs=2, batch_size=8,
                      progress=False, seed=3)
        results.append((hist["loss"], _params(model)))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


# --- one path down, and the import graph -----------------------------------------------------

def test_one_training_call_site_of_backward_outside_nn():
    """The forward/loss/backward/step sequence is written once: in devnet.train.Step."""
    sites = []
    for path in [*sorted((ROOT / "devnet").rglob("*.py")), ROOT / "benchmarks" / "bench_step.py"]:
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("devnet", "nn"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "backward"):
                continue
            owner = node.func.value  # model.backward(...) or self.model.backward(...)
            name = getattr(owner, "id", None) or getattr(owner, "attr", None)
            if name == "model":
                sites.append(f"{rel.as_posix()}:{node.lineno}")
    assert len(sites) == 1 and sites[0].startswith("devnet/train/step.py:"), sites


def _module_names() -> dict[str, Path]:
    mods = {}
    for base, prefix in ((ROOT / "devnet", ["devnet"]), (ROOT / "kernels", ["devnet", "kernels"])):
        for path in base.rglob("*.py"):
            parts = prefix + list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _import_graph() -> dict[str, set[str]]:
    """module -> the devnet modules it imports, anywhere in it (function bodies included)."""
    mods = _module_names()
    edges = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges[mod] |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in mods:
                        edges[mod].add(full)
                    elif base in mods:
                        edges[mod].add(base)
        edges[mod].discard(mod)
    return edges


# Known edges outside this task's files that close a cycle; each names its fix.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycle_between_train_callbacks_and_io():
    edges = _import_graph()
    assert "devnet.train.step" in edges and "devnet.train" in edges
    for src, dst in KNOWN_CYCLE_EDGES:
        edges[src].discard(dst)
    assert _cycles(edges) == []
    # History/Callback come from a module that imports nothing else of the train package
    assert edges["devnet.train.history"] <= {"devnet.train.plot"}
    assert "devnet.train" not in edges["devnet.callbacks"] | edges["devnet.io"]


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


TRAIN_CLUSTER = ["devnet.train", "devnet.train.history", "devnet.train.plot",
                 "devnet.train.step", "devnet.train.feed", "devnet.train.guard",
                 "devnet.train.setup", "devnet.train.loop", "devnet.callbacks", "devnet.io",
                 "devnet.distributed", "devnet.sklearn", "devnet.profile"]


@pytest.mark.parametrize("module", TRAIN_CLUSTER)
def test_module_imports_first_in_a_fresh_interpreter(module):
    """Each module of the former cycle imports on its own, before anything else of devnet."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
