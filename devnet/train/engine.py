"""Which engine runs fit's steps: Step's own Python path, one step per call; the compiled CPU
epoch (``devnet.train.compiled``), one call per block of steps between the guard's checks; or,
on CUDA, the step captured once as a CUDA graph and replayed per step (``devnet.train.graph``).

``choose`` decides once per fit and says why; ``CompiledEpoch`` runs the blocks through the
Step's plans (one for full batches, one for the partial last batch), splitting a block where
the optimizer's table of per-step scalars needs a refill.
"""

from __future__ import annotations

import threading
import weakref
from typing import NamedTuple

import numpy as np

from devnet.errors import ConfigError, lookup
from devnet.train import compiled
from devnet.train import graph as graph_mod
from devnet.train import plan as plan_mod
from devnet.train.step import Step

ENGINES = ("auto", "python", "compiled", "graph")


class Choice(NamedTuple):
    """The engine fit runs (``name``: "python", "compiled" or "graph"), why, and what runs
    it: ``runner`` the compiled epoch (its blocks), or ``step`` the per-step callable (the
    Step, or its GraphStep)."""

    name: str
    reason: str
    runner: object = None
    step: object = None


def check_engine(engine) -> str:
    return lookup({e: e for e in ENGINES}, engine, "engine")


def _refuse(engine: str, reason: str):
    raise ConfigError(f"engine={engine!r} cannot run this fit: {reason}; use engine='auto' "
                      "(falls back to the Python step) or 'python'")


def choose(engine: str, step, feed, batch_size: int, blockers=(), weighted: bool = False,
           batch_weight: str = "share", step_index: bool = False,
           keep_plans: bool = False) -> Choice:
    """The engine for ``fit(engine=...)``: "python" runs Step per step; "compiled" the
    compiled CPU epoch and "graph" the CUDA graph, each a ConfigError naming the reason where
    it cannot; "auto" whichever of the two the device has, where it can. ``blockers``: the
    caller's reasons against the compiled epoch (callbacks per batch, data parallelism);
    ``weighted``: the batches carry sample weights; ``batch_weight``: how the compiled epoch
    weighs a batch's loss in the running sum (``CompiledEpoch``); ``step_index``: the caller
    gives ``runner.run`` each block's step index (``CompiledEpoch.run``'s ``index``), which
    keys the dropout masks: without it a model with dropout runs the Python step.
    ``keep_plans``: keep the compiled epoch's plans for the model's next fit with the same
    optimizer (where the optimizer is the user's: one the caller built is new at each call,
    and plans over it would only hold its state)."""
    engine = check_engine(engine)
    if engine == "python":
        return Choice("python", "engine='python' was asked for", step=step)
    on_gpu = getattr(step.model.backend, "graph_reason", None) is not None  # CUDA backends
    if engine == "graph" or (engine == "auto" and on_gpu):
        ok, why = graph_mod.graph_eligible(step, weighted)
        if ok:
            return Choice("graph", why, step=graph_mod.GraphStep(step, batch_size))
        if engine == "graph":
            _refuse(engine, why)
        return Choice("python", why, step=step)
    reason = next((b for b in blockers if b), None) or plan_mod.unsupported(step) or \
        compiled.unavailable(step.model.backend) or compiled.parallel_reason(step, batch_size)
    if reason is None and not step_index and any(plan_mod.dropped(step)):
        reason = (f"dropout={step.model.dropout}: the caller does not give the compiled "
                  "epoch the step index that keys the masks")
    if reason is None and not isinstance(getattr(feed, "X", None), np.ndarray):
        reason = "the data is staged batch by batch, not held in host arrays"
    if reason is not None:
        if engine == "compiled":
            _refuse(engine, reason)
        return Choice("python", reason, step=step)
    return Choice("compiled", "every op of the step is in the compiled plan",
                  CompiledEpoch(step, feed, batch_size, batch_weight, keep_plans), step)


# A model's plans, kept from one fit to the next with the same optimizer (a loop of short fits:
# building an epoch's two plans costs about a tenth of a digits epoch). Kept without the fit's
# data: each fit rebinds its data set, its Step's running sum and dL/dpred. Only a plain
# Step's (a hook's buffers are its own). A plan holds arrays and the optimizer, never the
# model: the model's death drops it.
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_KEPT_LOCK = threading.Lock()


def _kept_plan(step, rows: int, key: tuple, feed, keep: bool) -> plan_mod.StepPlan:
    """``step``'s plan for batches of ``rows`` over ``feed``'s data: the model's kept plan,
    rebound, where its Step matched this one; else a new plan, then kept if ``keep``."""
    data = {"X": feed.X, "Y": feed.y, "W": feed.w, "running": step.running.reshape(1),
            "grad": step.grad_buffer(rows)}
    plain = keep and not step.hooks and type(step) is Step
    kept = None
    if plain:
        # the model's buffers for this batch size now: the plan's only while the model's LRU
        # of batch sizes has kept them (another fit or forward may have dropped them since)
        ident, work = (type(step.loss), step.training), step.model._buffers(rows)
        with _KEPT_LOCK:
            kept = _KEPT.get(step.model, {}).get(rows)
    if kept is not None and kept[0] == ident and kept[3] is work and \
            plan_mod.same_inputs(kept[1], key):
        try:
            return kept[2].rebound(**data)
        except ConfigError:  # other data dtypes or row shapes: a new plan
            pass
    plan = plan_mod.build(step, rows, feed.X, feed.y, feed.w)
    if plain:
        shell = plan.rebound(**{k: None if a is None else _shell(a) for k, a in data.items()})
        with _KEPT_LOCK:
            _KEPT.setdefault(step.model, {})[rows] = (ident, key, shell, work)
    return plan


def _shell(a):
    """An empty array of ``a``'s dtype and row shape (keeps no reference to ``a``)."""
    return np.empty((0, *a.shape[1:]), a.dtype)


class CompiledEpoch:
    """Runs steps of an epoch (positions in its order) with the compiled driver.

    ``feed``: the epoch's data (``DeviceFeed``: host arrays, on the CPU used in place);
    ``batch_size``: the full batch; the last, partial batch has a plan of its own size.
    ``batch_weight``: each batch's loss in ``step.running`` is weighted by "share" (its rows
    over batch_size: 1 for a full batch; fit's Python loop) or "rows" (its row count: the
    estimators' sum of per-sample losses).
    """

    BATCH_WEIGHTS = ("share", "rows")

    def __init__(self, step, feed, batch_size: int, batch_weight: str = "share",
                 keep_plans: bool = False):
        self.step, self.feed, self.keep_plans = step, feed, keep_plans
        self.n = feed.n
        # a batch of fewer rows (the last, or the only one when batch_size > n) adds its loss
        # weighted by its share of batch_size, as fit's Python loop does
        self.batch_size = batch_size
        self.batch_weight = lookup({k: k for k in self.BATCH_WEIGHTS}, batch_weight,
                                   "batch_weight")
        self.full = self.n // batch_size  # full batches per epoch; then one of n % bs rows
        self._plans: dict = {}

    def _plan(self, rows: int):
        # rebuilt where the step's model, loss or optimizer changed what a plan takes from
        # them (a callback between epochs setting the input scaling, a new clip_norm)
        key = plan_mod.inputs_key(self.step)
        got = self._plans.get(rows)
        if got is None or not plan_mod.same_inputs(got[0], key):
            got = self._plans[rows] = (key, _kept_plan(self.step, rows, key, self.feed,
                                                       self.keep_plans))
        return got[1]

    def _weight(self, rows: int) -> float:
        if self.batch_weight == "rows":
            return float(rows)
        return 1.0 if rows == self.batch_size else rows / self.batch_size

    def run(self, order, first: int, count: int, index: int = 0) -> None:
        """Steps ``first .. first + count - 1`` of the epoch whose sample order is ``order``
        (None: 0..n-1); each adds its loss to ``step.running`` weighted as ``batch_weight``
        says (by default its batch's share of a full batch, as fit's Python loop does).
        ``index``: step ``first``'s index (Step's ``index``, fit's global step count): step
        ``first + k`` draws the dropout masks Step draws at index + k."""
        steps = self.full + (self.n % self.batch_size > 0)
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                   for v in (first, count)) or first < 0 or count < 0 or first + count > steps:
            raise ConfigError(f"steps first={first!r}, count={count!r}: the epoch has steps "
                              f"0..{steps - 1} ({self.n} samples in batches of "
                              f"{self.batch_size})")
        order = plan_mod.order_array(order, self.n)
        if order.shape != (self.n,) or self.n and not 0 <= order.min() <= order.max() < self.n:
            raise ConfigError(f"order must hold {self.n} sample indices in 0..{self.n - 1} "
                              "(the driver reads the rows it names unchecked)")
        if count == 0:
            return
        opt, model = self.step.optimizer, self.step.model
        s, end = first, first + count
        with model.backend.scope():
            while s < end:
                left = plan_mod.steps_left(opt)  # syncs the optimizer's device copy
                if s < self.full:
                    k = min(end, self.full) - s
                    k = min(k, left)
                    plan = self._plan(self.batch_size)
                    compiled.run_compiled(plan, order, s * self.batch_size, k,
                                          self._weight(plan.n), index + s - first)
                else:  # the partial last batch
                    k = 1
                    plan = self._plan(self.n - self.full * self.batch_size)
                    compiled.run_compiled(plan, order, self.full * self.batch_size, 1,
                                          self._weight(plan.n), index + s - first)
                s += k
        # the model's last forward is the plan's: backward / layer_outputs read it (with
        # dropout or deep blocks: its masks' keys and each layer's input, as
        # Passes._forward_deep leaves them)
        buf = plan.buffers
        model._X, model._n, model._keys = buf.get("xs", buf["x"]), plan.n, None
        if "step_index" in buf or model._deep:
            model._keys = plan_mod.dropout_keys(self.step, index + end - 1 - first)
            model._row0 = 0
            model._work[plan.n].inputs = [model._X] + [
                buf[f"R{i}" if layer.residual else f"A{i}"]
                for i, layer in enumerate(model.layers[:-1])]
