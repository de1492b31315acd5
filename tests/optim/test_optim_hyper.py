"""Graph-ready optimizer steps: the per-step scalars live in a device array, so a captured
step reads the current ones; an optimizer's fields written after construction are checked.

The hyper path (``opt_advance`` + ``<step>_hyper``) must update bit for bit as the by-value
oracle (``_by_value_step`` below: scalars computed on the host each step) for every optimizer and
flag, both dtypes, with a schedule whose table is refilled mid-run, on the CPU kernels and the
reference kernels; writes to ``t`` / ``base_lr`` / ``schedule`` (resume, the guard, callbacks,
the estimators' adaptive rate) must keep the device copy right. The CUDA kernels are checked
on the simulator in ``test_kernels_cudasim.py`` and, through the whole simulated backend, in a
subprocess below.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from devnet.kernels import cpu, reference, table
from helpers.optional import from_devnet_sklearn

import devnet as dn
from devnet.errors import ConfigError, DataError
from devnet.optim import optimizers, schedules

STEPS = 11
ROWS = 4  # TABLE_ROWS in these tests: refills at steps 4 and 8

CONFIGS = {
    "sgd": (dn.optim.SGD, dict(weight_decay=0.01)),
    "momentum": (dn.optim.SGD, dict(momentum=0.9, weight_decay=0.01)),
    "nesterov": (dn.optim.SGD, dict(momentum=0.8, nesterov=True)),
    "rmsprop": (dn.optim.RMSProp, dict(weight_decay=0.01)),
    "rmsprop_centered": (dn.optim.RMSProp, dict(centered=True)),
    "rmsprop_momentum": (dn.optim.RMSProp, dict(momentum=0.9, eps=1e-6)),
    "rmsprop_centered_momentum": (dn.optim.RMSProp, dict(momentum=0.5, centered=True,
                                                         weight_decay=0.001)),
    "adam": (dn.optim.Adam, dict(weight_decay=0.01)),
    "adam_amsgrad": (dn.optim.Adam, dict(amsgrad=True, betas=(0.8, 0.99))),
    "adamw": (dn.optim.AdamW, dict()),
    "adamw_amsgrad": (dn.optim.AdamW, dict(amsgrad=True, weight_decay=0.1)),
    # by name: resolved in the test (_sklearn_optim), which skips without scikit-learn
    "sklearn_sgd": ("SklearnSGD", dict(momentum=0.9, nesterov=True)),
    "sklearn_adam": ("SklearnAdam", dict()),
}
BACKENDS = {"cpu": lambda: dn.get_backend("cpu"),
            "reference": lambda: dn.get_backend("cpu", kernels="reference")}


def _by_value_step(opt) -> None:
    """The oracle: one step with its scalars computed on the host (lr from the host schedule,
    the bias corrections in Python, the gradient clipped in place) and handed to the step
    kernel in a fresh hyper array, so the device-scalar path (the advance, its table, the clip
    scale) is checked against plain arithmetic."""
    lr = opt.lr
    if opt.clip_norm is not None:
        xp, g = opt.backend.xp, opt.params.grad
        norm = xp.sqrt(xp.dot(g, g))
        g *= xp.minimum(1.0, opt.clip_norm / (norm + 1e-6)).astype(g.dtype)
    opt.t += 1
    k, p, s, t = opt.backend.kernels, opt.params, opt.state, opt.t

    def by_value(arrays, flags=(), **scalars):
        hyper = opt.backend.asarray(np.array(table.hyper_values(opt.kernel, scalars)))
        getattr(k, f"{opt.kernel}_hyper")(p.data, p.grad, *arrays, hyper, *flags)

    if opt.kernel == "sgd_step":
        by_value((), lr=lr, wd=opt.weight_decay)
    elif opt.kernel in ("momentum_step", "nesterov_step"):
        by_value((s["momentum_buffer"],), lr=lr, mu=opt.momentum, wd=opt.weight_decay)
    elif opt.kernel == "rmsprop_step":
        by_value((s["square_avg"], s.get("momentum_buffer"), s.get("grad_avg")),
                 (opt.centered,), lr=lr, rho=opt.rho, mu=opt.momentum, eps=opt.eps,
                 wd=opt.weight_decay)
    else:
        b1, b2 = opt.betas
        bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
        if type(opt).__name__ == "SklearnAdam":
            lr, bc1, bc2 = opt._step_size(t), 1.0, 1.0
        by_value((s["exp_avg"], s["exp_avg_sq"], s.get("max_exp_avg_sq")), (opt.amsgrad,),
                 lr=lr, beta1=b1, beta2=b2, eps=opt.eps, wd=opt.weight_decay, bc1=bc1, bc2=bc2)


def _pair(config, backend, dtype, lr, rng):
    """Two identical (model, optimizer) pairs: one to step by hyper, one by value."""
    cls, kwargs = CONFIGS[config]
    cls = from_devnet_sklearn("_optim", cls) if isinstance(cls, str) else cls
    params = rng.standard_normal(dn.MLP([3, 5, 2]).n_params)
    out = []
    for _ in range(2):
        model = dn.MLP([3, 5, 2], dtype=dtype, backend=backend, seed=0)
        model.params[...] = model.backend.asarray(params.astype(dtype))
        out.append((model, cls(model.parameters(), lr=lr, **kwargs)))
    return out


def _assert_same(a, b, what):
    (ma, oa), (mb, ob) = a, b
    np.testing.assert_array_equal(ma.params, mb.params, err_msg=f"params differ {what}")
    for k in oa.state:
        np.testing.assert_array_equal(oa.state[k], ob.state[k], err_msg=f"{k} differs {what}")
    assert oa.t == ob.t


def _lr(kind):
    if kind == "constant":
        return 0.01
    return schedules.warmup_cosine(0.02, warmup_steps=3, total_steps=9, min_lr=0.001)


@pytest.fixture
def small_table(monkeypatch):
    monkeypatch.setattr(optimizers, "TABLE_ROWS", ROWS)


@pytest.mark.parametrize("lr", ("constant", "schedule"))
@pytest.mark.parametrize("dtype", ("float32", "float64"))
@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_hyper_step_is_bit_identical_to_the_by_value_step(config, backend, dtype, lr, rng,
                                                          small_table):
    if config == "sklearn_adam" and lr == "schedule":
        pytest.skip("the estimators' Adam folds its own step size into lr: no schedule")
    a, b = _pair(config, BACKENDS[backend](), dtype, _lr(lr), rng)
    for step in range(STEPS):
        _step_both(a, b, rng.standard_normal(a[0].n_params).astype(dtype), step)


def _step_both(a, b, g, step):
    """The same gradient ``g`` into both pairs; a's optimizer steps, b's by-value
    transcription; then both must agree bit for bit."""
    a[0].grads[...] = g
    b[0].grads[...] = g
    a[1].step()
    _by_value_step(b[1])
    _assert_same(a, b, f"after step {step + 1}")


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_writes_to_t_lr_and_schedule_resync_the_device(backend, rng, small_table):
    """load_state_dict (resume), the guard's restore (t, base_lr, schedule), a callback's
    constant rate and the estimators' set_learning_rate: the next steps stay exact."""
    a, b = _pair("adam_amsgrad", BACKENDS[backend](), "float32", _lr("schedule"), rng)
    saved = None

    def both(fn):
        fn(a[1])
        fn(b[1])

    for step in range(14):
        if step == 3:
            saved = a[1].state_dict()
        if step == 6:  # rewind t and the moments, as resume and the guard do
            both(lambda o, state=saved: o.load_state_dict(state))
        if step == 8:
            both(lambda o: setattr(o, "schedule", None))
            both(lambda o: setattr(o, "base_lr", 0.003))
        if step == 10:
            both(lambda o: setattr(o, "t", 2))
        if step == 12:
            both(lambda o: setattr(o, "schedule", schedules.cosine(0.01, 20)))
        _step_both(a, b, rng.standard_normal(a[0].n_params).astype(np.float32), step)


def test_sklearn_set_learning_rate_stays_exact(rng):
    a, b = _pair("sklearn_sgd", dn.get_backend("cpu"), "float64", 0.1, rng)
    for step in range(6):
        if step in (2, 4):
            a[1].set_learning_rate(a[1].base_lr / 5)
            b[1].set_learning_rate(b[1].base_lr / 5)
        _step_both(a, b, rng.standard_normal(a[0].n_params).astype(np.float64), step)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_device_scalars_follow_python_for_thousands_of_steps(backend, rng):
    """After each step, hyper holds t, the schedule's lr and 1 - b**t exactly as Python
    computes them (three table refills of the default size on the way)."""
    be = BACKENDS[backend]()
    model = dn.MLP([2, 1], dtype="float32", backend=be, seed=0)
    b1, b2 = rng.uniform(0.5, 0.95), rng.uniform(0.99, 0.9999)
    sched = schedules.cosine(1e-3, 2500, min_lr=1e-5)
    opt = dn.optim.Adam(model.parameters(), lr=sched, betas=(b1, b2))
    slot = {name: i for i, name in enumerate(table.hyper_layout("adam_step"))}
    model.grads[...] = rng.standard_normal(model.n_params).astype(np.float32) * 1e-3
    for t in range(1, 3001):
        opt.step()
        h = opt.hyper
        assert h[slot["t"]] == t and opt.t == t
        assert h[slot["lr"]] == sched(t - 1)
        assert h[slot["bc1"]] == 1.0 - b1**t and h[slot["bc2"]] == 1.0 - b2**t, t


def test_constant_rates_settle_into_a_one_row_table(rng, small_table):
    """A constant lr without bias corrections is a 1-row table, never refilled; Adam's is
    refilled only until 1 - b**t rounds to 1 (then exact for good)."""
    be = dn.get_backend("cpu")
    a, b = _pair("momentum", be, "float64", 0.05, rng)
    a[1].step()
    assert a[1]._table.shape == (1, 1) and a[1]._refill_at == float("inf")
    a, b = _pair("adam", be, "float64", 0.01, rng)
    a[1].betas = b[1].betas = (0.5, 0.6)  # 1 - 0.6**t is 1.0 from t = 73
    for _ in range(90):
        g = rng.standard_normal(a[0].n_params)
        a[0].grads[...] = g
        b[0].grads[...] = g
        a[1].step()
        _by_value_step(b[1])
    assert a[1]._refill_at == float("inf") and a[1]._table.shape == (ROWS, 3)
    _assert_same(a, b, "after 90 steps")


def test_step_passes_no_scalar_by_value(rng, monkeypatch):
    """The step kernel gets the same hyper array every step while the lr changes under it;
    the by-value entry is never called."""
    be = dn.get_backend("cpu")
    model = dn.MLP([3, 4, 2], dtype="float32", backend=be, seed=0)
    sched = schedules.warmup_cosine(0.01, warmup_steps=2, total_steps=8)
    opt = dn.optim.Adam(model.parameters(), lr=sched)
    seen, lrs = [], []
    # the step calls the unchecked table (its buffers are its own): the spies go there
    hyper_entry, advance = be.raw_kernels.adam_step_hyper, be.raw_kernels.opt_advance
    lr_slot = table.hyper_layout("adam_step").index("lr")

    def spy(p, g, m, v, vmax, hyper, amsgrad):
        seen.append((hyper, *(type(a) for a in (p, g, m, v))))
        lrs.append(float(hyper[lr_slot]))
        hyper_entry(p, g, m, v, vmax, hyper, amsgrad)

    def refuse(*args, **kwargs):
        raise AssertionError("the by-value adam_step was called")

    tables = []
    monkeypatch.setattr(be.raw_kernels, "adam_step_hyper", spy)
    monkeypatch.setattr(be.raw_kernels, "adam_step", refuse, raising=False)
    monkeypatch.setattr(be.raw_kernels, "opt_advance",
                        lambda h, t: (tables.append((h, t)), advance(h, t)))
    for _ in range(6):
        model.grads[...] = rng.standard_normal(model.n_params).astype(np.float32)
        opt.step()
    assert all(s[0] is opt.hyper and s[1:] == (np.ndarray,) * 4 for s in seen)
    assert all(h is opt.hyper and t is tables[0][1] for h, t in tables)
    assert lrs == [sched(t) for t in range(6)] and len(set(lrs)) > 3


# --- the kernel entries: hyper == by value, checks ---------------------------------------------

_VALUES = {"lr": 0.01, "wd": 0.01, "mu": 0.9, "rho": 0.9, "eps": 1e-8, "beta1": 0.9,
           "beta2": 0.999, "bc1": 1 - 0.9**3, "bc2": 1 - 0.999**3}


def _kernel_case(name, dtype, rng, n=29):
    row = table.STEPS[name]
    p, g = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    # sq first (> 1.5) keeps RMSProp's centred sq - gavg**2 positive
    bufs = [((rng.random(n) + 1.5) if i == 0 else 0.1 * rng.random(n)).astype(dtype)
            for i in range(len(row.buffers) - 1)]
    values = {k: v * rng.uniform(0.5, 1.0) for k, v in _VALUES.items()}
    hyper = np.array([values.get(k, table.HYPER_DEFAULTS.get(k, 0.0))
                      for k in table.hyper_layout(name)])
    return [p, g, *bufs], hyper, [values[s] for s in row.scalars]


@pytest.mark.parametrize("flag", (False, True))
@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("name", table.STEP_KERNELS)
@pytest.mark.parametrize("module", (reference,), ids=("reference",))
def test_hyper_entry_equals_by_value_entry(module, name, dtype, flag, rng):
    arrays, hyper, scalars = _kernel_case(name, dtype, rng)
    flags = [flag] * len(table.STEPS[name].flags)
    a, b = [x.copy() for x in arrays], [x.copy() for x in arrays]
    getattr(module, f"{name}_hyper")(*a, hyper, *flags)
    getattr(module, name)(*b, *scalars, *flags)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("module", (cpu, reference), ids=("cpu", "reference"))
def test_gated_buffer_left_none_turns_its_term_off(module, rng):
    """rmsprop_step_hyper without mom: no momentum whatever hyper's mu (the device value is
    not read to check it), never p updated twice."""
    (p, g, sq, _, gavg), hyper, _ = _kernel_case("rmsprop_step", np.float64, rng)
    assert hyper[table.hyper_layout("rmsprop_step").index("mu")] > 0
    p2, sq2 = p.copy(), sq.copy()
    module.rmsprop_step_hyper(p, g, sq, None, None, hyper, False)
    no_mu = hyper.copy()
    no_mu[table.hyper_layout("rmsprop_step").index("mu")] = 0.0
    module.rmsprop_step_hyper(p2, g, sq2, None, None, no_mu, False)
    np.testing.assert_array_equal(p, p2)
    np.testing.assert_array_equal(sq, sq2)


def test_advance_matches_the_reference_and_clamps(rng):
    tab = rng.standard_normal((5, 3))
    for t, t0 in ((0, 0), (3, 0), (4, 0), (40, 7), (2, 9), (5, np.nan), (7, -np.inf)):
        h1 = np.concatenate(([t, t0], rng.standard_normal(7)))
        h2 = h1.copy()
        cpu.opt_advance(h1, tab)
        reference.opt_advance(h2, tab)
        np.testing.assert_array_equal(h1, h2)
        ahead = t + 1 - t0
        row = int(min(ahead, 5)) - 1 if ahead >= 1 else 0
        assert h1[0] == t + 1
        first = table.HYPER_STEPWISE0
        np.testing.assert_array_equal(h1[first:first + 3], tab[row])


@pytest.mark.parametrize("module", (cpu,), ids=("cpu",))
def test_bad_hyper_and_table_are_data_errors(module, rng):
    (p, g, m, v, _), hyper, _ = _kernel_case("adam_step", np.float32, rng)
    size = len(table.hyper_layout("adam_step"))
    for bad, match in ((hyper.astype(np.float32), "float64"), (hyper[:-1], f"{size} elements"),
                       (None, "float64 array"), (hyper[::2], "C-contiguous"),
                       (hyper.reshape(size, 1), "1-D")):
        with pytest.raises(DataError, match=match):
            module.adam_step_hyper(p, g, m, v, None, bad, False)
    with pytest.raises(DataError, match="vmax"):
        module.adam_step_hyper(p, g, m, v, None, hyper, True)
    with pytest.raises(DataError, match="'g'"):
        module.adam_step_hyper(p, g[:-1], m, v, None, hyper, False)
    with pytest.raises(DataError, match="arguments: p, g, m, v, vmax, hyper, amsgrad"):
        module.adam_step_hyper(p, g, m, v, None, hyper, False, 0.1)
    module.adam_step_hyper(p, g, m, v, hyper=hyper, vmax=None, amsgrad=False)  # by keyword
    tab = np.zeros((4, 3))
    for h, t, match in ((hyper, np.zeros((0, 3)), "no rows"), (hyper[:4], tab, "fewer"),
                        (hyper.astype(np.float32), tab, "float64"),
                        (hyper, np.zeros(3), "2-D"), (hyper, tab.astype(np.float32), "float64")):
        with pytest.raises(DataError, match=match):
            module.opt_advance(h, t)
    frozen = hyper.copy()
    frozen.flags.writeable = False
    with pytest.raises(DataError, match="read-only"):
        module.opt_advance(frozen, tab)


def test_a_schedule_returning_garbage_is_a_config_error():
    model = dn.MLP([2, 1], backend="cpu", seed=0)
    opt = dn.optim.SGD(model.parameters(), lr=0.1)
    opt.base_lr = "fast"
    with pytest.raises(ConfigError, match="learning rate must be a number"):
        opt.step()


# --- the PTX of the hyper kernels (no GPU needed) ----------------------------------------------

def _ptx_ops(target):
    import re
    from collections import Counter

    from numba.cuda import compile_ptx

    _, fn, sig = target
    ptx = compile_ptx(fn, sig.args, cc=(8, 0))[0]
    instr = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z0-9]+)((?:\.[a-z0-9]+)*)\s", re.M)
    return Counter(op + suffix for op, suffix in instr.findall(ptx)
                   if re.search(r"\.f(32|64)\b", suffix))


def _kcuda():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("PTX compilation is not available under the CUDA simulator")
    try:
        from devnet.kernels import cuda as kcuda
        from numba.cuda import compile_ptx  # noqa: F401
    except Exception as exc:  # numba-cuda missing or broken
        pytest.skip(f"numba-cuda is not importable: {exc}")
    return kcuda


@pytest.mark.parametrize("index", range(2 * len(table.STEPS) + 1))
def test_hyper_kernels_compile_and_compute_as_the_by_value_ones(index):
    """Each hyper kernel compiles; a float32 one touches float64 only to load and convert its
    scalars (once per thread); its arithmetic (mul, fma, div, sqrt, add, max) is the by-value
    kernel's loop reading g times hyper's gscale, instruction for instruction count (only the
    loop-invariant ``1 - beta`` subs may be hoisted differently): no contraction differs, so
    no rounding does. That loop is the by-value kernel's plus multiplies (g * gscale) only."""
    kcuda = _kcuda()
    from helpers import ptx_targets as ptx

    target = ptx.PTX_HYPER_TARGETS[index]
    name = target[0]
    ops = _ptx_ops(target)
    if name.startswith(table.ADVANCE_KERNEL):
        assert name.endswith("[float64]")
        return
    if name.endswith("[float32]"):
        assert {op for op in ops if ".f64" in op} <= {"ld.global.f64", "cvt.rn.f32.f64"}, ops
    by_value = next(t for t in ptx.PTX_TARGETS if t[0] == name.replace("_hyper", ""))
    step, dtype = name[:-1].split("[")
    step = step.removesuffix("_hyper")
    from devnet.kernels.cuda import registry

    scaled = (name, registry.pyfunc(step, dtype, grad_in=kcuda.N[np.dtype(dtype)].scaled),
              by_value[2])
    math_ops = ("mul", "fma", "div", "sqrt", "add", "max", "min", "neg", "abs")

    def arithmetic(counter):
        return {op: n for op, n in counter.items() if op.split(".")[0] in math_ops}
    assert arithmetic(ops) == arithmetic(_ptx_ops(scaled))
    more, plain = arithmetic(_ptx_ops(scaled)), arithmetic(_ptx_ops(by_value))
    differ = {op for op in set(more) | set(plain) if more.get(op) != plain.get(op)}
    assert differ == {f"mul.f{dtype[-2:]}"} and more[f"mul.f{dtype[-2:]}"] > \
        plain.get(f"mul.f{dtype[-2:]}", 0), (more, plain)


# --- the whole simulated CUDA backend, in its own process --------------------------------------

def test_simulated_cuda_optimizer_step_is_graph_ready():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # the repository (benchmarks/) and tests/ (the helpers this file imports) on the path
    path = (root, os.path.join(root, "tests"), os.environ.get("PYTHONPATH"))
    env = dict(os.environ, DEVNET_CUDA_SIMULATOR="1",
               PYTHONPATH=os.pathsep.join(filter(None, path)))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    out = subprocess.run([sys.executable, __file__, "cuda"], env=env, capture_output=True,
                         text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "graph-ready" in out.stdout


def _run_cuda():
    """Under DEVNET_CUDA_SIMULATOR=1: an Adam step with a warm-up schedule on the simulated
    CUDA backend allocates nothing, launches the advance and the hyper step with the same
    arrays every step (no scalar among the arguments), and matches the by-value kernels."""
    from benchmarks.bench_launch import count_allocations, count_launches

    gpu = dn.get_backend("cuda")
    assert gpu.simulated
    optimizers.TABLE_ROWS = 3
    rng = np.random.default_rng(0)
    sched = schedules.warmup_cosine(0.01, warmup_steps=2, total_steps=9)
    a, b = _pair("adam_amsgrad", gpu, "float32", sched, rng)
    launched = []
    for step in range(7):
        g = gpu.asarray(rng.standard_normal(a[0].n_params).astype(np.float32))
        a[0].grads[...] = g
        b[0].grads[...] = g
        with count_launches() as launches, count_allocations(gpu) as allocs:
            a[1].step()
        if step > 0:  # refills (steps 3, 6) go through the backend's pinned staging buffers
            assert allocs["n"] == 0, (step, allocs)
        assert dict(launches) == {"opt_advance": 1, "adam_step_hyper": 1}, launches
        launched.append(launches)
        _by_value_step(b[1])
        for x, y in ((a[0].params, b[0].params), *((a[1].state[k], b[1].state[k])
                                                   for k in a[1].state)):
            np.testing.assert_array_equal(gpu.to_numpy(x), gpu.to_numpy(y))
    print("graph-ready", launched[-1])


if __name__ == "__main__" and sys.argv[1:] == ["cuda"]:
    _run_cuda()

def _model(rng, sizes=(4, 6, 3), dtype="float64"):
    return dn.MLP(list(sizes), backend="cpu", dtype=dtype, seed=int(rng.integers(1 << 30)))


def _step(model, opt, rng):
    model.grads[...] = rng.standard_normal(model.n_params)
    opt.step()


@pytest.mark.parametrize("name,field,value", [
    ("adam", "betas", (2, 0.5)), ("adam", "betas", (0.9,)), ("adam", "betas", "ab"),
    ("adam", "betas", (float("nan"), 0.9)), ("adam", "eps", -1), ("adam", "eps", 0.0),
    ("adam", "eps", float("nan")), ("adam", "eps", "x"), ("adam", "base_lr", float("nan")),
    ("adam", "base_lr", -1.0), ("adam", "base_lr", 0), ("adam", "base_lr", "0.1"),
    ("adam", "base_lr", None), ("adam", "base_lr", math.inf), ("adam", "t", -3),
    ("adam", "t", 1.5), ("adam", "t", "3"), ("adam", "t", None), ("adam", "t", True),
    ("adam", "clip_norm", 0), ("adam", "clip_norm", -1.0), ("adam", "weight_decay", -1),
    ("adamw", "weight_decay", float("nan")), ("sgd", "momentum", 1.5), ("sgd", "momentum", -0.1),
    ("adam", "schedule", "cosine"), ("adam", "schedule", lambda step: 0.1),
    ("adam", "schedule", 42),
    ("rmsprop", "rho", 1.0), ("rmsprop", "rho", -0.5), ("rmsprop", "eps", -1),
    ("rmsprop", "momentum", 2.0),
])
def test_bad_value_written_to_an_optimizer_field_is_refused_before_the_next_step(
        name, field, value, rng):
    model = _model(rng)
    opt = dn.optim.get(name, model, lr=0.01)
    _step(model, opt, rng)
    setattr(opt, field, value)
    before = model.params.copy()
    with pytest.raises(ConfigError, match=field.rstrip("s") if field != "base_lr" else "lr"):
        _step(model, opt, rng)
    np.testing.assert_array_equal(model.params, before)  # nothing ran on the bad value


def test_good_value_written_to_an_optimizer_field_is_used_and_normalised(rng):
    model = _model(rng)
    opt = dn.optim.Adam(model, lr=0.01)
    _step(model, opt, rng)
    opt.t, opt.eps, opt.betas = np.int64(7), np.float32(1e-6), [0.5, 0.75]
    twin = dn.MLP(model.layer_sizes, backend="cpu", dtype="float64", seed=None)
    twin.params[...] = model.params
    ref = dn.optim.Adam(twin, lr=0.01, eps=float(np.float32(1e-6)), betas=(0.5, 0.75))
    ref.load_state_dict(opt.state_dict())
    g = rng.standard_normal(model.n_params)
    model.grads[...] = g
    twin.grads[...] = g
    opt.step()
    ref.step()
    np.testing.assert_array_equal(model.params, twin.params)
    assert type(opt.t) is int and opt.t == 8 and opt.betas == (0.5, 0.75)


@pytest.mark.parametrize("name,field,value", [
    ("adam", "amsgrad", True), ("rmsprop", "centered", True), ("sgd", "nesterov", True)])
def test_choice_fixed_at_construction_written_later_is_refused(name, field, value, rng):
    model = _model(rng)
    opt = dn.optim.get(name, model, lr=0.01)
    setattr(opt, field, not value)  # the same value: allowed
    with pytest.raises(ConfigError, match=f"{field} is fixed when the optimizer is built"):
        setattr(opt, field, value)
    assert getattr(opt, field) is (not value)


@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_momentum_turned_on_after_construction_is_refused_not_ignored(name, rng):
    model = _model(rng)
    opt = dn.optim.get(name, model, lr=0.01)
    opt.momentum = 0.5
    before = model.params.copy()
    with pytest.raises(ConfigError, match="built with momentum=0"):
        _step(model, opt, rng)
    np.testing.assert_array_equal(model.params, before)


def test_momentum_turned_off_after_construction_is_plain_sgd(rng):
    model = _model(rng)
    opt = dn.optim.SGD(model, lr=0.1, momentum=0.9)
    _step(model, opt, rng)
    opt.momentum = 0.0
    p0, g = model.params.copy(), rng.standard_normal(model.n_params)
    model.grads[...] = g
    opt.step()
    np.testing.assert_allclose(model.params, p0 - 0.1 * g, rtol=1e-12, atol=1e-15)
