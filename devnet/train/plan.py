"""The step plan: one training step as data -- the ordered kernel and matrix-product calls over
fixed buffers -- built once per (Step, batch size), run by a Python executor (here) or by the
compiled CPU epoch (``devnet.train.compiled``), which both read the same ``Op`` records.

A plan's step: gather the batch's rows of the data set into fixed buffers (by position in the
epoch's order), forward (matmul, bias + activation per layer), the loss and dL/dpred (weights
normalised to mean 1 as ``devnet.losses`` does), backward into the model's flat gradient
buffer, the optimizer's launches (clip scale, ``opt_advance``, the hyper step kernel, its
scalars read from ``hyper``), and the running loss ``running += value * weight`` on the device;
between them the ops the Step's hooks and a Step subclass declare (below). Every buffer is the
model's, the Step's, the optimizer's or a hook's own, so a plan run is bit for bit the Step it
describes.

Dropout (a training Step of a model with ``dropout > 0``): each hidden layer's bias +
activation and its backward are the dropout kernels Step's forward calls, their masks keyed
by (``dropout_seed``, the step's index, the layer) as ``scalar.dropout_key`` derives it; a
run is given the index of its first step (Step's ``index``: fit's global step count) and
step s of the run draws the masks of index + s.

Residual / LayerNorm blocks: ``Passes._forward_deep`` / ``_backward_deep``'s calls (the
LayerNorm kernels, the fused bias + activation (+ dropout) + skip add, the skip's gradient
added to dL/dX).

What a plan does not describe (``unsupported`` names it, and fit runs Step's own path):
a Step hook or Step subclass that does not declare its
ops (the data-parallel all-reduce), a Loss or Optimizer subclass with math of its own.

A hook (or a Step subclass that adds to ``output_grad`` / ``backpropagate``) declares what it
adds with ``plan_ops(stage, ctx)``: the ops (of the kinds below) it runs at ``stage``,
"output_grad" (after the loss: dL/dpred in ``grad``, the value in the step's ``value``) or
"param_grad" (after backward: the flat gradient in ``g``); ``ctx`` (``HookContext``) names the
step's buffers and registers the hook's own. The step's value is the executor's ``value``
(the driver's local): ``zero_value`` replaces it, ``l2_penalty`` scales it and adds the L2
term. Which hook adds what is the hook's business: the plan knows op kinds, not hook
classes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from devnet import losses as losses_mod
from devnet import optim as optim_mod
from devnet.errors import ConfigError
from devnet.kernels import scalar
from devnet.kernels import table as ktable
from devnet.kernels.reference import get_xp
from devnet.train import blas


class Op(NamedTuple):
    """One call of the step: ``kind`` (a key of ``EXECUTORS``), the names of the buffers it
    touches (``StepPlan.buffers``; None: not given) and its static attributes."""

    kind: str
    args: tuple
    attrs: tuple = ()  # (name, value) pairs: hashable, so a plan's structure is a cache key

    def attr(self, name):
        return dict(self.attrs)[name]


class StepPlan:
    """The ops of one step over ``buffers`` (name -> array) for batches of ``n`` rows.

    ``structure``: what a compiled executor is built from (the ops, the arrays' dtypes and
    ranks), the same for every batch size; computed once, with its hash (a run looks its
    driver up by it). ``optimizer``: whose ``hyper`` / table the step reads (the table is
    re-read at each run: a refill replaces it).
    """

    __slots__ = ("n", "ops", "buffers", "optimizer", "structure")

    def __init__(self, n: int, ops: tuple, buffers: dict, optimizer):
        self.n, self.ops, self.buffers, self.optimizer = n, ops, buffers, optimizer
        arrays = tuple((k, v.dtype.str, v.ndim) for k, v in sorted(buffers.items()))
        self.structure = _Structure((ops, arrays))

    def rebound(self, **arrays) -> StepPlan:
        """This plan over other arrays of the same dtypes and ranks in place of the named
        buffers (a later fit's data set, its Step's ``running`` and dL/dpred); None: a
        buffer the plan does not use (its ``W`` when unweighted)."""
        buffers = dict(self.buffers)
        for name, a in arrays.items():
            old = buffers.get(name)
            if (a is None) != (old is None) or a is not None and (
                    a.dtype != old.dtype or a.ndim != old.ndim or a.shape[1:] != old.shape[1:]):
                raise ConfigError(f"cannot rebind the plan's buffer {name!r}: it needs "
                                  f"{_describe(old)}, got {_describe(a)}")
            if a is not None:
                buffers[name] = a
        plan = object.__new__(StepPlan)
        plan.n, plan.ops, plan.buffers, plan.optimizer = self.n, self.ops, buffers, self.optimizer
        plan.structure = self.structure
        return plan


def _describe(a) -> str:
    return "none" if a is None else f"{a.ndim}-d {a.dtype} rows of shape {a.shape[1:]}"


class _Structure(tuple):
    """A plan's structure with its hash computed once: hashing it walks every field of every
    op, and each run looks its driver up by it."""

    def __new__(cls, items):
        self = super().__new__(cls, items)
        self._hash = tuple.__hash__(self)
        return self

    def __hash__(self):
        return self._hash


# --- eligibility ---------------------------------------------------------------------------

_LOSS_CLASSES = frozenset(losses_mod.LOSSES.values())
_STEP_METHOD = optim_mod.Optimizer.step
# the Step's methods a subclass may extend only by declaring its ops (``plan_ops``)
_STEP_METHODS = ("forward", "output_grad", "backpropagate", "__call__")


def _declares(obj) -> bool:
    return callable(getattr(obj, "plan_ops", None))


def step_overrides(step) -> list[str]:
    """The Step methods ``type(step)`` overrides (a plain Step: none)."""
    from devnet.train.step import Step

    return [m for m in _STEP_METHODS
            if getattr(type(step), m, None) is not getattr(Step, m, None)]


def unsupported(step) -> str | None:
    """Why ``step`` (a Step) cannot be described by a plan, or None when it can."""
    loss, opt = step.loss, step.optimizer
    if opt is None:
        return "the Step has no optimizer"
    opaque = [type(h).__name__ for h in step.hooks if not _declares(h)]
    if opaque:
        return (f"Step hooks ({', '.join(opaque)}) run Python code every step (they declare "
                "no plan_ops)")
    overrides = step_overrides(step)
    if overrides and not _declares(step):
        return (f"the Step subclass {type(step).__name__} overrides "
                f"{', '.join(overrides)} and declares no plan_ops")
    if type(loss) not in _LOSS_CLASSES:
        return f"the loss {type(loss).__name__} is not one of devnet.losses.LOSSES"
    if type(opt).step is not _STEP_METHOD:
        return f"the optimizer {type(opt).__name__} overrides step()"
    return None


# --- building ------------------------------------------------------------------------------

def build(step, n: int, X, y, w) -> StepPlan:
    """The plan of ``step`` (a Step, ``unsupported(step)`` None) for batches of ``n`` rows of
    the data set (X, y, w), host/device arrays of the model's device (w may be None).

    Uses the model's own work buffers for n (kept alive by the plan), the Step's dL/dpred
    buffer and ``running``, the optimizer's flat state buffers and ``hyper``.
    """
    model, loss, opt = step.model, step.loss, step.optimizer
    be, dt = model.backend, model.dtype
    work = model._buffers(n)
    ops, buf = [], {}
    buf.update(X=X, Y=y, x=be.empty((n, *X.shape[1:]), X.dtype),
               y=be.empty((n, *y.shape[1:]), y.dtype), running=step.running.reshape(1))
    has_w = w is not None
    if has_w:
        buf.update(W=w, w=be.empty(n, w.dtype), wn=be.empty(n, dt))
    ops.append(Op("gather", ("order", "X", "Y", "W" if has_w else None, "x", "y",
                             "w" if has_w else None)))
    inp = "x"
    if model._dev_mean is not None:  # input scaling: (x - mean) / scale into work.X
        buf.update(in_mean=model._dev_mean, in_scale=model._dev_scale,
                   xs=model._lazy(work, "X", n))
        ops.append(Op("standardize", ("x", "in_mean", "in_scale", "xs")))
        inp = "xs"
    drops = dropped(step)
    if any(drops):  # the masks' key: the model's seed, the run's first step index (``run_*``)
        buf.update(drop_seed=np.array([model.dropout_seed & _U64], np.uint64),
                   step_index=np.zeros(1, np.int64))
    inputs, mm_in = [], []  # each layer's input, and its product's (its LayerNorm's output)
    for i, layer in enumerate(model.layers):
        buf.update({f"W{i}": layer.W, f"b{i}": layer.b, f"dW{i}": layer.dW,
                    f"db{i}": layer.db, f"A{i}": work.A[i], f"G{i}": work.G[i]})
        z = None
        if work.Z[i] is not None:
            buf[f"Z{i}"], z = work.Z[i], f"Z{i}"
        inputs.append(inp)
        if layer.norm:  # Passes._forward_deep: U <- LayerNorm(input), the product's input
            buf.update({f"U{i}": work.U[i], f"mu{i}": work.mean[i], f"rs{i}": work.rstd[i],
                        f"dU{i}": work.dU[i], f"ga{i}": layer.gamma, f"be{i}": layer.beta,
                        f"dga{i}": layer.dgamma, f"dbe{i}": layer.dbeta})
            ops.append(Op("layernorm_fwd", (inp, f"ga{i}", f"be{i}", f"U{i}", f"mu{i}",
                                            f"rs{i}"), (("eps", LAYERNORM_EPS),)))
            inp = f"U{i}"
        mm_in.append(inp)
        ops.append(_product(buf, inp, f"W{i}", f"A{i}", False, False))
        inp = f"A{i}"
        if drops[i] or layer.residual:
            # A <- dropout(act(A + b)); a residual block's output R <- its input + A
            r_in = r_out = None
            if layer.residual:
                buf.update({f"R{i}": work.R[i], f"D{i}": work.D[i]})
                r_in, inp = inputs[i], f"R{i}"
                r_out = inp
            key = ("drop_seed", "step_index") if drops[i] else (None, None)
            ops.append(Op("bias_act_drop_fwd", (f"A{i}", f"b{i}", z, r_in, r_out, *key),
                          (("act", layer.activation), ("alpha", model.alpha),
                           ("p", drops[i]), ("layer", i))))
        else:
            ops.append(Op("bias_act_fwd", (f"A{i}", f"b{i}", z),
                          (("act", layer.activation), ("alpha", model.alpha))))
    pred = inp
    buf["grad"] = step.grad_buffer(n)
    target = "y"
    if loss.target != "classes" and y.ndim == 1:  # (n,) targets of a one-output model
        buf["yk"] = buf["y"].reshape(-1, 1)
        target = "yk"
    if has_w:
        ops.append(Op("normalise", ("w", "wn")))
    # the loss's checks that read no data (a Huber delta that is 0 in pred's dtype): the
    # Python step runs them at every call, a plan once, when it is built
    loss._check_arrays(buf[pred], None, buf["grad"], None, get_xp(buf[pred]))
    kernel = loss.kernel
    labels = kernel in ktable.LABEL_LOSSES and y.ndim == 1
    param = next(iter(loss.params().values()), 1.0)
    # the mean's scale depends on n: an argument, so one compiled driver serves every size
    buf["loss_scale"] = np.array([float(loss._scale(buf[pred]))])
    ops.append(Op("loss", (pred, target, "grad", "wn" if has_w else None, "loss_scale"),
                  (("kernel", kernel), ("labels", labels), ("param", float(param)))))
    buf.update(p=opt.params.data, g=opt.params.grad)
    names = {"pred": pred, "target": target, "grad": "grad", "w": "w" if has_w else None,
             "x": "x", "p": "p", "g": "g"}
    ops.extend(_declared(step, "output_grad", buf, names))
    ops.extend(_backward(model, buf, inputs, mm_in, drops))
    ops.extend(_declared(step, "param_grad", buf, names))
    ops.extend(_optimizer(opt, buf))
    ops.append(Op("accumulate", ("running",)))
    return StepPlan(n, tuple(ops), buf, opt)


class HookContext:
    """What a hook's (or a Step subclass's) ``plan_ops(stage, ctx)`` builds on: ``stage``,
    ``ctx[name]`` the plan's buffer name of the step's ``pred``, ``target``, ``grad``
    (dL/dpred), ``w`` (the batch's raw sample weights; None when unweighted), ``x`` (the
    batch), ``p`` / ``g`` (the flat parameters and gradient); ``ctx.array(name)`` that buffer;
    ``ctx.buffer(name, array)`` registers one of the hook's own arrays (its state, its
    scalars) and returns the plan's name for it, private to the hook."""

    def __init__(self, stage: str, buf: dict, names: dict, prefix: str):
        self.stage, self._buf, self._names, self._prefix = stage, buf, names, prefix

    def __getitem__(self, name: str):
        return self._names[name]

    def array(self, name: str):
        key = self._names[name]
        return None if key is None else self._buf[key]

    def buffer(self, name: str, array) -> str:
        key = self._prefix + name
        self._buf[key] = array
        return key


def _declared(step, stage: str, buf: dict, names: dict) -> list:
    """The ops the hooks then the Step subclass declare at ``stage``, in Step's order: a
    subclass wraps Step's method, so its additions follow the hooks'."""
    ops = []
    for i, hook in enumerate(step.hooks):
        ops.extend(hook.plan_ops(stage, HookContext(stage, buf, names, f"h{i}_")))
    if _declares(step):
        ops.extend(step.plan_ops(stage, HookContext(stage, buf, names, "st_")))
    return ops


def dropped(step) -> list:
    """Per layer of ``step``'s model, the dropout rate its training forward applies (0.0:
    none; the output layer never drops, nor does a Step not in training mode)."""
    model = step.model
    if not (step.training and model.dropout > 0):
        return [0.0] * len(model.layers)
    return [float(layer.dropout) for layer in model.layers]


def inputs_key(step) -> tuple:
    """What a plan (or a captured graph) takes from ``step`` besides its buffers' contents and
    a caller may change between runs (a callback between epochs): the flat parameters, the
    optimizer and its clipping, the input scaling's arrays, the dropout seed and rates, the
    leaky slope, the loss's parameters. Compare two with ``same_inputs``."""
    model, opt = step.model, step.optimizer
    return (model.params, opt, opt is not None and opt._clip is not None, model._dev_mean,
            model._dev_scale, model.dropout_seed, tuple(dropped(step)), model.alpha,
            tuple(step.loss.params().items()))


def same_inputs(a: tuple, b: tuple) -> bool:
    """Whether two ``inputs_key``s are the same: arrays and objects by identity (the key
    holds them, so no other array can take their place), numbers by value."""
    return len(a) == len(b) and all(
        x is y or (isinstance(x, (int, float, tuple)) and type(x) is type(y) and x == y)
        for x, y in zip(a, b))


def dropout_keys(step, index: int) -> list:
    """The per-layer keys (None: no dropout) of the masks ``step``'s forward at ``index``
    draws: ``Passes._forward_deep``'s."""
    return [scalar.dropout_key(step.model.dropout_seed, index, i) if p > 0 else None
            for i, p in enumerate(dropped(step))]


_U64 = (1 << 64) - 1
LAYERNORM_EPS = 1e-5  # Passes' LayerNorm calls: the kernels' default


def _backward(model, buf, inputs, mm_in, drops):
    """Passes.backward's calls (no input gradient): dL/dZ, db, dW, dL/d(previous output);
    ``drops``: the layers' dropout rates (their backward masks dL/dZ as the forward did);
    ``inputs`` / ``mm_in``: each layer's input and its product's input. Through a LayerNorm
    and a residual block as ``Passes._backward_deep``: the skip's gradient added to dL/dX."""
    ops, g = [], "grad"
    for i in range(len(model.layers) - 1, -1, -1):
        layer = model.layers[i]
        # a residual block keeps G (the skip's gradient) and puts dL/dZ beside it; identity
        # without dropout: dL/dZ is G itself (Passes._dz_buffer)
        dz = f"D{i}" if layer.residual else \
            g if layer.activation == "identity" and not layer.dropout else f"G{i}"
        z = f"Z{i}" if f"Z{i}" in buf else None
        if drops[i]:
            ops.append(Op("act_drop_bwd", (g, f"A{i}", z, dz, f"db{i}", "drop_seed",
                                           "step_index"),
                          (("act", layer.activation), ("alpha", model.alpha),
                           ("p", drops[i]), ("layer", i))))
        else:
            ops.append(Op("act_bwd", (g, f"A{i}", z, dz, f"db{i}"),
                          (("act", layer.activation), ("alpha", model.alpha))))
        ops.append(_product(buf, mm_in[i], dz, f"dW{i}", True, False))
        if i > 0:
            dx, skip = f"G{i - 1}", g if layer.residual else None
            if layer.norm:  # dX <- LayerNorm backward of dU (+ the skip's G), fused
                ops.append(_product(buf, dz, f"W{i}", f"dU{i}", False, True))
                ops.append(Op("layernorm_bwd", (f"dU{i}", inputs[i], f"mu{i}", f"rs{i}",
                                                f"ga{i}", dx, f"dga{i}", f"dbe{i}", skip)))
            else:
                ops.append(_product(buf, dz, f"W{i}", dx, False, True))
                if skip is not None:
                    ops.append(Op("add", (dx, skip)))
            g = dx
    return ops


def _product(buf, a, b, out, ta: bool, tb: bool) -> Op:
    """``out <- a(.T) @ b(.T)``, with the BLAS call NumPy's matmul makes for these shapes
    (``form``), which a compiled executor must make too to get the same bits: ``dot`` for a
    1x1 output, ``gevm`` / ``gemv`` (a vector times a matrix, a matrix times a vector) for a
    one-row / one-column output, else ``gemm`` (an inner dimension of 1 is one product per
    element: exact either way). args: a, b, out, then the 1-D views of the vector operands
    and of out (None where unused), registered in ``buf``."""
    x, y = buf[a].T if ta else buf[a], buf[b].T if tb else buf[b]
    dm, dn, dp = x.shape[0], x.shape[1], y.shape[1]
    form = "dot" if dm == 1 and dp == 1 else "gemm" if dn == 1 else \
        "gevm" if dm == 1 else "gemv" if dp == 1 else "gemm"
    views = [None, None, None]
    for k, (name, vector) in enumerate(((a, form in ("dot", "gevm")),
                                        (b, form in ("dot", "gemv")), (out, form != "gemm"))):
        if vector:
            views[k] = f"{name}_1d"
            buf[views[k]] = buf[name].reshape(-1)  # a view: the buffers are C-contiguous
    # and the call NumPy's matmul makes to its own BLAS (``devnet.train.blas``): its kind is
    # structure, its integer arguments a buffer (they change with the batch size)
    kind, ints = blas.call(x, y, buf[out])
    buf[f"mm_{a}_{b}_{out}"] = np.array(ints, dtype=np.int64)
    return Op("matmul", (a, b, out, *views, f"mm_{a}_{b}_{out}"),
              (("trans", (ta, tb)), ("form", form), ("blas", kind)))


def _optimizer(opt, buf):
    """Optimizer.step's launches: opt_clip (with clip_norm), opt_advance, the hyper step."""
    buf.update(p=opt.params.data, g=opt.params.grad, hyper=opt.hyper)
    ops = []
    if opt.clip_norm is not None:
        ops.append(Op("clip", ("g", "hyper")))
    ops.append(Op("advance", ("hyper", "table")))
    entry, names, flags = opt._launch
    states = []
    for name in names:
        arr = opt.state.get(name)
        if arr is not None:
            buf[f"s_{name}"] = arr
        states.append(None if arr is None else f"s_{name}")
    step_name = ktable.STEP_HYPER[entry]
    row = ktable.STEPS[step_name]
    present = tuple(states[row.buffers[1:].index(b)] is not None
                    for b, _ in ktable.gated_scalars(step_name))
    zero_at = tuple(row.scalars.index(h) for _, h in ktable.gated_scalars(step_name))
    ops.append(Op("opt_step", ("p", "g", *states, "hyper"),
                  (("kernel", step_name), ("slots", ktable.hyper_slots(step_name)),
                   ("flags", tuple(bool(f) for f in flags)),
                   ("off", tuple(k for k, given in zip(zero_at, present) if not given)))))
    return ops


# --- the Python executor -------------------------------------------------------------------

def _arr(env, name):
    return None if name is None else env[name]


def _gather(be, env, op, lo):
    order, X, Y, W, x, y, w = (_arr(env, a) for a in op.args)
    idx = order[lo:lo + x.shape[0]]
    be.take_rows(X, idx, x)
    be.take_rows(Y, idx, y)
    if W is not None:
        be.take_rows(W, idx, w)


def _standardize(be, env, op, lo):
    x, mean, scale, out = (env[a] for a in op.args)
    be.xp.subtract(x, mean, out=out)
    be.xp.divide(out, scale, out=out)


def _matmul(be, env, op, lo):
    a, b, out = (env[n] for n in op.args[:3])
    ta, tb = op.attr("trans")
    be.matmul(a.T if ta else a, b.T if tb else b, out=out)


def _bias_act_fwd(be, env, op, lo):
    A, b, Z = (_arr(env, a) for a in op.args)
    be.raw_kernels.bias_act_fwd(op.attr("act"), A, b, Z, op.attr("alpha"))


def _drop_key(env, op) -> int:
    # the key of the layer's masks at this step (the run's first index + the step's offset)
    seed, index = env[op.args[-2]], env[op.args[-1]]
    return scalar.dropout_key(int(seed[0]), int(index[0]) + env["s"], op.attr("layer"))


def _bias_act_drop_fwd(be, env, op, lo):
    # args (A, b, Z, R, out, seed, index): a residual block's R (its input) and out; p = 0
    # (a residual block without dropout) draws no key: Passes passes 0
    A, b, Z, R, out = (_arr(env, a) for a in op.args[:5])
    p = op.attr("p")
    be.raw_kernels.bias_act_drop_fwd(op.attr("act"), A, b, Z, op.attr("alpha"), p,
                                     _drop_key(env, op) if p > 0 else 0, R, out, row0=0)


def _act_drop_bwd(be, env, op, lo):
    G, A, Z, dZ, db = (_arr(env, a) for a in op.args[:5])
    be.raw_kernels.act_drop_bwd(op.attr("act"), G, A, Z, dZ, db, op.attr("alpha"),
                                op.attr("p"), _drop_key(env, op), row0=0)


def _layernorm_fwd(be, env, op, lo):
    X, gamma, beta, U, mean, rstd = (env[a] for a in op.args)
    be.raw_kernels.layernorm_fwd(X, gamma, beta, U, mean, rstd, op.attr("eps"))


def _layernorm_bwd(be, env, op, lo):
    be.raw_kernels.layernorm_bwd(*(_arr(env, a) for a in op.args))


def _add(be, env, op, lo):
    # args (out, other): out += other, NumPy's add (a residual block's skip gradient)
    out, other = (env[a] for a in op.args)
    be.xp.add(out, other, out=out)


def _normalise(be, env, op, lo):
    w, wn = (env[a] for a in op.args)
    xp = be.xp
    mean = w.mean(dtype=xp.float64)  # as devnet.losses._normalised_weights
    wn[...] = (w / xp.where(mean > 0, mean, 1.0)).astype(wn.dtype, copy=False)


def _loss(be, env, op, lo):
    pred, target, grad, w, scale = (_arr(env, a) for a in op.args)
    kernel = getattr(be.raw_kernels, op.attr("kernel"))
    params = {}
    row = ktable.LOSSES[op.attr("kernel")]
    if row.params:
        params = {row.params[0][0]: op.attr("param")}
    env["value"] = kernel(pred, target, grad, w, float(scale[0]), **params)


def _act_bwd(be, env, op, lo):
    G, A, Z, dZ, db = (_arr(env, a) for a in op.args)
    be.raw_kernels.act_bwd(op.attr("act"), G, A, Z, dZ, db, op.attr("alpha"))


def _clip(be, env, op, lo):
    be.raw_kernels.opt_clip(env["g"], env["hyper"])


def _advance(be, env, op, lo):
    be.raw_kernels.opt_advance(env["hyper"], env["table"])


def _opt_step(be, env, op, lo):
    arrays = [_arr(env, a) for a in op.args]
    kernel = getattr(be.raw_kernels, op.attr("kernel") + "_hyper")
    kernel(*arrays, *op.attr("flags"))


def _accumulate(be, env, op, lo):
    env["running"] += env["value"] * env["weight"] if env["weight"] != 1.0 else env["value"]


# the ops hooks declare (``plan_ops``)

def _scale(be, env, op, lo):
    # args (array, scale): array *= scale[0], as a Python float (NumPy's weak scalar: the
    # product in the array's dtype)
    env[op.args[0]] *= float(env[op.args[1]][0])


def _zero_value(be, env, op, lo):
    env["value"] = 0.0  # the CPU loss kernels' value is a float


def _record(be, env, op, lo):
    # args (pred, target, z, t, at): the batch's pred (n, k) and target into columns
    # at[0] .. at[0] + n of z and t (k, capacity), then at[0] += n
    pred, target, z, t, at = (env[a] for a in op.args)
    start = int(at[0])
    stop = start + pred.shape[0]
    z[:, start:stop] = pred.T
    t[:, start:stop] = target.reshape(pred.shape).T
    at[0] = stop


def _l2_penalty(be, env, op, lo):
    # args (p, g, spans, w, x, scalars [alpha, value_scale], w_cast): the l2_penalty kernel
    # over the batch's weight sum (its row count when w is None); it sets the value
    p, g, spans, w, x, scal, _ = (_arr(env, a) for a in op.args)
    if w is not None and w.dtype != p.dtype:
        w = w.astype(p.dtype)
    env["value"] = be.raw_kernels.l2_penalty(p, g, spans, float(scal[0]), w, x.shape[0],
                                             env["value"], float(scal[1]))


EXECUTORS = {"gather": _gather, "standardize": _standardize, "matmul": _matmul,
             "bias_act_fwd": _bias_act_fwd, "normalise": _normalise, "loss": _loss,
             "act_bwd": _act_bwd, "clip": _clip, "advance": _advance, "opt_step": _opt_step,
             "accumulate": _accumulate, "scale": _scale, "zero_value": _zero_value,
             "record": _record, "l2_penalty": _l2_penalty,
             "bias_act_drop_fwd": _bias_act_drop_fwd, "act_drop_bwd": _act_drop_bwd,
             "layernorm_fwd": _layernorm_fwd, "layernorm_bwd": _layernorm_bwd, "add": _add}
"""Op kind -> its Python call ``(backend, env, op, lo)``; the compiled executor has one
source template per kind (``devnet.train.codegen.EMITTERS``)."""


def run_python(plan: StepPlan, order, row0: int, count: int, weight: float = 1.0,
               index: int = 0) -> None:
    """Run ``count`` steps of ``plan``: step s gathers positions ``row0 + s * n ..`` of
    ``order`` (an int array of data-set rows). ``weight``: each step's loss weight in the
    running sum; ``index``: the first step's index (Step's ``index``: step s draws the
    dropout masks of index + s). The optimizer's table must hold ``count`` more steps
    (``steps_left``)."""
    opt = plan.optimizer
    be = opt.backend
    order = order_array(order, len(plan.buffers["X"]))
    set_index(plan, index)
    env = dict(plan.buffers, order=order, table=opt._table, weight=weight)
    with be.scope():
        for s in range(count):
            env["s"] = s
            for op in plan.ops:
                EXECUTORS[op.kind](be, env, op, row0 + s * plan.n)
            opt._t += 1


def set_index(plan: StepPlan, index: int) -> None:
    """Write the index of a run's first step where ``plan`` draws dropout masks."""
    if not (isinstance(index, (int, np.integer)) and not isinstance(index, bool)
            and 0 <= index < 1 << 62):
        raise ConfigError(f"index must be a non-negative integer below 2**62 (the first "
                          f"step's index, which keys the dropout masks), got {index!r}")
    buf = plan.buffers.get("step_index")
    if buf is not None:
        buf[0] = index


def steps_left(opt) -> int:
    """Steps the optimizer's device table covers from now (syncing it first if needed)."""
    if opt._stale or opt._t >= opt._refill_at:
        opt._sync_device()
    left = opt._refill_at - opt._t
    return left if left != float("inf") else 1 << 62


def order_array(order, n: int) -> np.ndarray:
    """The epoch's order as an int64 host array (0..n-1 when None)."""
    return np.arange(n, dtype=np.int64) if order is None else np.asarray(order, np.int64)
