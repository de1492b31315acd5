"""Fusion suite: every fused kernel against the unfused NumPy / CuPy sequence it replaces.

One size (1M elements by default, float32), every entry of the kernel table: ``bias_act_fwd``
and ``act_bwd`` for each activation, every loss, every optimizer step and its variants (Nesterov,
centered RMSProp with momentum, AMSGrad), and the deep-network kernels (LayerNorm forward and
backward, with and without the residual skip; dropout alone and fused into the activation's
forward and backward, p = 0.1). The unfused sequences are called with the same
arguments (an optimizer step's scalars by value, where the fused entry reads them from its
``hyper`` array, as training does): the headline ``speedup`` is against
``benchmarks.baseline`` (the best plain NumPy / CuPy sequence: in place, ``out=``, no ``**``),
``speedup_vs_reference`` against the test oracle ``devnet.kernels.reference`` (written for
clarity, not speed). Each is the median of
``settings.repetitions`` interleaved repetitions, with its min and max.

The fused tanh activation is a 6-ulp rational function and NumPy's tanh is accurate: the
``bias_act_fwd[tanh]`` row also reports ``speedup_same_accuracy``, against the same rational
function in plain NumPy (``baseline.tanh_rational_``).

Shapes follow the training step: activations are (rows, 1024) matmul outputs, loss inputs are
(rows, 10) logits or predictions, optimizer buffers are flat. Calls repeat on the same operands:
in-place kernels settle at a fixed point or drift slowly (the bias is 1e-3), values stay normal
and no subnormal slowdown enters the figures. The dropout cases draw a fresh mask each call
(``_Keys``), as training does each step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from devnet.kernels import reference, scalar, table

from . import baseline
from .bench_kernels import CLASSES, _mat, _spread, put_ratio
from .timing import Settings, clock_for, interleaved, ratio_stats

ELEMENTS = 1 << 20
QUICK_ELEMENTS = 1 << 14
ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "softmax")
# the dropout variants: one activation differentiated from its output, one from Z
DROP_ACTIVATIONS = ("relu", "gelu")


@dataclass
class FusionCase:
    """One kernel call: ``make(xp, rng, n, dtype) -> operands``, ``call(kernels, ops)``."""

    name: str
    make: Callable
    call: Callable


def _fwd(act):
    def make(xp, rng, n, dtype):
        A = _mat(xp, rng, n, dtype)
        b = xp.asarray((rng.standard_normal(A.shape[1]) * 1e-3).astype(dtype))
        Z = xp.empty_like(A) if act in reference.NEEDS_PREACTIVATION else None
        return {"A": A, "b": b, "Z": Z}
    return FusionCase(f"bias_act_fwd[{act}]", make,
                      lambda k, o: k.bias_act_fwd(act, o["A"], o["b"], o["Z"]))


def _bwd(act):
    def make(xp, rng, n, dtype):
        Z = _mat(xp, rng, n, dtype)
        return {"G": _mat(xp, rng, n, dtype), "A": reference.act_fwd(act, Z), "Z": Z,
                "dZ": xp.empty_like(Z), "db": xp.empty(Z.shape[1], dtype=dtype)}
    return FusionCase(f"act_bwd[{act}]", make,
                      lambda k, o: k.act_bwd(act, o["G"], o["A"], o["Z"], o["dZ"], o["db"]))


def _loss(name, target):
    def make(xp, rng, n, dtype):
        Z = _mat(xp, rng, n, dtype, cols=CLASSES)
        rows = Z.shape[0]
        if target == "labels":
            T = xp.asarray(rng.integers(0, CLASSES, rows))
        elif target == "probs":
            T = reference.act_fwd("softmax", _mat(xp, rng, n, dtype, cols=CLASSES))
        elif target == "counts":  # poisson: non-negative counts
            T = xp.asarray(rng.poisson(2.0, Z.shape).astype(dtype))
        elif target == "binary":
            T = xp.asarray(rng.integers(0, 2, Z.shape).astype(dtype))
        else:
            T = _mat(xp, rng, n, dtype, cols=CLASSES)
        return {"Z": Z, "T": T, "g": xp.empty_like(Z), "scale": 1.0 / rows}
    label = name if target in ("labels", "values", "binary", "counts") else f"{name}[{target}]"
    return FusionCase(label, make,
                      lambda k, o: getattr(k, name)(o["Z"], o["T"], o["g"], None, o["scale"]))


def _step(label, step, values, flags=None, states=None):
    """Optimizer step ``step`` with ``values`` (its scalars) and ``flags``: the kernel table
    runs its in-place entry, ``<step>_hyper`` (the scalars read from ``hyper``, as training
    does), the baseline and the oracle the same update with the scalars by value. ``states``:
    the state buffers given (the row's others are None); default all."""
    row = table.STEPS[step]
    flags = flags or {}
    buffers = row.buffers[1:]
    states = buffers if states is None else states
    scalars = [values[s] for s in row.scalars]
    flag_values = [flags.get(f, False) for f in row.flags]

    def make(xp, rng, n, dtype):
        def vec():
            return xp.asarray(rng.standard_normal(n).astype(dtype))
        ops = {"p": vec(), "g": vec(), "hyper": xp.asarray(table.hyper_values(step, values))}
        for s in states:  # gavg starts at 0: sq >= gavg**2 then holds at every step
            ops[s] = xp.zeros(n, dtype=dtype) if s == "gavg" else xp.abs(vec())
        return ops

    def call(k, o):
        arrays = [o["p"], o["g"], *(o.get(b) for b in buffers)]
        if k is _PLAIN or k is reference:
            getattr(k, step)(*arrays, *scalars, *flag_values)
        else:
            getattr(k, f"{step}_hyper")(*arrays, o["hyper"], *flag_values)
    return FusionCase(label, make, call)


class _Keys:
    """A fresh dropout key per call, as training draws a fresh mask each step: with one fixed
    key the kept values of an in-place call would grow by 1 / (1 - p) a call, to inf."""

    def __init__(self):
        self.step = 0

    def __call__(self) -> int:
        self.step += 1
        return scalar.dropout_key(0, self.step, 1)


DROPOUT = 0.1


# --- the reductions over the flat buffers: their plain sequences are the code the
# kernels replaced (the estimators' L2 hook, Optimizer._clip_), kept here with the cases

def _spans(n):
    """Three weight spans of a flat buffer of n, with bias-sized gaps between them."""
    gap = max(1, n // 64)
    return [(0, n // 2), (n // 2 + gap, 3 * n // 4), (3 * n // 4 + gap, n - gap)]


def _l2_case(xp, rng, n, dtype):
    p = xp.asarray(rng.standard_normal(n).astype(dtype))
    g = xp.asarray(rng.standard_normal(n).astype(dtype))
    spans = _spans(n)
    return {"p": p, "g": g, "spans": xp.asarray(np.array(spans, dtype=np.int64)),
            "W": [p[a:b] for a, b in spans], "dW": [g[a:b] for a, b in spans],
            "value": xp.asarray(np.full(1, 0.5, dtype)), "alpha": 1e-4, "count": 256}


def _clip_case(xp, rng, n, dtype):
    hyper = np.ones(len(table.HYPER_HEADER))
    hyper[table.HYPER_CLIP] = 1.0
    return {"g": xp.asarray(rng.standard_normal(n).astype(dtype)), "hyper": xp.asarray(hyper)}


class _Plain:
    """``baseline`` plus the plain sequences of the reductions (called like the kernels)."""

    def __getattr__(self, name):
        return getattr(baseline, name)

    @staticmethod
    def l2_case(o):
        # SklearnObjective.param_grad_ before the kernel: a dot per layer, then dW += c W
        xp = reference.get_xp(o["p"])
        sq = sum(xp.dot(w, w) for w in o["W"])
        value = o["value"] + 0.5 * o["alpha"] * sq / o["count"]
        for w, dw in zip(o["W"], o["dW"]):
            dw += (o["alpha"] / o["count"]) * w
        return value

    @staticmethod
    def clip_case(o):
        # Optimizer._clip_ before the kernel: g *= min(1, clip / (|g| + 1e-6)), in place
        xp, g = reference.get_xp(o["g"]), o["g"]
        norm = xp.sqrt(xp.dot(g, g))
        g *= xp.minimum(1.0, 1.0 / (norm + 1e-6)).astype(g.dtype)


def _l2_call(k, o):
    if isinstance(k, _Plain):
        return k.l2_case(o)
    return k.l2_penalty(o["p"], o["g"], o["spans"], o["alpha"], None, o["count"], o["value"])


def _clip_call(k, o):
    return k.clip_case(o) if isinstance(k, _Plain) else k.opt_clip(o["g"], o["hyper"])


_PLAIN = _Plain()


def _dropout():
    keys = _Keys()

    def make(xp, rng, n, dtype):
        return {"A": _mat(xp, rng, n, dtype)}
    return FusionCase("dropout_fwd", make,
                      lambda k, o: k.dropout_fwd(o["A"], DROPOUT, keys()))


def _fwd_drop(act, residual=False):
    keys = _Keys()

    def make(xp, rng, n, dtype):
        ops = _fwd(act).make(xp, rng, n, dtype)
        ops["R"] = _mat(xp, rng, n, dtype) if residual else None
        ops["out"] = xp.empty_like(ops["A"]) if residual else None
        return ops
    label = f"bias_act_drop_fwd[{act}{',residual' if residual else ''}]"
    return FusionCase(label, make, lambda k, o: k.bias_act_drop_fwd(
        act, o["A"], o["b"], o["Z"], 0.01, DROPOUT, keys(), o["R"], o["out"]))


def _bwd_drop(act):
    keys = _Keys()

    def make(xp, rng, n, dtype):
        ops = _bwd(act).make(xp, rng, n, dtype)
        reference.dropout_fwd(ops["A"], DROPOUT, keys())
        return ops
    return FusionCase(f"act_drop_bwd[{act}]", make, lambda k, o: k.act_drop_bwd(
        act, o["G"], o["A"], o["Z"], o["dZ"], o["db"], 0.01, DROPOUT, keys()))


def _layernorm_ops(xp, rng, n, dtype):
    X = _mat(xp, rng, n, dtype)
    X += 1  # a mean away from 0, as after a residual add
    rows, width = X.shape

    def vec():
        return xp.asarray(rng.standard_normal(width).astype(dtype))
    ops = {"X": X, "gamma": vec(), "beta": vec(), "Y": xp.empty_like(X),
           "mean": xp.empty(rows, dtype=dtype), "rstd": xp.empty(rows, dtype=dtype),
           "G": _mat(xp, rng, n, dtype), "dX": xp.empty_like(X), "dgamma": xp.empty_like(vec()),
           "dbeta": xp.empty_like(vec())}
    reference.layernorm_fwd(X, ops["gamma"], ops["beta"], ops["Y"], ops["mean"], ops["rstd"])
    return ops


def _layernorm_bwd(residual=False):
    def make(xp, rng, n, dtype):
        ops = _layernorm_ops(xp, rng, n, dtype)
        ops["R"] = _mat(xp, rng, n, dtype) if residual else None
        return ops
    return FusionCase("layernorm_bwd[residual]" if residual else "layernorm_bwd", make,
                      lambda k, o: k.layernorm_bwd(o["G"], o["X"], o["mean"], o["rstd"],
                                                   o["gamma"], o["dX"], o["dgamma"], o["dbeta"],
                                                   o["R"]))


_SGD = dict(lr=1e-3, mu=0.9, wd=1e-4)
_RMSPROP = dict(lr=1e-3, rho=0.99, mu=0.0, eps=1e-8, wd=1e-4)
_ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, wd=1e-4, bc1=0.1, bc2=0.001)

CASES = (
    *(_fwd(a) for a in ACTIVATIONS),
    *(_bwd(a) for a in ACTIVATIONS),
    _loss("softmax_xent", "labels"), _loss("softmax_xent", "probs"),
    _loss("sigmoid_bce", "binary"), _loss("mse", "values"), _loss("mae", "values"),
    _loss("huber", "values"), _loss("poisson", "counts"),
    _step("sgd_step", "sgd_step", _SGD),
    _step("momentum_step", "momentum_step", _SGD),
    _step("nesterov_step", "nesterov_step", _SGD),
    _step("rmsprop_step", "rmsprop_step", _RMSPROP, states=("sq",)),
    _step("rmsprop_step[centered,momentum]", "rmsprop_step", {**_RMSPROP, "mu": 0.9},
          {"centered": True}),
    _step("adam_step", "adam_step", _ADAM, states=("m", "v")),
    _step("adam_step[amsgrad]", "adam_step", _ADAM, {"amsgrad": True}),
    _step("adamw_step", "adamw_step", _ADAM, states=("m", "v")),
    FusionCase("layernorm_fwd", _layernorm_ops,
               lambda k, o: k.layernorm_fwd(o["X"], o["gamma"], o["beta"], o["Y"], o["mean"],
                                            o["rstd"])),
    _layernorm_bwd(), _layernorm_bwd(residual=True),
    _dropout(),
    *(_fwd_drop(a) for a in DROP_ACTIVATIONS), _fwd_drop("relu", residual=True),
    *(_bwd_drop(a) for a in DROP_ACTIVATIONS),
    FusionCase(table.L2_KERNEL, _l2_case, _l2_call),
    FusionCase(table.CLIP_KERNEL, _clip_case, _clip_call),
)
CASE_NAMES = tuple(c.name for c in CASES)


def not_covered() -> dict[str, str]:
    """Kernels of the table with no case here (and why): reported, never silently missing."""
    covered = {name.split("[")[0] for name in CASE_NAMES}
    covered |= {f"{name}_hyper" for name in covered}  # a step's case runs its hyper entry
    out = {name: "no plain NumPy baseline in benchmarks/baseline.py yet"
           for name in reference.KERNEL_NAMES if name not in covered}
    if table.ADVANCE_KERNEL in out:  # one thread updating a few scalars: no bandwidth to fuse
        out[table.ADVANCE_KERNEL] = "one thread over a few scalars: nothing to fuse"
    return out


class _SameAccuracyTanh:
    """The plain baseline with the fused kernel's 6-ulp tanh instead of NumPy's."""

    def __getattr__(self, name):
        return getattr(baseline, name)

    @staticmethod
    def bias_act_fwd(act, A, b, Z=None, alpha=0.01):
        A += b
        baseline.tanh_rational_(A)


def run(backend, settings: Settings, elements: int = ELEMENTS, names=None, dtype="float32",
        seed: int = 0, log=print) -> list[dict]:
    """Fused, plain and reference times of every case at ``elements``; one row per case."""
    xp = backend.xp
    clock = clock_for(backend)
    rng = np.random.default_rng(seed)
    rows = []
    for case in CASES:
        if names is not None and case.name not in names:
            continue
        ops = case.make(xp, rng, elements, dtype)
        fns = {"fused": (lambda c=case.call, o=ops: c(backend.kernels, o), clock),
               "plain": (lambda c=case.call, o=ops: c(_PLAIN, o), clock),
               "reference": (lambda c=case.call, o=ops: c(reference, o), clock)}
        same_accuracy = case.name == "bias_act_fwd[tanh]" and xp is np
        if same_accuracy:
            fns["same_accuracy"] = (lambda c=case.call, o=ops: c(_SameAccuracyTanh(), o), clock)
        t = interleaved(fns, settings, settings.repetitions)
        row = {"kernel": case.name, "elements": elements, "dtype": dtype,
               "fused_s": t["fused"].median, "unfused_s": t["plain"].median,
               "reference_s": t["reference"].median, "repetitions": settings.repetitions}
        put_ratio(row, "speedup", ratio_stats(t["plain"], t["fused"]))
        put_ratio(row, "speedup_vs_reference", ratio_stats(t["reference"], t["fused"]))
        if same_accuracy:
            row["same_accuracy_s"] = t["same_accuracy"].median
            put_ratio(row, "speedup_same_accuracy",
                      ratio_stats(t["same_accuracy"], t["fused"]))
        rows.append(row)
        log(f"  fusion {case.name:<32} fused {row['fused_s'] * 1e3:8.3f} ms  plain "
            f"{row['unfused_s'] * 1e3:8.3f} ms  speedup {_spread(row, 'speedup')}  (vs "
            f"reference {row['speedup_vs_reference']:.3g})")
    return rows
