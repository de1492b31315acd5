"""The kernel registry: every op's name, arguments and flags, as data (no math, no oracle).

Every backend's kernel table holds ``KERNEL_NAMES``; ``cpu/`` and ``cuda/`` generate their loss
and optimizer entries from ``LOSSES`` and ``STEPS``. Adding a loss or an optimizer: its scalar
math in ``scalar.py``, its row here, its reference version and its test.

``ENTRIES`` declares every entry's arguments once; generated from it: ``ARRAYS`` (what
``checks.py`` checks), the profiler's byte model (``traffic``) and, through ``decl``, the CUDA
kernels' signatures and marshalling (``cuda/registry.py``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

# --- activations -------------------------------------------------------------------------------

ACTIVATION_NAMES = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "softmax")
# Activations whose derivative needs the pre-activation Z (all others use the output A).
NEEDS_PREACTIVATION = frozenset({"gelu", "silu"})
# Activations that mix a row; only allowed as an output activation.
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
    """One optimizer step: ``reference.name(p, *buffers, *scalars, *flags)``, all buffers
    (N,); the kernel tables hold it as ``name_hyper`` (its scalars in ``hyper``)."""

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
STEP_KERNELS = tuple(STEPS)  #: the by-value steps: the oracle's (``reference.py``) only


# --- the same steps with their scalars in device memory (graph-ready) --------------------------
# ``<step>_hyper(p, *buffers, hyper, *flags)`` runs ``<step>`` with its float scalars read from
# ``hyper``, a float64 (H,) device array: a CUDA graph captures kernel arguments once, so a
# replayed step must find its lr and bias corrections in memory. ``opt_advance(hyper, table)``
# runs before it each step: t += 1, then the ``STEPWISE`` scalars are copied from row
# ``min(t - 1 - t0, rows - 1)`` of ``table``, which the host fills ahead of time; the rest of
# ``hyper`` is constant. A state buffer gated by a scalar (RMSProp's ``mom``, used when
# ``mu > 0``) may be None in a hyper call: its term is then off (the device value cannot be
# checked without a sync). ``opt_clip(g, hyper)`` writes the clip scale into ``gscale``, which
# every hyper step multiplies g by (1.0 without clipping).

HYPER_T, HYPER_T0 = 0, 1  #: completed steps; the step count the table's first row follows
HYPER_GSCALE, HYPER_CLIP = 2, 3  #: the gradient's scale; the clip norm (inf: no clipping)
HYPER_HEADER = ("t", "t0", "gscale", "clip")
HYPER_DEFAULTS = {"gscale": 1.0, "clip": math.inf}  #: unset header slots: no clipping
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


def hyper_values(name: str, values: dict) -> list[float]:
    """Step kernel ``name``'s hyper slots (``hyper_layout``) filled from ``values`` (slot name
    -> value; a slot it lacks: ``HYPER_DEFAULTS``, else 0)."""
    return [float(values.get(k, HYPER_DEFAULTS.get(k, 0.0))) for k in hyper_layout(name)]


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
    return tuple(p.name for p in ENTRIES[name])


# --- the whole table (the reductions: ``opt_clip`` above, ``l2_penalty`` the L2 term) ----------
CLIP_KERNEL = "opt_clip"
L2_KERNEL = "l2_penalty"

DEEP_KERNELS = ("layernorm_fwd", "layernorm_bwd", "dropout_fwd", "bias_act_drop_fwd",
                "act_drop_bwd")
KERNEL_NAMES = ("bias_act_fwd", "act_bwd", *LOSS_KERNELS, *DEEP_KERNELS, *STEP_HYPER_KERNELS,
                ADVANCE_KERNEL, CLIP_KERNEL, L2_KERNEL)
LAYERNORM_EPS = 1e-5


# --- argument declarations: every entry's arguments, declared once, in call order --------------

# Argument types: ``real`` the model's float dtype (arrays and scalars alike); ``f64`` float64
# whatever the model's; ``label`` int32 or int64 class labels; ``int`` a Python integer;
# ``str`` a name (an activation).
DTYPES = ("real", "f64", "i32", "i64", "label", "u64", "bool", "int", "str")


class Param(NamedTuple):
    """One argument: name, symbolic shape (() for a scalar), type (``DTYPES``) and use.

    ``mutable``: an output may alias it, so it must be writable though only read; ``optional``:
    may be None. ``traffic``: how the byte model counts it ("" each read and write once;
    "skip": not counted; "row": one row of it read).
    """

    name: str
    shape: tuple[str, ...]
    dtype: str
    read: bool
    written: bool
    mutable: bool
    optional: bool
    traffic: str = ""


def decl(*specs: str) -> tuple[Param, ...]:
    """Params from ``"name[shape] dtype flags"`` strings, e.g. ``"A[n,m] rw"``, ``"alpha"``,
    ``"labels[n] label"``, ``"hyper[H] f64 r skip"``. dtype defaults to ``real``; flags
    (letters): r read, w written, m mutable, o optional; an array without r or w is read."""
    params = []
    for spec in specs:
        head, *words = spec.split()
        name, _, shape = head.partition("[")
        dims = tuple(shape.rstrip("]").split(",")) if shape else ()
        dtype = next((w for w in words if w in DTYPES), "real")
        flags = next((w for w in words if set(w) <= set("rwmo") and w not in DTYPES), "")
        traffic = next((w for w in words if w in ("skip", "row")), "")
        read = "r" in flags or (bool(dims) and "w" not in flags)
        params.append(Param(name, dims, dtype, read, "w" in flags, "m" in flags, "o" in flags,
                            traffic))
    return tuple(params)


def step_decl(step: str, hyper: bool = True) -> tuple[Param, ...]:
    """The arguments of step ``step``: its hyper entry's, or (``hyper=False``) the by-value
    loop's that the oracle and the CUDA hyper kernels' inlined ``step`` take."""
    row = STEPS[step]
    state = tuple(f"{b}[N] rw{'o' if b in row.optional else ''}" for b in row.buffers[1:])
    scalars = ("hyper[H] f64 r skip",) if hyper else row.scalars
    return decl("p[N] rw", "g[N]", *state, *scalars, *(f"{f} bool" for f in row.flags))


def _loss_decl(name: str) -> tuple[Param, ...]:
    # target: (n, k), or (n,) labels where the row allows; ``checks.loss_args`` checks them
    first = "pred" if LOSSES[name].scalar is not None else "logits"
    return decl(f"{first}[n,k]", "target[n,k]", "grad[n,k] wm", "weight[n] o", "scale",
                *(p for p, _ in LOSSES[name].params))


# Every entry of the kernel table (``KERNEL_NAMES``), its arguments in call order.
ENTRIES: dict[str, tuple[Param, ...]] = {
    "bias_act_fwd": decl("act str", "A[n,m] rw", "b[m]", "Z[n,m] wo", "alpha"),
    "act_bwd": decl("act str", "G[n,m] rm", "A[n,m]", "Z[n,m] ro", "dZ[n,m] w", "db[m] w",
                    "alpha"),
    **{name: _loss_decl(name) for name in LOSSES},
    "layernorm_fwd": decl("X[n,m]", "gamma[m]", "beta[m]", "Y[n,m] w", "mean[n] w",
                          "rstd[n] w", "eps"),
    "layernorm_bwd": decl("G[n,m] rm", "X[n,m]", "mean[n]", "rstd[n]", "gamma[m]", "dX[n,m] w",
                          "dgamma[m] w", "dbeta[m] w", "R[n,m] rmo"),
    "dropout_fwd": decl("A[n,m] rw", "p", "key int", "row0 int"),
    "bias_act_drop_fwd": decl("act str", "A[n,m] rw", "b[m]", "Z[n,m] wo", "alpha", "p",
                              "key int", "R[n,m] ro", "out[n,m] wo", "row0 int"),
    "act_drop_bwd": decl("act str", "G[n,m] rm", "A[n,m]", "Z[n,m] ro", "dZ[n,m] w", "db[m] w",
                         "alpha", "p", "key int", "row0 int"),
    **{name: step_decl(step) for name, step in STEP_HYPER.items()},
    # t and the stepwise slots written; one row of the table read
    ADVANCE_KERNEL: decl("hyper[H] f64 w", "table[rows,c] f64 r row"),
    # gscale written (the clip slot read: the same few header slots, counted once)
    CLIP_KERNEL: decl("g[N]", "hyper[H] f64 w"),
    L2_KERNEL: decl("p[N]", "g[N] rw", "spans[S,2] i64 r skip", "alpha", "weight[n] ro",
                    "count int", "value[1] f64 r skip", "value_scale"),
}


def traffic(name: str, args: tuple, kwargs: dict | None = None) -> int:
    """Minimal bytes entry ``name`` moves for this call: each distinct array it reads read
    once, each one it writes written once (in place: both), per its declaration."""
    bound = dict(zip((p.name for p in ENTRIES[name]), args))
    bound.update(kwargs or {})
    seen: set[tuple[int, bool]] = set()  # (array, written)
    total = 0
    for p in ENTRIES[name]:
        a = bound.get(p.name)
        if not p.shape or p.traffic == "skip" or not hasattr(a, "nbytes"):
            continue
        if p.traffic == "row":  # one row of the last axis
            total += a.itemsize * a.shape[-1]
            continue
        for written, used in ((False, p.read), (True, p.written)):
            if used and (id(a), written) not in seen:
                seen.add((id(a), written))
                total += int(a.nbytes)
    return total


class Arg(NamedTuple):
    """An array argument: its position, name, symbolic shape and whether it may be None."""

    pos: int
    name: str
    shape: tuple[str, ...]
    optional: bool = False
    written: bool = False


def _arrays(name: str) -> tuple[Arg, ...]:
    """The float arrays of entry ``name`` as the checks see them (written: must be writable)."""
    return tuple(Arg(i, p.name, p.shape, p.optional, p.written or p.mutable)
                 for i, p in enumerate(ENTRIES[name]) if p.shape and p.dtype == "real")


# Array arguments of every non-loss entry (losses: ``checks.loss_args``); every argument using
# a size symbol ("n") must agree on it.
ARRAYS = {name: _arrays(name) for name in ("bias_act_fwd", "act_bwd", *DEEP_KERNELS,
                                           *STEP_HYPER)}
# The reductions' float arrays, apart: tests build calls from ARRAYS alone.
REDUCTION_ARRAYS = {name: _arrays(name) for name in (L2_KERNEL, CLIP_KERNEL)}
