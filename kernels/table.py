"""The kernel registry: every op's name, arguments and flags, as data (no math, no oracle).

``cpu.py`` and ``cuda/`` generate their loss and optimizer entry points from ``LOSSES`` and
``STEPS``; every backend's kernel table holds ``KERNEL_NAMES``; production code (backends,
``devnet.nn``, ``devnet.losses``) reads these names from here, not from ``reference.py``.
Adding a loss or an optimizer: its scalar math in ``scalar.py``, its row here, its reference
version and its test.

``ARRAYS`` gives each entry's array arguments with symbolic shapes (checked in O(1) by
``checks.py`` before any kernel runs: a mismatched buffer must be a DataError, never an access
outside an array).
"""

from __future__ import annotations

import math
from typing import NamedTuple

# --- activations -------------------------------------------------------------------------------

ACTIVATION_NAMES = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "softmax")
# Activations whose derivative cannot be recovered from the output alone: the forward pass must
# keep the pre-activation Z for them. All others differentiate from the output A.
NEEDS_PREACTIVATION = frozenset({"gelu", "silu"})
# Activations that mix a row (not elementwise); only allowed as an output activation.
ROWWISE = frozenset({"softmax"})


# --- losses: value and gradient w.r.t. the prediction in one call ------------------------------

class LossRow(NamedTuple):
    """One loss kernel: ``name(pred, target, grad, weight, scale, **params)``."""

    scalar: str | None  #: the scalar.py element function; None: the row-wise softmax-xent
    labels: bool  #: also takes (n,) integer class labels as target
    params: tuple[tuple[str, float], ...]  #: keyword hyper-parameters and their defaults
    doc: str


LOSSES = {
    "softmax_xent": LossRow(None, True, (), "Softmax cross-entropy from logits; target: (n,) "
                            "integer labels or (n, k) probabilities."),
    "sigmoid_bce": LossRow("sigmoid_bce", False, (),
                           "Binary cross-entropy from logits, elementwise; (n, k) arrays."),
    "mse": LossRow("mse", False, (), "Squared error, elementwise; (n, k) arrays."),
    "mae": LossRow("mae", False, (), "Absolute error, elementwise; (n, k) arrays."),
    "huber": LossRow("huber", False, (("delta", 1.0),),
                     "Huber loss with threshold ``delta``, elementwise; (n, k) arrays."),
    "poisson": LossRow("poisson", False, (), "Half Poisson deviance, log link (``pred`` = log "
                       "of the mean), elementwise; (n, k) arrays."),
}
LOSS_KERNELS = tuple(LOSSES)
ELEMENT_LOSSES = tuple(n for n, row in LOSSES.items() if row.scalar is not None)
LABEL_LOSSES = frozenset(n for n, row in LOSSES.items() if row.labels)


# --- optimizer steps: one pass over the flat parameter buffer ----------------------------------

class StepRow(NamedTuple):
    """One optimizer kernel: ``name(p, *buffers, *scalars, *flags)``, all buffers (N,)."""

    template: str  #: the loop both backends compile: "sgd", "heavy_ball", "rmsprop", "adam"
    update: str  #: the scalar.py per-element update it is specialised with
    buffers: tuple[str, ...]  #: flat buffers after p (g first); p and state updated in place
    optional: dict  #: state buffer -> the hyper-parameter without which it is unused (None)
    scalars: tuple[str, ...]  #: float hyper-parameters
    flags: tuple[str, ...]  #: bool hyper-parameters
    doc: str


_ADAM_SCALARS = ("lr", "beta1", "beta2", "eps", "wd", "bc1", "bc2")
STEPS = {
    "sgd_step": StepRow("sgd", "sgd", ("g",), {}, ("lr", "wd"), (),
                        "In place ``p -= lr (g + wd p)``."),
    "momentum_step": StepRow("heavy_ball", "momentum", ("g", "buf"), {},
                             ("lr", "mu", "wd"), (), "In place heavy ball on p and buf."),
    "nesterov_step": StepRow("heavy_ball", "nesterov", ("g", "buf"), {},
                             ("lr", "mu", "wd"), (), "In place Nesterov on p and buf."),
    "rmsprop_step": StepRow("rmsprop", "rmsprop", ("g", "sq", "mom", "gavg"),
                            {"mom": "mu", "gavg": "centered"}, ("lr", "rho", "mu", "eps", "wd"),
                            ("centered",), "In place RMSProp on p, sq (and mom if mu > 0, gavg "
                            "if centered)."),
    "adam_step": StepRow("adam", "adam_l2", ("g", "m", "v", "vmax"), {"vmax": "amsgrad"},
                         _ADAM_SCALARS, ("amsgrad",),
                         "In place Adam (L2 ``wd``) on p, m, v (and vmax if amsgrad)."),
    "adamw_step": StepRow("adam", "adamw", ("g", "m", "v", "vmax"), {"vmax": "amsgrad"},
                          _ADAM_SCALARS, ("amsgrad",),
                          "In place AdamW (decoupled ``wd``) on p, m, v (and vmax if amsgrad)."),
}
STEP_KERNELS = tuple(STEPS)


def step_argnames(name: str) -> tuple[str, ...]:
    """The positional argument names of step kernel ``name``."""
    row = STEPS[name]
    return ("p", *row.buffers, *row.scalars, *row.flags)


# --- the same steps with their scalars in device memory (graph-ready) --------------------------
# ``<step>_hyper(p, *buffers, hyper, *flags)`` runs ``<step>`` with its float scalars read from
# ``hyper``, a float64 (H,) array on the device, instead of passed by value: a CUDA graph
# captures kernel arguments once, so a replayed step must find this step's lr and bias
# corrections in memory. ``opt_advance(hyper, table)`` (one thread) runs before it each step:
# t += 1, then the scalars that change per step (``STEPWISE``) are copied from row
# ``min(t - 1 - t0, rows - 1)`` of ``table``, a float64 (rows, len(stepwise)) array the host
# fills ahead of time (the schedule's lr, Adam's bias corrections as Python computes them:
# bit for bit what the by-value call passes). The rest of ``hyper`` is constant.
# A state buffer gated by a scalar (RMSProp's ``mom``, used when ``mu > 0``) may be None in a
# hyper call: the device value cannot be checked without a sync, so None turns the term off
# (mu read as 0) instead of letting p stand in for the buffer.
# Gradient clipping lives in the header too: ``opt_clip(g, hyper)`` (one reduction launch)
# writes ``min(1, clip / (|g| + 1e-6))`` into ``gscale`` and every hyper step multiplies g by
# it as it reads g (g itself is left unscaled). Without clipping gscale stays 1.0.

HYPER_T, HYPER_T0 = 0, 1  #: completed steps; the step count the table's first row follows
HYPER_GSCALE, HYPER_CLIP = 2, 3  #: the gradient's scale; the clip norm (inf: no clipping)
HYPER_HEADER = ("t", "t0", "gscale", "clip")
HYPER_DEFAULTS = {"gscale": 1.0, "clip": math.inf}
"""Header slots' values when nothing sets them: no clipping, the gradient as it is."""
STEPWISE = ("lr", "bc1", "bc2")  #: scalars that may change every step, as table columns
HYPER_STEPWISE0 = len(HYPER_HEADER)  #: the slot of the first table column
ADVANCE_KERNEL = "opt_advance"
STEP_HYPER = {f"{n}_hyper": n for n in STEPS}  #: hyper entry -> its by-value step
STEP_HYPER_KERNELS = tuple(STEP_HYPER)


def hyper_columns(name: str) -> tuple[str, ...]:
    """The stepwise scalars of step kernel ``name``: its table's columns, in order."""
    return tuple(s for s in STEPWISE if s in STEPS[name].scalars)


def hyper_layout(name: str) -> tuple[str, ...]:
    """The slot names of step kernel ``name``'s hyper array: the header, the stepwise
    scalars (``hyper_columns``), then the constant ones in the row's order."""
    columns = hyper_columns(name)
    return (*HYPER_HEADER, *columns, *(s for s in STEPS[name].scalars if s not in columns))


def hyper_slots(name: str) -> tuple[int, ...]:
    """The hyper slot of each of ``STEPS[name].scalars``, in the row's order."""
    layout = hyper_layout(name)
    return tuple(layout.index(s) for s in STEPS[name].scalars)


def gated_scalars(name: str) -> tuple[tuple[str, str], ...]:
    """(state buffer, scalar) pairs of step ``name`` whose buffer only that scalar gates."""
    row = STEPS[name]
    return tuple((b, h) for b, h in row.optional.items() if h in row.scalars)


def step_hyper_argnames(name: str) -> tuple[str, ...]:
    """The positional argument names of hyper entry ``name`` (e.g. ``adam_step_hyper``)."""
    row = STEPS[STEP_HYPER[name]]
    return ("p", *row.buffers, "hyper", *row.flags)


# --- the whole table ---------------------------------------------------------------------------

# --- reductions over the flat buffers (issue 12: no CuPy launches in the step) ---------------
# ``l2_penalty(p, g, spans, alpha, weight, count, value, value_scale)``: scikit-learn's L2
# term over the [start, stop) ``spans`` of p (the weights; biases excluded), one pass: adds
# ``alpha / sw * p`` to g and returns ``value * value_scale + 0.5 alpha sum(p**2) / sw``, with
# ``sw`` the sum of ``weight`` (the batch's sample weights, summed by the kernel: no host sync,
# no allocation) or ``count`` when weight is None. ``opt_clip(g, hyper)``: see above.
CLIP_KERNEL = "opt_clip"
L2_KERNEL = "l2_penalty"

DEEP_KERNELS = ("layernorm_fwd", "layernorm_bwd", "dropout_fwd", "bias_act_drop_fwd",
                "act_drop_bwd")
KERNEL_NAMES = ("bias_act_fwd", "act_bwd", *LOSS_KERNELS, *STEP_KERNELS, *DEEP_KERNELS,
                *STEP_HYPER_KERNELS, ADVANCE_KERNEL, CLIP_KERNEL, L2_KERNEL)
LAYERNORM_EPS = 1e-5


class Arg(NamedTuple):
    """An array argument: its position, name, symbolic shape and whether it may be None."""

    pos: int
    name: str
    shape: tuple[str, ...]
    optional: bool = False
    written: bool = False


def _args(*specs) -> tuple[Arg, ...]:
    """``(pos, name, shape, flags)`` tuples -> Args; flags: "o" optional, "w" written."""
    return tuple(Arg(pos, name, tuple(shape.split(",")), "o" in flags, "w" in flags)
                 for pos, name, shape, flags in specs)


# Array arguments of every non-loss entry (losses: ``checks.loss_args``). Shapes name sizes:
# every argument using "n" must agree on it. Positions count from 0 (act is argument 0).
ARRAYS = {
    "bias_act_fwd": _args((1, "A", "n,m", "w"), (2, "b", "m", ""), (3, "Z", "n,m", "ow")),
    "act_bwd": _args((1, "G", "n,m", "w"), (2, "A", "n,m", ""), (3, "Z", "n,m", "o"),
                     (4, "dZ", "n,m", "w"), (5, "db", "m", "w")),
    "layernorm_fwd": _args((0, "X", "n,m", ""), (1, "gamma", "m", ""), (2, "beta", "m", ""),
                           (3, "Y", "n,m", "w"), (4, "mean", "n", "w"), (5, "rstd", "n", "w")),
    "layernorm_bwd": _args((0, "G", "n,m", "w"), (1, "X", "n,m", ""), (2, "mean", "n", ""),
                           (3, "rstd", "n", ""), (4, "gamma", "m", ""), (5, "dX", "n,m", "w"),
                           (6, "dgamma", "m", "w"), (7, "dbeta", "m", "w"),
                           (8, "R", "n,m", "ow")),
    "dropout_fwd": _args((0, "A", "n,m", "w"),),
    "bias_act_drop_fwd": _args((1, "A", "n,m", "w"), (2, "b", "m", ""), (3, "Z", "n,m", "ow"),
                               (7, "R", "n,m", "o"), (8, "out", "n,m", "ow")),
    "act_drop_bwd": _args((1, "G", "n,m", "w"), (2, "A", "n,m", ""), (3, "Z", "n,m", "o"),
                          (4, "dZ", "n,m", "w"), (5, "db", "m", "w")),
}
for _name, _row in STEPS.items():
    ARRAYS[_name] = _args((0, "p", "N", "w"), *(
        (i + 1, b, "N", ("o" if b in _row.optional else "") + ("" if b == "g" else "w"))
        for i, b in enumerate(_row.buffers)))

# The float arrays of the reductions, checked by ``checks.check`` like ARRAYS' entries; apart
# because their other arguments (int64 spans, a float64 hyper array, a 1-element value) have
# their own checks (``checks.make_l2`` / ``make_clip``), which ARRAYS' symbolic shapes do not
# express (``tests/test_kernel_arg_checks.py`` builds calls from ARRAYS alone).
REDUCTION_ARRAYS = {
    L2_KERNEL: _args((0, "p", "N", ""), (1, "g", "N", "w"), (4, "weight", "n", "o")),
    CLIP_KERNEL: _args((0, "g", "N", ""),),
}
