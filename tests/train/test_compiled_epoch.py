"""The compiled CPU epoch: the same steps as the Python executor and as fit's Python loop,
bit for bit (both call the same kernels and the same OpenBLAS build's products), and a clear
reason wherever it cannot run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from devnet.kernels import scalar
from helpers.plans import (
    CASES,
    DEEP_CASES,
    DEEP_IDS,
    DROPOUT_CASES,
    DROPOUT_IDS,
    make,
    objective_step,
    plan_loop,
    step_loop,
    twin,
)

import devnet as dn
from devnet.errors import ConfigError, DivergenceError
from devnet.io import checkpoint
from devnet.train import blas, codegen, compiled, engine
from devnet.train import plan as plan_mod
from devnet.train.feed import make_feed
from devnet.train.step import Step

pytestmark = pytest.mark.skipif(compiled.unavailable(dn.get_backend("cpu")) is not None,
                                reason=str(compiled.unavailable(dn.get_backend("cpu"))))


TOL = {np.dtype("float32"): dict(rtol=1e-4, atol=1e-6),
       np.dtype("float64"): dict(rtol=1e-12, atol=1e-15)}


def equal(a, b) -> bool:
    """Bit for bit where the compiled products are NumPy's (``products_agree``); where the
    two BLAS builds differ, within rounding (float64: 1e-12 relative)."""
    # a draw whose run diverges (poisson with momentum SGD can) must diverge the same way
    if compiled.products_agree():
        return np.array_equal(a, b, equal_nan=True)
    return np.allclose(a, b, equal_nan=True, **TOL[np.asarray(a).dtype])


def same_state(a, opt_a, b, opt_b):
    assert equal(a.params, b.params)
    for k in opt_a.state:
        assert equal(opt_a.state[k], opt_b.state[k]), k
    assert opt_a.t == opt_b.t


# one compiled driver per case (a few seconds of Numba each): every loss, activation and
# optimizer kernel, weights, clipping, weight decay and input scaling in six structures
@pytest.mark.parametrize("case", CASES, ids=[f"{c[2]}-{c[3]['name']}-{c[5]}" for c in CASES])
def test_compiled_epoch_is_the_python_executor_and_the_step(rng, case):
    model, opt, loss, X, y, w = make(rng, *case, n=int(rng.integers(20, 40)))
    model2, opt2 = twin(model, opt)
    model3, opt3 = twin(model, opt)
    order = rng.permutation(len(X))
    bs = int(rng.integers(3, 7))
    py, co = Step(model, loss, opt), Step(model2, loss, opt2)
    for _ in range(2):  # two epochs, the partial last batch included
        plan_loop(py, X, y, w, order, bs)
        plan_loop(co, X, y, w, order, bs, run=compiled.run_compiled)
    same_state(model, opt, model2, opt2)
    assert equal(py.running, co.running)
    ref = Step(model3, loss, opt3)
    for _ in range(2):
        step_loop(ref, X, y, w, order, bs)
    same_state(model3, opt3, model2, opt2)


def compiled_epochs(step, X, y, w, order, bs, epochs, index, rng):
    """``epochs`` epochs of the CompiledEpoch from step index ``index``, each cut into blocks
    at drawn steps (as fit's guard checks and table refills cut them); the running loss of
    each epoch, and the next index."""
    runner = engine.CompiledEpoch(step, make_feed(step.model.backend, X, y, w, capacity=bs),
                                  bs)
    steps = -(-len(X) // bs)
    losses = []
    for _ in range(epochs):
        step.reset()
        cuts = sorted({0, steps, *rng.integers(1, steps, 2).tolist()})
        for a, b in zip(cuts, cuts[1:]):
            runner.run(order, a, b - a, index=index + a)
        losses.append(float(step.running))
        index += steps
    return losses, index


def python_epochs(step, X, y, w, order, bs, epochs, index):
    losses = []
    for _ in range(epochs):
        step.reset()
        index = step_loop(step, X, y, w, order, bs, index=index)
        losses.append(float(step.running))
    return losses, index


# dropout: the masks of each step of a block are the Step's at fit's step count (the block's
# first index + the step's offset); every hidden activation, both dtypes, weights or not
@pytest.mark.parametrize("case", DROPOUT_CASES,
                         ids=DROPOUT_IDS)
def test_compiled_dropout_epochs_are_the_step_bit_for_bit(rng, case):
    compiled_matches_the_step(rng, case)


# residual blocks and LayerNorm, with and without dropout
@pytest.mark.parametrize("case", DEEP_CASES,
                         ids=DEEP_IDS)
def test_compiled_residual_and_layernorm_epochs_are_the_step_bit_for_bit(rng, case):
    compiled_matches_the_step(rng, case)


def compiled_matches_the_step(rng, case):
    model, opt, loss, X, y, w = make(rng, *case, n=int(rng.integers(20, 40)))
    bs = int(rng.integers(3, 7))
    if len(X) % bs == 0:  # a partial last batch
        X, y = X[:-1], y[:-1]
        w = None if w is None else w[:-1]
    model2, opt2 = twin(model, opt)
    order = rng.permutation(len(X))
    first = int(rng.integers(0, 1 << 40))
    py, co = Step(model, loss, opt), Step(model2, loss, opt2)
    want, i = python_epochs(py, X, y, w, order, bs, 3, first)
    got, j = compiled_epochs(co, X, y, w, order, bs, 3, first, rng)
    assert i == j
    same_state(model, opt, model2, opt2)
    assert equal(want, got)
    assert equal(model.grads, model2.grads)
    # the model's last forward is the last step's, masks included: backward recomputes them
    assert model._keys == model2._keys
    assert (model._keys[0] is not None) == (case[7] > 0)
    G = rng.normal(size=(len(X) % bs, model.n_out)).astype(model.dtype)
    model.backward(G, input_grad=False)
    model2.backward(G, input_grad=False)
    assert equal(model.grads, model2.grads)


def test_compiled_dropout_resumes_from_a_checkpoint_as_the_step_runs_on(rng, tmp_path):
    # an uninterrupted run against: two epochs, a checkpoint (the step count in its training
    # state), a fresh model and optimizer loaded from it, two more epochs compiled
    case = DROPOUT_CASES[int(rng.integers(len(DROPOUT_CASES)))]
    model, opt, loss, X, y, w = make(rng, *case, n=int(rng.integers(20, 40)))
    bs = int(rng.integers(3, 7))
    model2, opt2 = twin(model, opt)
    order = rng.permutation(len(X))
    want, _ = python_epochs(Step(model, loss, opt), X, y, w, order, bs, 4, 0)
    step2 = Step(model2, loss, opt2)
    _, index = python_epochs(step2, X, y, w, order, bs, 2, 0)
    path = checkpoint.save(model2, tmp_path / "mid.safetensors", opt2,
                           train_state={"step": index})
    ck = checkpoint.load_checkpoint(path, backend="cpu")
    assert ck.model.dropout_seed == model.dropout_seed
    got, _ = compiled_epochs(Step(ck.model, loss, ck.optimizer), X, y, w, order, bs, 2,
                             ck.train_state["step"], rng)
    same_state(model, opt, ck.model, ck.optimizer)
    assert equal(want[2:], got)


def test_the_drivers_dropout_key_is_the_kernels(rng):
    words = codegen.dropout_words()
    for _ in range(300):
        seed = int(rng.integers(0, 1 << 62)) * int(rng.integers(1, 5))
        index = int(rng.choice([rng.integers(0, 100), rng.integers(0, 1 << 62)]))
        layer = int(rng.integers(0, 12))
        key = scalar.dropout_key(seed, index, layer)
        got = words(np.uint64(seed & (1 << 64) - 1), np.int64(index), np.int64(layer))
        assert (int(got[0]), int(got[1])) == (key & 0xFFFFFFFF, key >> 32)


def test_dropout_runs_compiled_only_where_the_caller_gives_the_step_index(rng):
    X, y = digits_like(rng)
    model = dn.MLP([6, 7, 5, 3], backend="cpu", dropout=0.3)
    step = Step(model, "cross_entropy", dn.optim.Adam(model.parameters()))
    feed = make_feed(model.backend, X, y, None, 8)
    got = engine.choose("auto", step, feed, 8)
    assert got.name == "python" and "dropout=0.3" in got.reason and "step index" in got.reason
    with pytest.raises(ConfigError, match="dropout=0.3"):
        engine.choose("compiled", step, feed, 8)
    assert engine.choose("auto", step, feed, 8, step_index=True).name == "compiled"
    # out of training mode there are no masks: no index needed
    step = Step(model, "cross_entropy", dn.optim.Adam(model.parameters()), training=False)
    assert engine.choose("auto", step, feed, 8).name == "compiled"


# the estimators' Step (its hook and its recording declare their ops): two structures
@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=["mse-float64", "bce-float64"])
def test_declared_ops_compile_to_the_python_executor_and_the_step(rng, case):
    pytest.importorskip("sklearn")
    model, opt, loss, X, y, w = make(rng, *case, n=int(rng.integers(20, 40)))
    if rng.uniform() < 0.5:  # float32 weights: the driver casts them as the hook does
        w = w.astype(np.float32)
    twins = [(model, opt), twin(model, opt), twin(model, opt)]
    seed = int(rng.integers(1 << 30))
    steps = [objective_step(np.random.default_rng(seed), m, loss, o, 2 * len(X))
             for m, o in twins]
    order = rng.permutation(len(X))
    bs = int(rng.integers(3, 7))
    for _ in range(2):  # two epochs recorded one after the other
        plan_loop(steps[0], X, y, w, order, bs)
        plan_loop(steps[1], X, y, w, order, bs, run=compiled.run_compiled)
        step_loop(steps[2], X, y, w, order, bs)
    for (m, o), st in zip(twins[1:], steps[1:]):
        same_state(model, opt, m, o)
        assert equal(steps[0].running, st.running)
        assert st.recorder.count == 2 * len(X)
        assert equal(steps[0].recorder.z, st.recorder.z)
        assert equal(steps[0].recorder.t, st.recorder.t)


def test_compiled_epoch_weighs_batches_by_rows_where_asked(rng):
    # the estimators sum each batch's mean loss times its row count: the partial last batch
    # too; fit's default weighs by the share of a full batch
    model, opt, loss, X, y, w = make(rng, *CASES[1], n=int(rng.integers(20, 40)))
    bs = int(rng.integers(3, 7))
    if len(X) % bs == 0:
        X, y, w = X[:-1], y[:-1], w[:-1]
    feed = make_feed(model.backend, X, y, w, capacity=bs)
    order = rng.permutation(len(X))
    runs = {}
    for how in ("share", "rows"):
        m, o = twin(model, opt)
        step = Step(m, loss, o)
        engine.CompiledEpoch(step, feed, bs, batch_weight=how).run(order, 0, -(-len(X) // bs))
        runs[how] = float(step.running)
    m, o = twin(model, opt)
    ref = Step(m, loss, o)
    for lo in range(0, len(X), bs):
        idx = order[lo:lo + bs]
        ref(X[idx], y[idx], w[idx], weight=len(idx))
    assert equal(runs["rows"], float(ref.running))
    assert not np.isclose(runs["rows"], runs["share"])
    with pytest.raises(ConfigError, match="valid batch_weights: rows, share"):
        engine.CompiledEpoch(step, feed, bs, batch_weight="count")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_vector_shaped_products_match(rng, dtype):
    # one input feature, one output and a last batch of one row: NumPy's matmul makes gemv /
    # dot calls there, which the compiled products must make too (gemm sums in another order)
    case = ("tanh", "identity", "mse", dict(name="adam", weight_decay=0.01), True, dtype,
            False)
    bs = int(rng.integers(30, 60))  # long enough sums for the BLAS calls' orders to show
    model, opt, loss, X, y, w = make(rng, *case, n=3 * bs + 1, sizes=[1, 150, 120, 1])
    model2, opt2 = twin(model, opt)
    order = rng.permutation(len(X))
    step_loop(Step(model, loss, opt), X, y, w, order, bs)
    plan_loop(Step(model2, loss, opt2), X, y, w, order, bs, run=compiled.run_compiled)
    same_state(model, opt, model2, opt2)


def test_products_by_scipys_blas_agree_within_rounding(rng, monkeypatch):
    # where NumPy's BLAS library is not found, Numba's np.dot (SciPy's OpenBLAS) computes
    # the products: another build, the same sums to rounding
    monkeypatch.setattr(blas, "functions", lambda: None)
    case = ("relu", "identity", "mse", dict(name="adam"), False, "float64", False)
    model, opt, loss, X, y, w = make(rng, *case, n=61, sizes=[13, 90, 70, 4])
    model2, opt2 = twin(model, opt)
    order = rng.permutation(len(X))
    step_loop(Step(model, loss, opt), X, y, w, order, 16)
    plan_loop(Step(model2, loss, opt2), X, y, w, order, 16, run=compiled.run_compiled)
    np.testing.assert_allclose(model2.params, model.params, rtol=1e-12, atol=1e-15)


def digits_like(rng, n=90, d=6, k=3):
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = np.argmax(X[:, :k] + 0.3 * rng.normal(size=(n, k)), axis=1).astype(np.int64)
    return X, y


def fit_both(rng, sizes, X, y, **kw):
    """fit with engine="python" and engine="compiled" from the same model; their results."""
    seed = int(rng.integers(1 << 30))
    out = []
    for name in ("python", "compiled"):
        model = dn.MLP(sizes, seed=seed, backend="cpu")
        hist = dn.fit(model, X, y, engine=name, progress=False, seed=seed, **kw)
        out.append((model, hist))
    return out


def test_fit_compiled_equals_fit_python(rng):
    X, y = digits_like(rng)
    sw = rng.uniform(0.2, 1.0, len(X))
    (mp, hp), (mc, hc) = fit_both(rng, [6, 7, 5, 3], X, y, epochs=3, batch_size=8,
                                  sample_weight=sw, guard_every=4, optimizer="sgd", lr=0.1,
                                  schedule="cosine")
    assert equal(mp.params, mc.params)
    assert equal(hp.history["loss"], hc.history["loss"])
    assert (hp.params["engine"], hc.params["engine"]) == ("python", "compiled")
    # after the compiled epoch the model's last forward is its plan's: backward still works
    mc.backward(np.ones((len(X) % 8, 3), np.float32))


@pytest.mark.parametrize("block, norm, act, dtype", [
    ("residual", None, "relu", "float32"), ("plain", "layernorm", "tanh", "float64"),
    ("residual", "layernorm", "gelu", "float64"), ("residual", "layernorm", "identity",
                                                   "float32")])
def test_fit_of_residual_and_layernorm_blocks_runs_compiled_as_python(rng, block, norm, act,
                                                                      dtype):
    X, y = digits_like(rng, n=int(rng.integers(40, 80)))
    X = X.astype(dtype)
    bs = int(rng.integers(5, 12))
    if len(X) % bs == 0:  # a partial last batch
        X, y = X[:-1], y[:-1]
    sw = rng.uniform(0.2, 1.0, len(X)) if rng.uniform() < 0.5 else None
    seed = int(rng.integers(1 << 30))
    runs = []
    for name in ("python", "compiled"):
        model = dn.MLP([6, 8, 8, 8, 3], activation=act, dtype=dtype, block=block, norm=norm,
                       seed=seed, backend="cpu")
        opt = dn.optim.AdamW(model.parameters(), lr=0.01)
        hist = dn.fit(model, X, y, optimizer=opt, epochs=3, batch_size=bs, sample_weight=sw,
                      guard_every=int(rng.integers(2, 6)), engine=name, progress=False,
                      seed=seed)
        runs.append((model, opt, hist))
    (mp, op, hp), (mc, oc, hc) = runs
    assert (hp.params["engine"], hc.params["engine"]) == ("python", "compiled")
    same_state(mp, op, mc, oc)
    assert equal(hp.history["loss"], hc.history["loss"])
    G = rng.normal(size=(len(X) % bs, 3)).astype(dtype)  # backward after fit: the same
    assert equal(mp.backward(G), mc.backward(G))


def test_fit_of_residual_and_layernorm_blocks_resumes_compiled_as_python_runs_on(rng,
                                                                                  tmp_path):
    # four uninterrupted epochs of the Python step against two compiled epochs with a
    # checkpoint and a fresh model resumed from it for two more (a constant rate: a
    # schedule planned for two epochs would end at the checkpoint)
    X, y = digits_like(rng, n=int(rng.integers(40, 80)))
    seed = int(rng.integers(1 << 30))
    kw = dict(batch_size=int(rng.integers(5, 12)), optimizer="adam", lr=0.01, progress=False,
              seed=seed)
    path = tmp_path / "ck.safetensors"
    models, hists = [], []
    for name, epochs, ck, resume in (("python", 4, None, None), ("compiled", 2, path, None),
                                     ("compiled", 4, None, path)):
        model = dn.MLP([6, 8, 8, 3], block="residual", norm="layernorm", seed=seed,
                       backend="cpu")
        hists.append(dn.fit(model, X, y, engine=name, epochs=epochs, checkpoint=ck,
                            resume_from=resume, **kw))
        models.append(model)
    assert [h.params["engine"] for h in hists] == ["python", "compiled", "compiled"]
    assert equal(models[0].params, models[2].params)
    assert equal(hists[0].history["loss"], hists[2].history["loss"])


@pytest.mark.parametrize("batch_size", [5, 64])
def test_a_short_batch_weighs_its_share_of_batch_size(rng, batch_size):
    # the last batch of 3 rows, or the only one when batch_size exceeds the 13 samples: its
    # loss counts rows / batch_size of a full batch's in the epoch's loss, in both engines
    X, y = digits_like(rng, n=13)
    (mp, hp), (mc, hc) = fit_both(rng, [6, 7, 5, 3], X, y, epochs=2, batch_size=batch_size,
                                  loss="cross_entropy")
    assert equal(mp.params, mc.params)
    assert equal(hp.history["loss"], hc.history["loss"])
    assert hc.params["engine"] == "compiled"


def test_auto_picks_compiled_and_falls_back_with_the_reason(rng):
    X, y = digits_like(rng)
    model = dn.MLP([6, 7, 5, 3], backend="cpu")
    assert dn.fit(model, X, y, epochs=1, progress=False).params["engine"] == "compiled"
    # dropout runs compiled: fit gives each block its step count, which keys the masks
    model = dn.MLP([6, 7, 5, 3], backend="cpu", dropout=0.2)
    assert dn.fit(model, X, y, epochs=1, progress=False).params["engine"] == "compiled"

    class EveryBatch(dn.Callback):
        def on_batch_end(self, step, logs):
            pass

    model = dn.MLP([6, 7, 5, 3], backend="cpu")
    hist = dn.fit(model, X, y, epochs=1, progress=False, callbacks=[EveryBatch()])
    assert hist.params["engine"] == "python"
    assert "EveryBatch runs on_batch_end" in hist.params["engine_reason"]


def test_the_reference_kernels_run_the_python_step_and_say_so(rng):
    # a CPU backend the compiled epoch cannot run names its own reason, not the GPU's graphs
    X, y = digits_like(rng)
    model = dn.MLP([6, 7, 5, 3], backend=dn.get_backend("cpu", kernels="reference"))
    hist = dn.fit(model, X, y, epochs=1, progress=False)
    assert hist.params["engine"] == "python"
    assert "reference kernels" in hist.params["engine_reason"], hist.params["engine_reason"]


def test_fit_says_which_engine_ran_and_why(rng, caplog):
    X, y = digits_like(rng)
    with caplog.at_level("INFO", logger="devnet"):
        dn.fit(dn.MLP([6, 7, 5, 3], backend="cpu"), X, y, epochs=1, progress=True,
               engine="python")
    assert "fit runs the python engine: engine='python' was asked for" in caplog.text


def test_profile_says_which_engine_fit_runs(rng):
    X, y = digits_like(rng, n=8)
    ceil = {"copy_gbs": 1.0, "gemm_gflops": 1.0}
    rep = dn.profile(dn.MLP([6, 7, 5, 3], backend="cpu"), X, y, repeats=3, warmup=1,
                     ceilings=ceil, compiled=True)
    assert rep.engine == "compiled" and rep.compiled_step_s > 0
    assert "fit's engine: compiled" in str(rep) and rep.to_dict()["engine"] == "compiled"
    # dropout: fit gives the compiled epoch the step index that keys the masks
    rep = dn.profile(dn.MLP([6, 7, 5, 3], backend="cpu", dropout=0.2), X, y, repeats=2,
                     warmup=1, ceilings=ceil, compiled=True)
    assert rep.engine == "compiled" and rep.compiled_step_s > 0

    class Stepwise(dn.optim.Adam):
        def step(self):
            super().step()

    model = dn.MLP([6, 7, 5, 3], backend="cpu")
    rep = dn.profile(model, X, y, optimizer=Stepwise(model.parameters()), repeats=2,
                     warmup=1, ceilings=ceil, compiled=True)
    assert rep.engine == "python" and "overrides step()" in rep.engine_reason
    assert rep.compiled_step_s is None
    X, y = digits_like(rng, n=40)  # and fit runs what profile says it runs
    assert dn.fit(model, X, y, optimizer=Stepwise(model.parameters()), epochs=1,
                  progress=False).params["engine"] == "python"


def test_engine_compiled_on_an_ineligible_fit_is_a_config_error(rng):
    class EveryBatch(dn.Callback):
        def on_batch_end(self, step, logs):
            pass

    X, y = digits_like(rng)
    model = dn.MLP([6, 5, 5, 3], backend="cpu", dropout=0.1)
    before = model.params.copy()
    with pytest.raises(ConfigError, match="engine='compiled' cannot run this fit: .*EveryBatch"):
        dn.fit(model, X, y, epochs=1, progress=False, engine="compiled",
               callbacks=[EveryBatch()])
    assert np.array_equal(model.params, before)


def test_unknown_engine_lists_the_valid_ones(rng):
    X, y = digits_like(rng)
    with pytest.raises(ConfigError, match="valid engines: auto, compiled, graph, python"):
        dn.fit(dn.MLP([6, 3], backend="cpu"), X, y, engine="numba", progress=False)


def test_without_a_blas_the_engine_says_so(monkeypatch):
    assert compiled.unavailable(dn.get_backend("cpu")) is None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "scipy" else real(name, *a))
    assert compiled.unavailable(dn.get_backend("cpu")) is None  # NumPy's BLAS is enough
    monkeypatch.setattr(blas, "functions", lambda: None)
    assert "SciPy is not installed" in compiled.unavailable(dn.get_backend("cpu"))
    assert compiled.unavailable(dn.get_backend("cpu", kernels="reference")) is not None


def test_blocks_stop_at_table_refills(rng, monkeypatch):
    monkeypatch.setattr("devnet.optim.optimizers.TABLE_ROWS", 5)
    X, y = digits_like(rng, n=70)
    (mp, hp), (mc, hc) = fit_both(rng, [6, 7, 5, 3], X, y, epochs=2, batch_size=4)
    assert equal(mp.params, mc.params) and equal(hp.history["loss"], hc.history["loss"])


def test_divergence_is_caught_and_named_as_in_the_python_loop(rng):
    X, y = digits_like(rng)
    errors = []
    for name in ("python", "compiled"):
        model = dn.MLP([6, 7, 5, 3], seed=3, backend="cpu")
        with pytest.raises(DivergenceError) as exc:
            # a rate that overflows float32 within a few steps
            dn.fit(model, X, y, epochs=2, batch_size=8, guard_every=3, progress=False,
                   engine=name, seed=5, optimizer="sgd", lr=1e35)
        errors.append((str(exc.value), model.params.copy()))
    assert errors[0][0] == errors[1][0]
    assert equal(errors[0][1], errors[1][1]) and np.isfinite(errors[1][1]).all()


def test_choose_reports_data_parallel_as_a_reason(rng):
    X, y = digits_like(rng)
    model = dn.MLP([6, 3], backend="cpu")
    step = Step(model, "cross_entropy", dn.optim.Adam(model.parameters()))
    from devnet.train.feed import make_feed

    feed = make_feed(model.backend, X, y, None, 8)
    assert engine.choose("auto", step, feed, 8).name == "compiled"
    got = engine.choose("auto", step, feed, 8, ("data-parallel training all-reduces", None))
    assert (got.name, got.reason, got.runner) == ("python", "data-parallel training all-reduces",
                                                  None)
    assert got.step is step
    plan_mod.steps_left(step.optimizer)


# --- the drivers' disk cache ---------------------------------------------------------------------

# A fresh process fits with engine="compiled" and reports the cache (compiled.cache_info) and
# its parameters; the data and the model's seed come from the test.
CHILD = """
import json, sys
import numpy as np
import devnet as dn
from devnet.train import compiled
data = np.load(sys.argv[1])
model = dn.MLP([int(v) for v in data["sizes"]], seed=int(data["seed"]), backend="cpu")
hist = dn.fit(model, data["X"], data["y"], epochs=2, batch_size=int(data["bs"]),
              sample_weight=data["sw"], progress=False, seed=int(data["seed"]),
              engine="compiled")
np.save(sys.argv[2], model.params)
print(json.dumps(dict(compiled.cache_info(), engine=hist.params["engine"])))
"""


def child_data(rng, tmp_path):
    X, y = digits_like(rng, n=int(rng.integers(40, 70)))
    # sample weights: the driver sums them with its own compiled function (a cached driver
    # calling a recursive one crashed when loaded from the cache)
    spec = dict(X=X, y=y, sw=rng.uniform(0.2, 1.0, len(X)),
                sizes=np.array([6, int(rng.integers(3, 9)), 3]),
                seed=int(rng.integers(1 << 30)), bs=int(rng.integers(4, 9)))
    path = tmp_path / "data.npz"
    np.savez(path, **spec)
    return spec, path


def start_child(data, out, cache):
    env = dict(os.environ, DEVNET_PLAN_CACHE=str(cache))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_child(proc):
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def python_params(spec):
    model = dn.MLP(list(spec["sizes"]), seed=spec["seed"], backend="cpu")
    dn.fit(model, spec["X"], spec["y"], epochs=2, batch_size=spec["bs"],
           sample_weight=spec["sw"], progress=False, seed=spec["seed"], engine="python")
    return model.params


def test_a_driver_compiled_in_one_process_is_loaded_from_disk_in_the_next(rng, tmp_path):
    spec, data = child_data(rng, tmp_path)
    cache = tmp_path / "plans"
    # two processes at once on an empty cache: both compile (or one finds the other's), and
    # neither trips over the other's files
    procs = [start_child(data, tmp_path / f"p{i}.npy", cache) for i in range(2)]
    cold = [finish_child(p)[0] for p in procs]
    # one driver per plan structure: two where the last batch has a single row (its products
    # are other BLAS calls)
    drivers = cold[0]["drivers"]
    for info in cold:
        assert info["engine"] == "compiled" and info["drivers"] == drivers >= 1
        assert info["hits"] + info["misses"] == drivers and info["dir"] == str(cache)
    modules = {p.name[:-3] for p in cache.glob("devnet_plan_*.py")}
    assert len(modules) == drivers and {p.name[:-5] for p in cache.glob("*.used")} == modules
    warm, err = finish_child(start_child(data, tmp_path / "p2.npy", cache))
    assert (warm["hits"], warm["misses"]) == (drivers, 0), warm
    got = [np.load(tmp_path / f"p{i}.npy") for i in range(3)]
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])
    assert equal(got[2], python_params(spec))


def test_the_disk_cache_keeps_the_most_recently_used_drivers(tmp_path):
    pycache = tmp_path / "__pycache__"
    pycache.mkdir()
    names = [f"devnet_plan_{i:024x}" for i in range(5)]
    for age, name in enumerate(names):  # names[4] used last
        (tmp_path / f"{name}.py").write_text("")
        for suffix in (".driver-22.py311.nbi", ".driver-22.py311.1.nbc"):
            (pycache / f"{name}{suffix}").write_text("")
        used = tmp_path / f"{name}.used"
        used.write_text("")
        os.utime(used, (1e9 + 10 * age, 1e9 + 10 * age))
    (tmp_path / f"{names[1]}.used").unlink()  # never marked used: first to go
    (tmp_path / "other.py").write_text("")
    assert sorted(compiled.prune(str(tmp_path), keep=3)) == [names[0], names[1]]
    left = {p.name.split(".")[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert left == {*names[2:], "other"}
    assert len(list(pycache.iterdir())) == 6
    assert compiled.prune(str(tmp_path), keep=3) == []


# A fresh process fits residual LayerNorm models (one driver), with engine="compiled", before
# it has built any kernel of its own: the driver comes from the disk cache with its copy of each
# kernel. That copy must have the bits of the kernel the Python executor calls.
DEEP_CHILD = """
import sys
import numpy as np
import devnet as dn
data = np.load(sys.argv[1])
out = []
for seed in data["seeds"]:
    model = dn.MLP([int(v) for v in data["sizes"]], activation="identity", block="residual",
                   norm="layernorm", dtype="float32", seed=int(seed), backend="cpu")
    dn.fit(model, data["X"], data["y"], epochs=3, batch_size=int(data["bs"]), optimizer="adamw",
           lr=0.01, progress=False, seed=int(seed), engine="compiled")
    out.append(model.params)
np.save(sys.argv[2], np.array(out))
"""


def test_a_driver_loaded_from_disk_first_runs_the_python_executors_bits(rng, tmp_path):
    # with "arcp" among the kernels' fast-math flags about half of such fits differed by an
    # ulp: four models, so that a regression shows in all but 1 run in 16
    h = int(rng.integers(4, 9))
    X, y = digits_like(rng, n=int(rng.integers(40, 80)))
    bs = int(rng.integers(5, 12))
    if len(X) % bs == 0:  # a partial last batch
        X, y = X[:-1], y[:-1]
    seeds = rng.integers(1 << 30, size=4)
    data = tmp_path / "data.npz"
    np.savez(data, X=X, y=y, sizes=np.array([6, h, h, h, 3]), bs=bs, seeds=seeds)
    cache = tmp_path / "plans"
    env = dict(os.environ, DEVNET_PLAN_CACHE=str(cache))
    for name in ("first.npy", "cached.npy"):  # compiles the driver, then loads it first
        subprocess.run([sys.executable, "-c", DEEP_CHILD, str(data), str(tmp_path / name)],
                       env=env, check=True, timeout=300, capture_output=True)
    want = []
    for seed in seeds:
        model = dn.MLP([6, h, h, h, 3], activation="identity", block="residual",
                       norm="layernorm", dtype="float32", seed=int(seed), backend="cpu")
        dn.fit(model, X, y, epochs=3, batch_size=bs, optimizer="adamw", lr=0.01,
               progress=False, seed=int(seed), engine="python")
        want.append(model.params)
    for name in ("first.npy", "cached.npy"):
        got = np.load(tmp_path / name)
        assert all(equal(g, w) for g, w in zip(got, want)), name

def test_an_unwritable_cache_compiles_in_memory_quietly(rng, tmp_path):
    spec, data = child_data(rng, tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # its "subdirectory" cannot be made, even by root
    info, err = finish_child(start_child(data, tmp_path / "p.npy", blocker / "plans"))
    assert info["engine"] == "compiled" and info["dir"] is None
    assert (info["hits"], info["misses"]) == (0, info["drivers"]) and info["drivers"] >= 1
    assert "cannot be written" in info["reason"] and str(blocker) in info["reason"]
    assert "Warning" not in err and "Traceback" not in err, err
    assert equal(np.load(tmp_path / "p.npy"), python_params(spec))


def test_a_driver_module_names_every_kernel_it_calls(rng):
    # the cache file is named by the module's text: two plans that call different kernels
    # (activation, loss, optimizer, dtype) must never share a text
    texts = set()
    for act, loss, opt, dtype in (("relu", "mse", "adam", "float32"),
                                  ("tanh", "mse", "adam", "float32"),
                                  ("relu", "mae", "adam", "float32"),
                                  ("relu", "mse", "sgd", "float32"),
                                  ("relu", "mse", "adam", "float64")):
        case = (act, "identity", loss, dict(name=opt), False, dtype, False)
        model, opt_, loss_, X, y, w = make(rng, *case, sizes=[3, 4, 4, 2])
        texts.add(codegen.source(plan_mod.build(Step(model, loss_, opt_), 4, X, y, w))[0])
    assert len(texts) == 5


# --- what the compiled epoch must see as the Python step does ---------------------------------

@pytest.mark.parametrize("engine", ["python", "compiled"])
def test_a_huber_delta_that_is_zero_in_float32_is_refused_by_both_engines(rng, engine):
    X = rng.normal(size=(20, 3)).astype(np.float32)
    y = rng.normal(size=(20, 2)).astype(np.float32)
    model = dn.MLP([3, 4, 2], seed=int(rng.integers(1 << 30)), backend="cpu")
    before = model.params.copy()
    with pytest.raises(ConfigError, match="huber delta=1e-50 is 0 in float32"):
        dn.fit(model, X, y, loss=dn.losses.Huber(delta=1e-50), epochs=1, batch_size=8,
               engine=engine, progress=False, train_metrics=False)
    assert np.array_equal(model.params, before)


def test_parallel_kernels_leave_fit_to_the_python_step(rng, monkeypatch):
    # the driver runs the serial kernels; the Python step's parallel ones split their sums
    from devnet.kernels.cpu import build

    X, y = digits_like(rng, n=60)
    model = dn.MLP([6, 16, 3], backend="cpu")
    monkeypatch.setattr(build, "PARALLEL_MIN", int(rng.integers(1, 16 * 16)))
    hist = dn.fit(model, X, y, epochs=1, batch_size=16, progress=False)
    assert hist.params["engine"] == "python"
    assert "set_parallel_min" in hist.params["engine_reason"]
    with pytest.raises(ConfigError, match="set_parallel_min"):
        dn.fit(model, X, y, epochs=1, batch_size=16, progress=False, engine="compiled")
    monkeypatch.setattr(build, "PARALLEL_MIN", max(model.params.size, 16 * 16) + 1)  # above all
    assert dn.fit(model, X, y, epochs=1, batch_size=16,
                  progress=False).params["engine"] == "compiled"


class Rescale(dn.Callback):
    """Sets the model's input scaling after the first epoch, its leaky slope after the
    second."""

    def on_epoch_end(self, epoch, logs):
        model = self.trainer.model
        if epoch == 0:
            model.set_input_scaling(np.full(model.n_in, 0.5), np.full(model.n_in, 2.0))
        elif epoch == 1:
            model.alpha = 0.2


def test_a_callback_changing_the_model_between_epochs_is_seen_by_the_compiled_epoch(rng):
    X, y = digits_like(rng, n=int(rng.integers(40, 80)))
    seed = int(rng.integers(1 << 30))
    (mp, hp), (mc, hc) = [
        (model, dn.fit(model, X, y, engine=name, epochs=3, batch_size=8, progress=False,
                       seed=seed, callbacks=[Rescale()]))
        for name in ("python", "compiled")
        for model in [dn.MLP([6, 7, 5, 3], activation="leaky_relu", seed=seed,
                             backend="cpu")]]
    assert (hp.params["engine"], hc.params["engine"]) == ("python", "compiled")
    assert mc.alpha == 0.2 and mc._dev_mean is not None
    assert equal(mp.params, mc.params)
    assert equal(hp.history["loss"], hc.history["loss"])


def test_a_compiled_epoch_refuses_steps_and_orders_outside_its_epoch(rng):
    X, y = digits_like(rng, n=20)
    model = dn.MLP([6, 5, 3], backend="cpu")
    step = Step(model, "cross_entropy", dn.optim.Adam(model.parameters()))
    runner = engine.CompiledEpoch(step, make_feed(model.backend, X, y, None, 5), 5)
    before = model.params.copy()
    for order, first, count in ((None, 3, 2), (None, -1, 1), (None, 0, -1), (None, 0.5, 1),
                                (np.arange(19), 0, 1), (np.arange(1, 21), 0, 1)):
        with pytest.raises(ConfigError, match="steps first|order must hold"):
            runner.run(order, first, count)
    runner.run(None, 2, 0)  # no steps: nothing runs
    assert np.array_equal(model.params, before)
    runner.run(rng.permutation(20), 0, 4)
    assert not np.array_equal(model.params, before)
    plan_mod.steps_left(step.optimizer)


def test_the_driver_averages_float32_weights_as_numpy_does(rng):
    # NumPy sums float32 weights cast to float64 in buffers of np.getbufsize() elements
    # (8192), not in one pairwise tree: a batch over a buffer's length, weights of every scale
    n = int(rng.integers(2 * 8192 + 1, 40000))
    X, y = rng.normal(size=(n, 2)), rng.normal(size=(n, 1))
    w = np.empty(n, np.float32)
    model = dn.MLP([2, 1], dtype="float64", backend="cpu")
    opt = dn.optim.SGD(model.parameters(), lr=0.1)
    runs = []
    for run in (plan_mod.run_python, compiled.run_compiled):
        m, o = twin(model, opt)
        runs.append((run, plan_mod.build(Step(m, "mse", o), n, X, y, w), o))
    for _ in range(8):  # about a third of such draws differed in the mean's last bit
        w[:] = rng.random(n) * 2.0 ** rng.integers(-30, 30, n)
        got = []
        for run, plan, o in runs:
            plan_mod.steps_left(o)
            run(plan, None, 0, 1)
            got.append(plan.buffers["wn"].copy())
        assert np.array_equal(got[0], got[1])


def test_a_loop_of_fits_reuses_the_models_plans_on_each_fits_own_data(rng, monkeypatch):
    # fit after fit of one model and optimizer: a fit whose Step matches the last one's
    # (loss class, weighted or not) runs the kept plans rebound to its own data; every fit
    # trains on its own data, weights and loss, as the Python step does
    n = int(rng.integers(40, 80))
    X1, y1 = digits_like(rng, n=n)
    X2, y2 = digits_like(rng, n=n)
    onehot = np.eye(3, dtype=np.float32)[y1]
    w2 = rng.uniform(0.2, 1.0, n)
    seed = int(rng.integers(1 << 30))
    runs = [(X1, y1, {}), (X2, y2, {}), (X2, y2, {"sample_weight": w2}),
            (X1, onehot, {"loss": "mse"}), (X1, y1, {})]
    built = []
    build = plan_mod.build
    monkeypatch.setattr(plan_mod, "build", lambda *a: built.append(a[1]) or build(*a))
    results = {}
    for name in ("python", "compiled"):
        model = dn.MLP([6, 7, 5, 3], seed=seed, backend="cpu")
        opt = dn.optim.Adam(model.parameters(), lr=0.01)
        losses = [dn.fit(model, X, y, optimizer=opt, engine=name, epochs=1, batch_size=16,
                         progress=False, seed=seed, **kw).history["loss"][-1]
                  for X, y, kw in runs]
        results[name] = (model.params.copy(), losses)
    assert equal(results["python"][0], results["compiled"][0])
    assert equal(results["python"][1], results["compiled"][1])
    # new plans for the first fit, the weighted one, the mse one and the last (its Step is
    # the first's, but the kept plans are mse's by then); none for the second
    sizes = [16] + [n % 16] * (n % 16 > 0)
    assert sorted(built) == sorted(sizes * 4)


def test_a_models_kept_plans_hold_no_data_and_die_with_it(rng):
    import gc
    import weakref

    X, y = digits_like(rng, n=40)
    X = np.ascontiguousarray(X, np.float32)  # trained on in place
    model = dn.MLP([6, 7, 5, 3], seed=1, backend="cpu")
    dn.fit(model, X, y, engine="compiled", epochs=1, batch_size=16, progress=False)
    assert model not in engine._KEPT  # fit's own optimizer: new at the next fit
    dn.fit(model, X, y, optimizer=dn.optim.SGD(model.parameters(), lr=0.1),
           engine="compiled", epochs=1, batch_size=16, progress=False)
    assert model in engine._KEPT
    X_ref, model_ref = weakref.ref(X), weakref.ref(model)
    del X, y
    gc.collect()
    assert X_ref() is None  # the data set is the fit's, not the model's
    del model
    gc.collect()
    assert model_ref() is None


def test_kept_plans_are_rebuilt_when_the_model_dropped_their_buffers(rng, monkeypatch):
    # between two fits, forwards at five other batch sizes push the fit's batch size out of
    # the model's LRU of work buffers: the next fit must build its plans on the new buffers
    # (a kept plan would train in buffers the model no longer reads: backward, layer_outputs)
    X, y = digits_like(rng, n=int(rng.integers(40, 80)))
    seed = int(rng.integers(1 << 30))
    built = []
    build = plan_mod.build
    monkeypatch.setattr(plan_mod, "build", lambda *a: built.append(a[1]) or build(*a))
    out = {}
    for name in ("python", "compiled"):
        model = dn.MLP([6, 7, 7, 3], block="residual", norm="layernorm", seed=seed,
                       backend="cpu")
        opt = dn.optim.Adam(model.parameters(), lr=0.01)
        kw = dict(optimizer=opt, engine=name, epochs=1, batch_size=16, progress=False,
                  seed=seed)
        dn.fit(model, X, y, **kw)
        for k in range(1, 6):
            model.forward(X[:k], training=True)
        dn.fit(model, X, y, **kw)
        grads = model.layer_outputs()[-1].copy(), model.params.copy()
        out[name] = grads
    assert all(equal(a, b) for a, b in zip(out["python"], out["compiled"]))
    assert built.count(16) == 2  # the second fit's plan is built anew
