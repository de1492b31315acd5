"""The training step as a CUDA graph (``devnet.train.graph``), proven without a GPU.

The CuPy stand-in captures streams: it records each kernel launch, GEMM and CuPy operation with
its arguments and replays them, and refuses what a capture cannot hold. The tests marked
``cudasim`` run the real CUDA backend over it (``DEVNET_CUDA_SIMULATOR=1``, a pytest process of
its own); the others (the stand-in's capture rules, the cuBLAS signatures against the installed
``cupy``, eligibility on the CPU) run in the ordinary process:

    DEVNET_CUDA_SIMULATOR=1 python -m pytest -q -m "cudasim and not kernelsim" \
        tests/devices/test_cuda_graph.py
    python -m pytest -q -m "not cudasim" tests/devices/test_cuda_graph.py
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re

import numpy as np
import pytest

import devnet as dn
from devnet.errors import ConfigError
from devnet.testing import cupy_graph
from devnet.testing import cupy_sim as cp
from devnet.train.graph import GraphStep, graph_eligible
from devnet.train.step import Step, StepHook

SIM = os.environ.get("DEVNET_CUDA_SIMULATOR") == "1"
cudasim = pytest.mark.cudasim
needs_sim = pytest.mark.skipif(not SIM, reason="needs DEVNET_CUDA_SIMULATOR=1 set before devnet "
                               "is imported (run: DEVNET_CUDA_SIMULATOR=1 python -m pytest -m "
                               "'cudasim and not kernelsim' tests/devices/test_cuda_graph.py)")

# the low-level calls the backend's GEMM makes, as cupy_backends declares them
CUBLAS_CALLS = ("create", "destroy", "setStream", "getStream", "setPointerMode",
                "getPointerMode", "sgemm", "dgemm")


# --- the stand-in's capture rules (ordinary process) ----------------------------------------

@pytest.fixture
def capturing(rng):
    """(stream, device array) with the stream capturing; the capture is ended afterwards."""
    a = cp.asarray(rng.standard_normal(4))
    cp.cuda.Stream.null.synchronize()
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        try:
            yield s, a
        finally:
            if s.is_capturing():
                s.end_capture()


REFUSED = {
    "cupy.empty": lambda a: cp.empty(3),
    "a + 1 (a new array)": lambda a: a + 1,
    "a.copy()": lambda a: a.copy(),
    "float(a[0])": lambda a: float(a[:1]),
    "a.get()": lambda a: a.get(),
    "a.set(host)": lambda a: a.set(np.zeros(4)),
    "Stream.synchronize": lambda a: cp.cuda.get_current_stream().synchronize(),
    "Device.synchronize": lambda a: cp.cuda.Device().synchronize(),
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_capture_refuses_allocations_and_host_syncs(capturing, what):
    _, a = capturing
    with pytest.raises(cupy_graph.CaptureError):
        REFUSED[what](a)


def test_capture_refuses_cupys_own_cublas_calls(rng):
    m = cp.asarray(rng.standard_normal((3, 3)))
    out = cp.empty((3, 3))
    cp.cuda.Stream.null.synchronize()
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        try:
            with pytest.raises(cupy_graph.CaptureError, match="cuBLAS"):
                cp.matmul(m, m, out=out)
        finally:
            s.end_capture()


def test_capture_records_and_launch_replays(capturing, rng):
    s, a = capturing
    before = a._buf.copy()
    a += 2.0
    cp.multiply(a, a, out=a)
    np.testing.assert_array_equal(a._buf, before)  # recorded, not run
    graph = s.end_capture()
    assert [op.name for op in graph.ops] == ["__iadd__", "multiply"]
    for _ in range(2):
        graph.launch(s)
        before = (before + 2.0) ** 2
    np.testing.assert_array_equal(a._buf, before)


def test_capture_needs_a_non_blocking_stream():
    for stream in (cp.cuda.Stream.null, cp.cuda.Stream()):
        with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="non-blocking"):
            stream.begin_capture()


def test_cublas_set_stream_is_refused_during_capture():
    lib = cupy_graph.cublas
    handle = lib.create()
    s = cp.cuda.Stream(non_blocking=True)
    lib.setStream(handle, s.ptr)  # before the capture: what the backend does
    with s:
        s.begin_capture()
        try:
            with pytest.raises(cupy_graph.CaptureError, match="before begin_capture"):
                lib.setStream(handle, s.ptr)
            with pytest.raises(cupy_graph.CaptureError, match="allocation"):
                lib.create()
        finally:
            s.end_capture()
    lib.destroy(handle)


def test_standin_gemm_refuses_an_operand_outside_its_allocation(rng):
    lib = cupy_graph.cublas
    handle = lib.create()
    a = cp.asarray(rng.standard_normal((3, 3)).astype(np.float32))
    one = cp.asarray(np.array([1, 0], np.float32))
    lib.setPointerMode(handle, lib.CUBLAS_POINTER_MODE_DEVICE)
    cp.cuda.Stream.null.synchronize()
    with pytest.raises(ValueError, match="no live device allocation"):  # a 4x3 read of 3x3
        lib.sgemm(handle, 0, 0, 4, 3, 3, one.data.ptr, a.data.ptr, 4, a.data.ptr, 3,
                  one.data.ptr + 4, a.data.ptr, 3)
    lib.destroy(handle)


# --- the real CuPy's API (ordinary process; the cupy package imports without a GPU) ---------

def _installed_cublas_signatures() -> dict:
    """name -> parameter names of cupy_backends' cuBLAS calls: from the module when it loads,
    else from the signatures Cython embeds in the extension (libcublas may be absent)."""
    spec = importlib.util.find_spec("cupy_backends.cuda.libs.cublas")
    if spec is None or spec.origin is None:
        pytest.skip("the cupy package (cupy_backends) is not installed")
    text = open(spec.origin, "rb").read().decode("latin-1")
    found = {}
    for name in CUBLAS_CALLS:
        match = re.search(rf"\b{name}\(([^()]*)\)", text)
        assert match, f"cupy_backends' cublas has no {name}(...): the backend's GEMM calls it"
        found[name] = [p.split()[-1].split("=")[0] for p in match.group(1).split(",") if p]
    return found


def test_low_level_cublas_signatures_match_the_installed_cupy():
    """The stand-in's cuBLAS (which the simulator tests run the backend's GEMM on) takes
    exactly the installed cupy_backends' parameters, so the backend calls the real ones
    right."""
    pytest.importorskip("cupy", reason="the check needs the cupy package (it imports without "
                                       "a GPU)")
    theirs = _installed_cublas_signatures()
    for name, params in theirs.items():
        ours = list(inspect.signature(getattr(cupy_graph.cublas, name)).parameters)
        assert ours == params, f"cublas.{name}: stand-in {ours}, installed cupy {params}"
    assert theirs["sgemm"] == ["handle", "transa", "transb", "m", "n", "k", "alpha", "A",
                               "lda", "B", "ldb", "beta", "C", "ldc"]


def test_capture_api_matches_the_installed_cupy():
    cupy = pytest.importorskip("cupy", reason="the check needs the cupy package")
    for cls, members in ((cupy.cuda.Stream, ("begin_capture", "end_capture", "is_capturing")),
                         (cupy.cuda.Graph, ("launch", "upload"))):
        ours_cls = getattr(cp.cuda, cls.__name__)
        for member in members:
            doc = getattr(cls, member).__doc__.splitlines()[0]
            theirs = re.search(r"\((.*)\)", doc).group(1)
            ours = ", ".join(["self", *(str(p) for p in inspect.signature(
                getattr(ours_cls, member)).parameters.values() if p.name != "self")])
            assert ours == theirs, f"{cls.__name__}.{member}: ({ours}) vs ({theirs})"


def test_cpu_step_is_not_eligible(rng):
    model = dn.MLP([3, 4, 2], backend="cpu", seed=0)
    step = Step(model, "mse", dn.optim.SGD(model.parameters(), lr=0.1))
    ok, why = graph_eligible(step)
    assert not ok and "cpu" in why and "no CUDA graphs" in why
    with pytest.raises(ConfigError, match="cannot run as a CUDA graph: the cpu"):
        GraphStep(step, 4)


def test_fit_engine_graph_on_the_cpu_names_the_reason_and_auto_never_picks_it(rng):
    X = rng.normal(size=(24, 3)).astype(np.float32)
    y = rng.normal(size=(24, 2)).astype(np.float32)
    with pytest.raises(ConfigError, match="engine='graph' cannot run this fit: the cpu "
                                          "backend has no CUDA graphs"):
        dn.fit(dn.MLP([3, 4, 2], backend="cpu"), X, y, loss="mse", engine="graph",
               progress=False)
    hist = dn.fit(dn.MLP([3, 4, 2], backend="cpu"), X, y, loss="mse", progress=False)
    assert hist.params["engine"] == "compiled"


# --- the CUDA backend over the simulator ----------------------------------------------------

def _canonical(ops):
    """``ops`` with each loss-value slot named by its order of appearance: a loss writes the
    next slot of its ring on every eager call, by design (the values stay readable); in a
    graph it is one slot, written and read within the step. Every other argument is kept."""
    from devnet.kernels.cuda import launch

    slots: dict[int, int] = {}

    def norm(v):
        if isinstance(v, tuple) and len(v) == 5 and v[0] == "array" and \
                launch.in_loss_ring(v[1]):
            return ("loss slot", slots.setdefault(v[1], len(slots)), *v[2:])
        return tuple(norm(x) for x in v) if isinstance(v, tuple) else v

    return [(op.kind, op.name, norm(op.args)) for op in ops]


def _difference(eager, captured):
    """None when an eager step launched what the graph replays, else the first difference."""
    a, b = _canonical(eager), _canonical(captured)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"operation {i} ({x[1]}): eager {x[2]} vs captured {y[2]}"
    return None if len(a) == len(b) else f"{len(a)} operations eager, {len(b)} captured"


def _eager_traced(gstep, x, y, index):
    """One eager step of gstep's Step on its fixed buffers and stream, with its operations."""
    be = gstep.backend
    with be.scope():
        gstep.x[...] = be.asarray(x)
        gstep.y[...] = be.asarray(y)
        ready = be.stream.record()
    gstep.stream.wait_event(ready)
    with be.on_stream(gstep.stream), cupy_graph.trace(gstep.stream) as ops:
        gstep.step(gstep.x, gstep.y, index=index)
    be.stream.wait_event(gstep.stream.record())
    return ops


def _host(model):
    return [model.backend.to_numpy(p.data).copy() for p in model.parameters()]


@cudasim
@needs_sim
def test_replayed_steps_match_eager_steps_and_launch_the_same_arguments(rng, monkeypatch):
    """100 steps as a graph (a warm-up, a capture, replays) against 100 eager steps: identical
    parameters, optimizer state and running loss. Fresh batches each step, a learning rate that
    changes every step (its table refilled from the host every 16 steps), clipping switched on
    mid-run (a new capture), and a short last batch (run eagerly). Then eager steps of the same
    Step on the graph's buffers must launch exactly the arguments the graph replays."""
    from devnet.optim import optimizers

    monkeypatch.setattr(optimizers, "TABLE_ROWS", 16)
    n, sizes = 6, [4, 5, 3]
    models = [dn.MLP(sizes, activation="tanh", backend="cuda", seed=7) for _ in range(2)]
    sched = dn.optim.schedules.warmup_cosine(0.05, warmup_steps=10, total_steps=100)
    opts = [dn.optim.Adam(m.parameters(), lr=sched) for m in models]
    eager, graphed = (Step(m, "cross_entropy", o) for m, o in zip(models, opts))
    gstep = GraphStep(graphed, n)
    be = models[0].backend
    engines = []
    for i in range(100):
        rows = 4 if i == 99 else n
        x = be.asarray(rng.standard_normal((rows, 4)).astype(np.float32))
        y = be.asarray(rng.integers(0, 3, rows))
        if i == 50:
            for opt in opts:
                opt.clip_norm = 0.5
        weight = rows / n
        eager(x, y, index=i, weight=weight)
        gstep(x, y, index=i, weight=weight)
        engines.append(gstep.engine)
    assert engines[:3] == ["eager", "capture", "graph"] and engines[50:53] == \
        ["eager", "capture", "graph"] and engines[99] == "eager"
    assert engines.count("graph") == 95
    for a, b in zip(_host(models[0]), _host(models[1])):
        np.testing.assert_array_equal(a, b)
    for name in opts[0].state:
        np.testing.assert_array_equal(be.to_numpy(opts[0].state[name]),
                                      be.to_numpy(opts[1].state[name]))
    assert opts[0].t == opts[1].t == 100
    assert float(eager.running) == float(graphed.running)

    for k in range(100, 103):  # the eager steps after many replays and two table refills
        x = rng.standard_normal((n, 4)).astype(np.float32)
        ops = _eager_traced(gstep, x, rng.integers(0, 3, n), k)
        assert _difference(ops, gstep.graph.ops) is None, _difference(ops, gstep.graph.ops)
    with cupy_graph.trace(gstep.stream) as replayed:
        gstep(be.asarray(x), be.asarray(rng.integers(0, 3, n)), index=103)
    assert replayed == list(gstep.graph.ops)
    kinds = {op.kind for op in gstep.graph.ops}
    assert kinds == {"kernel", "cublas", "cupy"}  # launches, GEMMs, the running-loss add


@cudasim
@needs_sim
def test_a_per_step_kernel_argument_fails_the_comparison(rng, monkeypatch):
    """Dropout passes its mask key (from the step count) by value: captured anyway (the
    eligibility check bypassed), an eager step's arguments differ from the graph's, and the
    comparison above says where."""
    from devnet.train import graph as graph_module

    monkeypatch.setattr(graph_module, "graph_eligible", lambda step: (True, "forced"))
    model = dn.MLP([4, 5, 3], activation="relu", dropout=0.5, backend="cuda", seed=1)
    step = Step(model, "cross_entropy", dn.optim.SGD(model.parameters(), lr=0.1))
    gstep = GraphStep(step, 4)
    be = model.backend
    for i in range(2):
        gstep(be.asarray(rng.standard_normal((4, 4)).astype(np.float32)),
              be.asarray(rng.integers(0, 3, 4)), index=i)
    assert gstep.engine == "capture"
    ops = _eager_traced(gstep, rng.standard_normal((4, 4)).astype(np.float32),
                        rng.integers(0, 3, 4), 7)
    assert "drop" in (_difference(ops, gstep.graph.ops) or "")


@cudasim
@needs_sim
def test_eligibility_reasons(rng):
    def step_of(model, **kw):
        return Step(model, "mse", dn.optim.SGD(model.parameters(), lr=0.1), **kw)

    class Recording(Step):  # host code in a stage: it would run once, at the capture
        def output_grad(self, *args, **kwargs):
            return super().output_grad(*args, **kwargs)

    plain = dn.MLP([3, 4, 2], backend="cuda", seed=0)
    assert graph_eligible(step_of(plain)) == (True, "captured once per batch size, replayed "
                                                    "per step")
    cases = {
        "dropout": (step_of(dn.MLP([3, 4, 2], dropout=0.2, backend="cuda", seed=0)), False),
        "sample weights": (step_of(plain), True),
        "Step hooks": (step_of(plain, hooks=[StepHook()]), False),
        "no optimizer": (Step(plain, "mse"), False),
        "overrides output_grad": (Recording(plain, "mse", dn.optim.SGD(plain.parameters())),
                                  False),
        "reference kernels": (step_of(dn.MLP([3, 4, 2], seed=0, backend=dn.get_backend(
            "cuda", kernels="reference"))), False),
    }
    for what, (step, weighted) in cases.items():
        ok, why = graph_eligible(step, weighted=weighted)
        assert not ok and what.split()[0].lower() in why.lower(), (what, why)
    # inference-mode steps never drop: eligible with dropout
    assert graph_eligible(step_of(dn.MLP([3, 4, 2], dropout=0.2, backend="cuda", seed=0),
                                  training=False))[0]


@cudasim
@needs_sim
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backend_gemm_matches_numpy_for_every_layout(rng, dtype):
    """backend.matmul runs sgemm / dgemm through the transpose trick for C- and F-ordered
    operands (the passes' A @ W, A.T @ dZ, dZ @ W.T) and records a cuBLAS call each."""
    be = dn.get_backend("cuda")
    a, b = rng.standard_normal((5, 3)).astype(dtype), rng.standard_normal((3, 4)).astype(dtype)
    for fa in (False, True):
        for fb in (False, True):
            da = be.asarray(a.T.copy()).T if fa else be.asarray(a)
            db = be.asarray(b.T.copy()).T if fb else be.asarray(b)
            out = be.empty((5, 4), dtype)
            with cupy_graph.trace(be.stream) as ops:
                be.matmul(da, db, out=out)
            assert [op.name for op in ops] == ["sgemm" if dtype == np.float32 else "dgemm"]
            np.testing.assert_allclose(be.to_numpy(out), a @ b, rtol=1e-5 if dtype ==
                                       np.float32 else 1e-12)


@cudasim
@needs_sim
def test_capture_fails_clearly_with_cupys_own_matmul(rng, monkeypatch):
    """Without the backend's pre-bound GEMM the step's products go to cupy.matmul, which
    CuPy refuses inside a capture: the capture is a ConfigError saying so, and the stream is
    left out of capture mode."""
    model = dn.MLP([4, 5, 3], backend="cuda", seed=2)
    be = model.backend
    monkeypatch.setattr(be, "_gemm", None)
    gstep = GraphStep(Step(model, "cross_entropy", dn.optim.SGD(model.parameters(), lr=0.1)),
                      4)
    x = be.asarray(rng.standard_normal((4, 4)).astype(np.float32))
    y = be.asarray(rng.integers(0, 3, 4))
    gstep(x, y)  # the warm-up runs eagerly
    with pytest.raises(ConfigError, match="could not be captured.*cuBLAS"):
        gstep(x, y)
    assert not gstep.stream.is_capturing()


@cudasim
@needs_sim
@pytest.mark.parametrize("weighted", [False, True])
def test_fit_replays_its_step_as_a_graph_with_the_python_engines_results(rng, weighted):
    """fit on CUDA: "auto" picks the graph (captured at the second step, replayed after; the
    partial last batch eager), and ends where engine="python" ends, bit for bit; sample
    weights make it fall back to the Python step, saying why."""
    X = rng.normal(size=(22, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=22)
    sw = rng.uniform(0.5, 1.5, size=22) if weighted else None
    seed = int(rng.integers(1 << 30))
    out = {}
    for engine in ("python", "auto"):
        model = dn.MLP([3, 5, 2], backend="cuda", seed=seed)
        hist = dn.fit(model, X, y, loss="cross_entropy", epochs=2, batch_size=8, seed=seed,
                      engine=engine, sample_weight=sw, progress=False, train_metrics=False)
        out[engine] = (_host(model), hist)
    (p_py, h_py), (p_graph, h_graph) = out["python"], out["auto"]
    if weighted:
        assert h_graph.params["engine"] == "python"
        assert "sample weights" in h_graph.params["engine_reason"]
    else:
        assert h_graph.params["engine"] == "graph"
    assert all(np.array_equal(a, b) for a, b in zip(p_py, p_graph))
    assert h_py.history["loss"] == h_graph.history["loss"]

