"""Mismatched buffers at every fused kernel entry: a DataError, never an access out of bounds.

Regression for the whole class: Numba kernels do not check bounds, so a ``b``
longer than A's columns, a ``g`` shorter than ``p`` or a ``db`` of the wrong length read or wrote
past an array. Each entry of ``backend.kernels`` named in ``table.ARRAYS`` is called with each
of its arrays replaced by one of another shape, rank or dtype; the call must raise DataError
before any kernel runs (the buffers stay as they were). Runs on the CPU table here and on the
CUDA table under Numba's simulator in a subprocess (the checks run before any launch: cheap).
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

SIZES = {"n": 3, "m": 4, "N": 5}
SCALARS = {"act": "relu", "alpha": 0.01, "p": 0.25, "key": 7, "eps": 1e-5, "centered": False,
           "amsgrad": False, "bc1": 0.5, "bc2": 0.5, "row0": 2}


def _table():
    from devnet.kernels import table

    return table


def valid_args(module, name, rng, dtype=np.float64):
    """Positional arguments of a correct call of ``module.name``: every optional array given
    (an optimizer step's scalars in its float64 hyper array)."""
    table = _table()
    specs = {s.name: s for s in table.ARRAYS[name]}
    args = []
    for param in inspect.signature(getattr(module, name)).parameters:
        if param in specs:
            shape = tuple(SIZES[s] for s in specs[param].shape)
            args.append(rng.uniform(0.1, 1.0, shape).astype(dtype))
        elif param == "hyper":
            step = table.STEP_HYPER[name]
            args.append(np.array(table.hyper_values(step, {
                s: SCALARS.get(s, 0.1) for s in table.STEPS[step].scalars})))
        else:
            args.append(SCALARS.get(param, 0.1))
    return args


def bad_variants(a, shared=(True, True), alone=False):
    """Arrays unlike ``a``: each dimension that another argument shares one longer, one more
    axis, another float dtype, integers."""
    out = []
    for axis in range(a.ndim):
        if not shared[axis]:
            continue
        shape = list(a.shape)
        shape[axis] += 1
        out.append((f"axis {axis} + 1", np.ones(shape, a.dtype)))
    out.append(("extra axis", np.ones(a.shape + (1,), a.dtype)))
    if not alone:  # a lone array's dtype is the kernel's
        other = np.float32 if a.dtype == np.float64 else np.float64
        out.append(("other dtype", a.astype(other)))
    out.append(("integers", a.astype(np.int64)))
    return out


def mismatch_cases():
    table = _table()
    return [(name, spec.name) for name in table.ARRAYS for spec in table.ARRAYS[name]]


def check_entry(module, name, arg, rng):
    """Every bad variant of ``arg`` raises DataError naming it, and nothing is written."""
    from devnet.errors import DataError

    specs = _table().ARRAYS[name]
    spec = next(s for s in specs if s.name == arg)
    shared = [any(sym in s.shape for s in specs if s is not spec) for sym in spec.shape]
    good = valid_args(module, name, rng)
    for what, bad in bad_variants(good[spec.pos], shared, alone=len(specs) == 1):
        args = list(good)
        args[spec.pos] = bad
        before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        with pytest.raises(DataError) as info:
            getattr(module, name)(*args)
        # the first array fixes the dtype: a variant of another one is named itself
        assert repr(arg) in str(info.value) or spec.pos == _first_pos(name), (what, info.value)
        for a, b in zip(args, before):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b, err_msg=f"{name} wrote with bad {arg}")


def _first_pos(name):
    return _table().ARRAYS[name][0].pos


@pytest.mark.parametrize("name,arg", mismatch_cases())
def test_cpu_entry_refuses_mismatched_buffers(name, arg, rng):
    from devnet.kernels import cpu

    check_entry(cpu, name, arg, rng)


@pytest.mark.parametrize("name", sorted(_table().ARRAYS))
def test_cpu_entry_accepts_matching_buffers(name, rng):
    """The same calls with matching buffers run (the checks refuse nothing valid)."""
    from devnet.kernels import cpu

    getattr(cpu, name)(*valid_args(cpu, name, rng))


def test_read_only_output_is_refused(rng):
    from devnet.kernels import cpu

    from devnet.errors import DataError

    args = valid_args(cpu, "sgd_step_hyper", rng)
    args[0].flags.writeable = False
    with pytest.raises(DataError, match="read-only"):
        cpu.sgd_step_hyper(*args)


def test_state_buffer_needed_by_a_flag_is_required(rng):
    """adam_step_hyper(amsgrad=True) with vmax=None updated p as if it were vmax: refused."""
    from devnet.kernels import cpu

    from devnet.errors import DataError

    args = valid_args(cpu, "adam_step_hyper", rng)
    args[4] = None
    args[-1] = True
    with pytest.raises(DataError, match="vmax"):
        cpu.adam_step_hyper(*args)
    args = valid_args(cpu, "rmsprop_step_hyper", rng)
    args[4] = None  # gavg, centered
    args[-1] = True
    with pytest.raises(DataError, match="gavg"):
        cpu.rmsprop_step_hyper(*args)


def test_step_keywords_bind_as_the_signature(rng):
    from devnet.kernels import cpu, reference

    from devnet.errors import DataError

    p, g = (rng.standard_normal(6) for _ in range(2))
    p_ref = p.copy()
    hyper = np.array(_table().hyper_values("sgd_step", {"lr": 0.1, "wd": 0.01}))
    cpu.sgd_step_hyper(hyper=hyper, g=g, p=p)
    reference.sgd_step(p_ref, g, 0.1, 0.01)
    np.testing.assert_allclose(p, p_ref, rtol=1e-12)
    with pytest.raises(DataError, match="arguments: p, g, hyper"):
        cpu.sgd_step_hyper(p, g, hyper, rate=0.2)


def test_cuda_entries_refuse_mismatched_buffers_on_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env.pop("DEVNET_CUDA_SIMULATOR", None)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, __file__, "cuda"], env=env, capture_output=True,
                         text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "checked" in out.stdout


def _run_cuda():
    """Under NUMBA_ENABLE_CUDASIM=1: every case against the CUDA table (NumPy arrays), and a
    non-contiguous buffer, which the CUDA kernels cannot take."""
    from devnet.kernels import cuda as kcuda

    from devnet.errors import DataError

    rng = np.random.default_rng(0)
    count = 0
    for name, arg in mismatch_cases():
        check_entry(kcuda, name, arg, rng)
        count += 1
    args = valid_args(kcuda, "sgd_step_hyper", rng)
    args[1] = np.ones(2 * SIZES["N"])[::2]
    try:
        kcuda.sgd_step_hyper(*args)
        raise AssertionError("a strided g was accepted")
    except DataError as exc:
        assert "C-contiguous" in str(exc)
    print(f"checked {count}")


if __name__ == "__main__" and sys.argv[1:] == ["cuda"]:
    _run_cuda()


@pytest.mark.parametrize("block,norm,dropout", [("plain", None, 0.0),
                                                 ("residual", "layernorm", 0.25)])
def test_the_library_calls_the_unchecked_table_and_a_users_call_stays_checked(
        block, norm, dropout, rng, monkeypatch):
    """The MLP's passes and the optimizer's step call ``backend.raw_kernels`` (their buffers
    are their own, allocated to agree): no argument check runs in a training step or a
    prediction. A user's call of ``backend.kernels.<op>`` stays checked, before and after a
    failing forward."""
    from devnet.kernels import checks

    import devnet as dn

    be = dn.get_backend("cpu")
    model = dn.MLP([3, 4, 4, 2], backend=be, seed=int(rng.integers(1000)), block=block,
                   norm=norm, dropout=dropout)
    opt = dn.optim.Adam(model.parameters(), lr=1e-3, clip_norm=1.0)
    real, calls = checks.check, []

    def spy(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(checks, "check", spy)
    X = rng.standard_normal((5, 3)).astype(np.float32)
    for _ in range(2):
        Y = model.forward(X, training=True)
        model.backward(rng.standard_normal(Y.shape).astype(np.float32))
        opt.step()
    model.predict(X)
    assert calls == []
    with pytest.raises(dn.DataError):
        model.forward(rng.standard_normal((5, 4)).astype(np.float32))  # wrong width
    A = rng.standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(dn.DataError, match="'b'"):
        be.kernels.bias_act_fwd("relu", A, np.zeros(5, np.float32))
    with pytest.raises(dn.DataError, match="'g' must be float32 or float64"):
        be.kernels.opt_clip(rng.integers(0, 9, 6), np.ones(8))
    assert calls == ["bias_act_fwd", "opt_clip"]


@pytest.mark.parametrize("module_name", ["reference", "cpu"])
def test_every_entry_takes_its_declared_arguments(module_name):
    """``table.ENTRIES`` declares every entry of the kernel table once; each entry with an
    explicit signature takes exactly those arguments, in that order (the checks, the byte
    model and the CUDA signatures are generated from the declarations)."""
    import importlib

    table = _table()
    module = importlib.import_module(f"devnet.kernels.{module_name}")
    assert set(table.ENTRIES) == set(table.KERNEL_NAMES)
    checked = 0
    for name, params in table.ENTRIES.items():
        sig = inspect.signature(getattr(module, name))
        kinds = {p.kind for p in sig.parameters.values()}
        if kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}:
            continue  # a generated entry: its names come from the same table
        assert tuple(sig.parameters) == tuple(p.name for p in params), name
        checked += 1
    assert checked >= 10


def test_byte_model_counts_each_buffer_read_and_written_once(rng):
    """The profiler's byte model from the declarations: in place counts twice, an alias of a
    buffer already read is not read again, a step's hyper scalars are not counted."""
    table = _table()
    n, m = 6, 5
    G, A, dZ = (rng.standard_normal((n, m)) for _ in range(3))
    db = rng.standard_normal(m)
    b = rng.standard_normal(m)
    assert table.traffic("bias_act_fwd", ("relu", A, b, None, 0.01)) == 2 * A.nbytes + b.nbytes
    # Z is A: read once; dZ is G: G read, then written
    assert table.traffic("act_bwd", ("relu", G, A, A, G, db)) == \
        2 * G.nbytes + A.nbytes + db.nbytes
    assert table.traffic("act_bwd", ("gelu", G, A, dZ, dZ, db)) == \
        G.nbytes + A.nbytes + 2 * dZ.nbytes + db.nbytes
    p, g, m_, v = (rng.standard_normal(7) for _ in range(4))
    hyper = rng.standard_normal(12)
    assert table.traffic("adam_step_hyper", (p, g, m_, v, None, hyper, False)) == \
        7 * p.nbytes
    assert table.traffic("layernorm_fwd", (), dict(X=G, gamma=b, beta=b, Y=dZ, mean=db,
                                                    rstd=db, eps=1e-5)) == \
        2 * G.nbytes + b.nbytes + db.nbytes
