"""The step plan: its Python executor is today's Step, bit for bit; what it cannot describe it
names."""

from __future__ import annotations

import numpy as np
import pytest
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
from devnet import losses
from devnet.errors import ConfigError
from devnet.train import plan as plan_mod
from devnet.train.step import Step, StepHook


@pytest.mark.parametrize("case", CASES, ids=[f"{c[2]}-{c[3]['name']}-{c[5]}" for c in CASES])
def test_python_executor_is_the_step_bit_for_bit(rng, case):
    model, opt, loss, X, y, w = make(rng, *case)
    model2, opt2 = twin(model, opt)
    order = rng.permutation(len(X))
    bs = int(rng.integers(3, 7))
    ref = Step(model, loss, opt)
    step_loop(ref, X, y, w, order, bs)
    step = Step(model2, loss, opt2)
    plan_loop(step, X, y, w, order, bs)
    assert np.array_equal(model.params, model2.params, equal_nan=True)
    for k in opt.state:
        assert np.array_equal(opt.state[k], opt2.state[k], equal_nan=True), k
    assert np.array_equal(model.grads, model2.grads, equal_nan=True)
    assert np.array_equal(float(ref.running), float(step.running), equal_nan=True)
    assert opt.t == opt2.t == -(-len(X) // bs)
    assert np.array_equal(opt.hyper, opt2.hyper, equal_nan=True)


def test_plan_over_a_table_refill_matches_the_step(rng, monkeypatch):
    # Adam's bias corrections change every step: the table of per-step scalars runs out after
    # TABLE_ROWS steps and a block must stop there for the refill
    monkeypatch.setattr("devnet.optim.optimizers.TABLE_ROWS", 3)
    model, opt, loss, X, y, w = make(rng, *CASES[0], n=40)
    model2, opt2 = twin(model, opt)
    order = rng.permutation(len(X))
    step_loop(Step(model, loss, opt), X, y, w, order, 4)
    step = Step(model2, loss, opt2)
    plan = plan_mod.build(step, 4, X, y, w)
    s = 0
    while s < 10:
        k = min(10 - s, plan_mod.steps_left(opt2))
        assert k <= 3
        plan_mod.run_python(plan, order, s * 4, k)
        s += k
    assert np.array_equal(model.params, model2.params, equal_nan=True)


def test_plan_records_the_calls_of_one_step(rng):
    model, opt, loss, X, y, w = make(rng, *CASES[1], sizes=[3, 5, 4, 2])
    plan = plan_mod.build(Step(model, loss, opt), 4, X, y, w)
    kinds = [op.kind for op in plan.ops]
    assert kinds == ["gather", "standardize",
                     "matmul", "bias_act_fwd", "matmul", "bias_act_fwd", "matmul",
                     "bias_act_fwd", "normalise", "loss",
                     "act_bwd", "matmul", "matmul", "act_bwd", "matmul", "matmul", "act_bwd",
                     "matmul", "clip", "advance", "opt_step", "accumulate"]
    # the buffers are the model's and the optimizer's own: nothing copied
    assert plan.buffers["p"] is model.params and plan.buffers["g"] is model.grads
    assert plan.buffers["W0"].base is not None and np.shares_memory(plan.buffers["W0"],
                                                                     model.params)
    # a plan is data: its structure does not depend on the batch size
    assert plan.structure == plan_mod.build(Step(model, loss, opt), 3, X, y, w).structure


@pytest.mark.parametrize("case", CASES[:4], ids=[f"{c[2]}-{c[5]}" for c in CASES[:4]])
def test_ops_a_hook_and_a_step_subclass_declare_run_as_the_step(rng, case):
    # the estimators' Step: dL/dpred scaled, the L2 term on value and dW, logits recorded
    pytest.importorskip("sklearn")
    model, opt, loss, X, y, w = make(rng, *case)
    if w is not None and rng.uniform() < 0.5:  # weights of the other dtype: cast as the hook
        w = w.astype(np.float32 if w.dtype == np.float64 else np.float64)
    model2, opt2 = twin(model, opt)
    order = rng.permutation(len(X))
    bs = int(rng.integers(3, 7))
    seed = int(rng.integers(1 << 30))
    record = loss.target != "classes"  # the estimators record one-hot targets, not labels
    ref = objective_step(np.random.default_rng(seed), model, loss, opt, len(X), record)
    step = objective_step(np.random.default_rng(seed), model2, loss, opt2, len(X), record)
    assert plan_mod.unsupported(step) is None
    step_loop(ref, X, y, w, order, bs)
    plan_loop(step, X, y, w, order, bs)
    assert np.array_equal(model.params, model2.params, equal_nan=True)
    assert np.array_equal(model.grads, model2.grads, equal_nan=True)
    assert np.array_equal(float(ref.running), float(step.running), equal_nan=True)
    kinds = [op.kind for op in plan_mod.build(step, bs, X, y, w).ops]
    if record:
        rec, rec2 = ref.recorder, step.recorder
        assert rec.count == rec2.count == len(X)
        assert np.array_equal(rec.z, rec2.z) and np.array_equal(rec.t, rec2.t)
    assert kinds.count("record") == kinds.count("zero_value") == int(record)
    hook = step.hooks[0]
    assert kinds.count("scale") == (hook.grad_scale != 1.0)
    assert kinds.count("l2_penalty") == (hook.alpha > 0 or hook.value_scale != 1.0)


class _Hook(StepHook):
    pass


class _Recording(Step):
    def output_grad(self, pred, batch, collective=True):
        return super().output_grad(pred, batch, collective)


class _MyLoss(losses.MSE):
    pass


class _MyAdam(dn.optim.Adam):
    def step(self):
        super().step()


@pytest.mark.parametrize("case", DROPOUT_CASES,
                         ids=DROPOUT_IDS)
def test_python_executor_with_dropout_is_the_step_bit_for_bit(rng, case):
    # the masks of step index i are the Step's at index=i: two epochs from a drawn index,
    # the partial last batch included
    executor_matches_the_step(rng, case)


@pytest.mark.parametrize("case", DEEP_CASES,
                         ids=DEEP_IDS)
def test_python_executor_with_residual_and_layernorm_blocks_is_the_step(rng, case):
    executor_matches_the_step(rng, case)


def executor_matches_the_step(rng, case):
    model, opt, loss, X, y, w = make(rng, *case, n=int(rng.integers(20, 30)))
    model2, opt2 = twin(model, opt)
    order = rng.permutation(len(X))
    bs = int(rng.integers(3, 7))
    if len(X) % bs == 0:
        X, y, order = X[:-1], y[:-1], rng.permutation(len(X) - 1)
        w = None if w is None else w[:-1]
    ref, step = Step(model, loss, opt), Step(model2, loss, opt2)
    assert plan_mod.unsupported(step) is None
    first = int(rng.integers(0, 1 << 40))
    i = j = first
    for _ in range(2):
        i = step_loop(ref, X, y, w, order, bs, index=i)
        j = plan_loop(step, X, y, w, order, bs, index=j)
    assert i == j
    assert np.array_equal(model.params, model2.params, equal_nan=True)
    for k in opt.state:
        assert np.array_equal(opt.state[k], opt2.state[k], equal_nan=True), k
    assert np.array_equal(model.grads, model2.grads, equal_nan=True)
    assert np.array_equal(float(ref.running), float(step.running), equal_nan=True)
    assert opt.t == opt2.t


def test_a_dropout_plan_masks_the_hidden_layers_by_the_step_index(rng):
    case = DROPOUT_CASES[0]
    model, opt, loss, X, y, w = make(rng, *case, sizes=[3, 5, 4, 2])
    plan = plan_mod.build(Step(model, loss, opt), 4, X, y, w)
    kinds = [op.kind for op in plan.ops]
    assert kinds.count("bias_act_drop_fwd") == kinds.count("act_drop_bwd") == 2
    assert [op.attr("layer") for op in plan.ops if op.kind == "bias_act_drop_fwd"] == [0, 1]
    assert kinds.count("bias_act_fwd") == kinds.count("act_bwd") == 1  # the output layer
    # the index keys the masks: one step later, other masks, other parameters
    order = rng.permutation(len(X))
    first = int(rng.integers(0, 1000))
    got = []
    for index in (first, first, first + 1):
        m, o = twin(model, opt)
        plan_mod.steps_left(o)
        plan_mod.run_python(plan_mod.build(Step(m, loss, o), 4, X, y, w), order, 0, 3,
                            index=index)
        got.append(m.params.copy())
    assert np.array_equal(got[0], got[1]) and not np.array_equal(got[0], got[2])
    # not in training mode: no masks, the plain ops
    plain = plan_mod.build(Step(model, loss, opt, training=False), 4, X, y, w)
    assert "step_index" not in plain.buffers
    assert not {"bias_act_drop_fwd", "act_drop_bwd"} & {op.kind for op in plain.ops}


@pytest.mark.parametrize("index", [-1, 1 << 62, 2.0, True, "3"])
def test_a_bad_step_index_is_named(rng, index):
    model, opt, loss, X, y, w = make(rng, *DROPOUT_CASES[1], sizes=[3, 4, 2])
    plan = plan_mod.build(Step(model, loss, opt), 4, X, y, w)
    before = model.params.copy()
    with pytest.raises(ConfigError, match="index must be a non-negative integer"):
        plan_mod.run_python(plan, None, 0, 1, index=index)
    assert np.array_equal(model.params, before)


def test_a_deep_plan_has_the_layernorm_and_residual_calls(rng):
    # layer 0 plain (its input is the data), 1 and 2 residual blocks with a LayerNorm, the
    # output layer normed: the skip's gradient goes into the LayerNorm backward (fused) or,
    # without a norm, is added to dL/dX
    case = DEEP_CASES[2]
    model, opt, loss, X, y, w = make(rng, *case, sizes=[3, 5, 5, 5, 2])
    kinds = [op.kind for op in plan_mod.build(Step(model, loss, opt), 4, X, y, w).ops]
    assert kinds.count("layernorm_fwd") == kinds.count("layernorm_bwd") == 3
    assert kinds.count("bias_act_drop_fwd") == 3 and kinds.count("add") == 0
    model, opt, loss, X, y, w = make(rng, *DEEP_CASES[0], sizes=[3, 5, 5, 5, 2])
    plan = plan_mod.build(Step(model, loss, opt), 4, X, y, w)
    fwd = [op for op in plan.ops if op.kind == "bias_act_drop_fwd"]
    assert [(op.args[3], op.args[4], op.attr("p")) for op in fwd] == [("A0", "R1", 0.0),
                                                                      ("R1", "R2", 0.0)]
    assert [op.args for op in plan.ops if op.kind == "add"] == [("G1", "G2"), ("G0", "G1")]
    assert "layernorm_fwd" not in {op.kind for op in plan.ops}


@pytest.mark.parametrize("what, words", [
    ("hook", "_Hook"), ("loss", "_MyLoss"),
    ("optimizer", "overrides step()"), ("no_optimizer", "no optimizer"),
    ("subclass", "_Recording overrides output_grad")])
def test_what_the_plan_cannot_describe_is_named(what, words):
    # on a model with every option the plan describes: dropout, residual blocks, LayerNorm
    model = dn.MLP([3, 4, 4, 2], backend="cpu", dropout=0.25, block="residual",
                   norm="layernorm")
    opt = (_MyAdam if what == "optimizer" else dn.optim.Adam)(model.parameters())
    step = (_Recording if what == "subclass" else Step)(
        model, _MyLoss() if what == "loss" else "mse",
                None if what == "no_optimizer" else opt,
                hooks=(_Hook(),) if what == "hook" else ())
    assert words in plan_mod.unsupported(step)


def test_a_plain_step_is_described():
    model = dn.MLP([3, 4, 2], backend="cpu")
    assert plan_mod.unsupported(Step(model, "mse", dn.optim.SGD(model.parameters()))) is None
    # dropout, residual blocks and LayerNorm are described, in training mode and out of it
    for kw in (dict(dropout=0.5), dict(block="residual"), dict(norm="layernorm")):
        model = dn.MLP([3, 4, 4, 2], backend="cpu", **kw)
        for training in (True, False):
            assert plan_mod.unsupported(Step(model, "mse", dn.optim.SGD(model.parameters()),
                                             training=training)) is None
