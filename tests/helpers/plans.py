"""Models, data and step loops shared by the step plan's and the compiled epoch's tests."""

from __future__ import annotations

import copy

import numpy as np

import devnet as dn
from devnet import losses
from devnet.train import plan as plan_mod

# (activation, output activation, loss, optimizer kwargs, weights, dtype, input scaling)
CASES = [
    ("relu", "identity", "cross_entropy", dict(name="adam"), False, "float32", False),
    ("tanh", "identity", "mse", dict(name="sgd", momentum=0.9, clip_norm=0.3), True,
     "float64", True),
    ("gelu", "sigmoid", "huber", dict(name="rmsprop", weight_decay=0.1, centered=True),
     False, "float32", False),
    ("leaky_relu", "identity", "binary_cross_entropy", dict(name="adamw", amsgrad=True),
     True, "float64", False),
    ("silu", "identity", "poisson", dict(name="sgd", momentum=0.5, nesterov=True,
                                         weight_decay=0.01), False, "float32", True),
    ("sigmoid", "identity", "mae", dict(name="adam", clip_norm=0.05, weight_decay=1e-3),
     True, "float32", False),
]


# dropout in training: (activation, output activation, loss, optimizer kwargs, weights,
# dtype, input scaling, dropout rate); every hidden activation (identity's dL/dZ gets a buffer
# of its own once masked), both dtypes, with and without weights
DROPOUT_CASES = [
    ("relu", "identity", "cross_entropy", dict(name="adam"), True, "float32", False, 0.5),
    ("tanh", "identity", "mse", dict(name="sgd", momentum=0.9, clip_norm=0.3), False,
     "float64", True, 0.1),
    ("gelu", "identity", "huber", dict(name="rmsprop", centered=True), True, "float32", False,
     0.1),
    ("silu", "sigmoid", "mse", dict(name="adamw"), False, "float64", False, 0.5),
    ("leaky_relu", "identity", "cross_entropy", dict(name="adam", weight_decay=1e-3), False,
     "float64", False, 0.5),
    ("sigmoid", "identity", "binary_cross_entropy", dict(name="sgd", momentum=0.5), True,
     "float32", True, 0.1),
    ("identity", "identity", "mse", dict(name="adam", amsgrad=True), True, "float64", False,
     0.5),
]


# residual / LayerNorm blocks: the same fields, then the block and the norm; with and without
# dropout (a residual block without it still runs the fused kernel, its dropout off)
DEEP_CASES = [
    ("relu", "identity", "cross_entropy", dict(name="adam"), True, "float32", False, 0.0,
     "residual", None),
    ("tanh", "identity", "mse", dict(name="sgd", momentum=0.9, clip_norm=0.3), False,
     "float64", True, 0.0, "plain", "layernorm"),
    ("gelu", "identity", "huber", dict(name="adamw"), True, "float32", False, 0.3,
     "residual", "layernorm"),
    ("identity", "sigmoid", "mse", dict(name="rmsprop"), False, "float64", False, 0.5,
     "residual", "layernorm"),
    ("silu", "identity", "binary_cross_entropy", dict(name="adam", amsgrad=True), True,
     "float64", True, 0.0, "residual", "layernorm"),
    ("leaky_relu", "identity", "cross_entropy", dict(name="sgd"), False, "float32", False,
     0.1, "plain", "layernorm"),
]

DROPOUT_IDS = [f"{c[0]}-{c[5]}-p{c[7]}" for c in DROPOUT_CASES]
DEEP_IDS = [f"{c[0]}-{c[8]}-{c[9]}-p{c[7]}" for c in DEEP_CASES]


def make(rng, act, out_act, loss, opt_kw, weighted, dtype, scaled, dropout=0.0,
         block="plain", norm=None, n=23, sizes=None):
    """A model (``dropout``: its rate, the masks' seed drawn; ``block``, ``norm``: the MLP's),
    its optimizer, loss and a data set of n rows for that loss."""
    k = 1 if loss == "binary_cross_entropy" else int(rng.integers(2, 5))
    if sizes is None and block == "residual":  # hidden layers of one width: residual blocks
        h = int(rng.integers(3, 9))
        sizes = [int(rng.integers(2, 7)), h, h, h, k]
    sizes = sizes or [int(rng.integers(2, 7)), int(rng.integers(2, 9)), int(rng.integers(2, 9)),
                      k]
    model = dn.MLP(sizes, activation=act, output_activation=out_act, dtype=dtype,
                   seed=int(rng.integers(1 << 30)), backend="cpu", dropout=dropout,
                   block=block, norm=norm,
                   dropout_seed=int(rng.integers(1 << 62)) * int(rng.integers(1, 4)))
    if scaled:
        model.set_input_scaling(rng.normal(size=sizes[0]), rng.uniform(0.5, 2, sizes[0]))
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    k = sizes[-1]
    if loss == "cross_entropy":
        y = rng.integers(0, k, n).astype(np.int64)
    elif loss == "binary_cross_entropy":
        y = rng.integers(0, 2, n).astype(dtype)  # (n,) with one output
    elif loss == "poisson":
        y = rng.poisson(2.0, size=(n, k)).astype(dtype)
    else:
        y = rng.normal(size=(n, k)).astype(dtype)
    w = rng.uniform(0.1, 2.0, n).astype(dtype) if weighted else None
    kw = dict(opt_kw)
    opt = dn.optim.get(kw.pop("name"), model.parameters(), lr=0.05, **kw)
    return model, opt, losses.get(loss), X, y, w


def twin(model, opt):
    """A deep copy of the model and of its optimizer over the copy."""
    other = copy.deepcopy(model)
    kw = opt.hyperparameters()
    return other, type(opt)(other.parameters(), lr=opt.base_lr, **kw)


def step_loop(step, X, y, w, order, bs, index=0):
    """Today's Step over every batch of ``order`` (the partial last one weighted by its
    share, as fit does), the first at step index ``index`` (fit's global step count: it keys
    the dropout masks); returns the next step's index."""
    n = len(order)
    for lo in range(0, n, bs):
        idx = order[lo:lo + bs]
        step(X[idx], y[idx], None if w is None else w[idx], weight=len(idx) / bs, index=index)
        index += 1
    return index


def plan_loop(step, X, y, w, order, bs, run=plan_mod.run_python, index=0):
    """The same steps through plans: one of the full batch size, one of the remainder's;
    returns the next step's index."""
    full, rem = divmod(len(order), bs)
    plan_mod.steps_left(step.optimizer)
    run(plan_mod.build(step, bs, X, y, w), order, 0, full, index=index)
    if rem:
        run(plan_mod.build(step, rem, X, y, w), order, full * bs, 1, rem / bs,
            index=index + full)
    return index + full + (rem > 0)


def objective_step(rng, model, loss, opt, n, record=True):
    """The estimators' Step: a RecordingStep (logits and targets into a ClippedLoss of ``n``
    rows; ``record``) with scikit-learn's objective hook, its scales and alpha drawn (a grad
    scale of 1 and alpha 0 leave their ops out, so both ways are drawn)."""
    from devnet.sklearn import _logloss, _optim

    grad_scale = float(rng.choice([1.0, 0.5, 3.0]))
    alpha = float(rng.choice([0.0, rng.uniform(1e-3, 0.1)]))
    hook = _optim.SklearnObjective(model, float(rng.choice([1.0, 0.5, 2.0])), grad_scale,
                                   alpha)
    recorder = _logloss.ClippedLoss(model.backend, "logistic", n, model.n_out,
                                    model.dtype) if record else None
    return _logloss.RecordingStep(model, loss, opt, recorder=recorder, hooks=[hook])
