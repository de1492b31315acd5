"""The CUDA kernels of the optimizers: the steps reading their scalars from ``hyper``
(``table.hyper_layout``), ``opt_advance``, the gradient clip scale and scikit-learn's L2 term.

Same names and signatures as ``reference.py``; a step is one grid-stride launch.
"""

# The kernel templates read names bound as globals when they are cloned (value, real, ...).
# ruff: noqa: F821
from __future__ import annotations

import numpy as np
from devnet.kernels import checks, norms, table
from devnet.kernels import hyper as _hyper
from devnet.kernels.cuda.device import N
from devnet.kernels.cuda.launch import Call, kernel, start
from devnet.kernels.cuda.registry import pyfunc, register
from devnet.kernels.table import decl
from numba import cuda

# --- kernel templates ----------------------------------------------------------------------------
# The step loops with their scalars by value, as the oracle takes them; each hyper kernel below
# inlines one as ``step`` reading g times the clip's scale (``grad_in``: ``norms.scaled``).
# Registered under the step's name too, never launched: the PTX tests compare with it.

def _sgd(p, g, lr, wd, gs):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i] = update(p[i], grad_in(g[i], gs), lr, wd)


def _heavy_ball(p, g, buf, lr, mu, wd, gs):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        pi, bi = update(p[i], grad_in(g[i], gs), buf[i], lr, mu, wd)
        p[i] = pi
        buf[i] = bi


def _rmsprop(p, g, sq, mom, gavg, lr, rho, mu, eps, wd, centered, gs):
    use_mom = mu > 0
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        pi, s, mo, ga = update(
            p[i], grad_in(g[i], gs), sq[i], mom[i] if use_mom else 0.0,
            gavg[i] if centered else 0.0, lr, rho, mu, eps, wd, centered)
        p[i] = pi
        sq[i] = s
        if use_mom:
            mom[i] = mo
        if centered:
            gavg[i] = ga


def _adam(p, g, m, v, vmax, lr, beta1, beta2, eps, wd, bc1, bc2, amsgrad, gs):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        pi, mi, vi, vm = update(
            p[i], grad_in(g[i], gs), m[i], v[i], vmax[i] if amsgrad else 0.0,
            lr, beta1, beta2, eps, wd, bc1, bc2, amsgrad)
        p[i] = pi
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vmax[i] = vm


# The hyper steps: ``S0``, ``S1``, ...: the slot of each of the row's scalars, ``GS`` the
# gradient scale's, bound as constants.

def _sgd_hyper(p, g, hyper):
    step(p, g, real(hyper[S0]), real(hyper[S1]), real(hyper[GS]))


def _heavy_ball_hyper(p, g, buf, hyper):
    step(p, g, buf, real(hyper[S0]), real(hyper[S1]), real(hyper[S2]), real(hyper[GS]))


def _rmsprop_hyper(p, g, sq, mom, gavg, hyper, centered, has_mom):
    # without a mom buffer (p stands in for it) momentum is off whatever hyper holds
    mu = real(hyper[S2]) if has_mom else real(0.0)
    step(p, g, sq, mom, gavg, real(hyper[S0]), real(hyper[S1]), mu,
         real(hyper[S3]), real(hyper[S4]), centered, real(hyper[GS]))


def _adam_hyper(p, g, m, v, vmax, hyper, amsgrad):
    step(p, g, m, v, vmax, real(hyper[S0]), real(hyper[S1]), real(hyper[S2]),
         real(hyper[S3]), real(hyper[S4]), real(hyper[S5]), real(hyper[S6]),
         amsgrad, real(hyper[GS]))


# --- reductions over the flat buffers: one launch each, squares summed in float64, the last
# block finishing the sum (``sum_last``) and the scalar math (norms.py)

def _opt_clip(g, hyper, part, count):
    acc = np.float64(0.0)
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        gi = np.float64(g[i])  # squared in float64: a float32 g of 2e19 squares past its range
        acc += gi * gi
    block_sum(acc, part, cuda.blockIdx.x)
    if sum_last(part, cuda.gridDim.x, count):
        sq = part[cuda.gridDim.x]
        top = np.float64(1.0)
        # only a float64 g (see norms.clip_scale); one thread: a diverging run's rare case
        if WIDE and sq == np.inf:
            sq, top = unit_sq(g)
        hyper[GSCALE] = clip_scale(sq, hyper[CLIP], top)


def _l2_penalty(p, g, spans, alpha, w, has_w, count, value, value_scale, part, counter, out):
    sw = np.float64(count)
    if has_w:  # the batch's weight sum, by every block alike: no other launch, no host sync
        sw = block_total(w, w.size)
    coef = l2_coef(alpha, real(sw))
    acc = np.float64(0.0)
    n = p.size
    prev = 0
    for s in range(spans.shape[0]):
        lo, hi = span_bounds(spans[s, 0], spans[s, 1], prev, n)
        prev = hi
        for i in range(lo + cuda.grid(1), hi, cuda.gridsize(1)):
            pi = p[i]
            g[i] = l2_grad(pi, g[i], coef)
            acc += np.float64(pi * pi)
    block_sum(acc, part, cuda.blockIdx.x)
    if sum_last(part, cuda.gridDim.x, counter):
        out[0] = l2_value(value[0], value_scale, alpha, real(part[cuda.gridDim.x]), real(sw))


# --- the registry: each kernel's arguments ------------------------------------------------------
# A by-value step takes the oracle's arguments and gs, the gradient's scale; a hyper step the
# entry's, with a flag per buffer that only a scalar gates (RMSProp's has_mom).

def _step_params(name):
    if name in table.STEP_HYPER:
        gated = table.gated_scalars(table.STEP_HYPER[name])
        return table.ENTRIES[name] + decl(*(f"has_{b} bool" for b, _ in gated))
    return table.step_decl(name, hyper=False) + decl("gs")


_CLIP = decl("g[N]", "hyper[H] f64 w", "part[P] f64 rw", "count[C] i32 rw")
_L2 = decl("p[N]", "g[N] rw", "spans[S,2] i64", "alpha", "w[n]", "has_w bool", "count",
           "value[1]", "value_scale", "part[P] f64 rw", "counter[C] i32 rw", "out[1] w")
_STEP_TEMPLATES = {"sgd": _sgd, "heavy_ball": _heavy_ball, "rmsprop": _rmsprop, "adam": _adam}
_HYPER_TEMPLATES = {"sgd": _sgd_hyper, "heavy_ball": _heavy_ball_hyper,
                    "rmsprop": _rmsprop_hyper, "adam": _adam_hyper}
# in the cache names, what the compiled code depends on beyond scalar.py: norms.py's hash, the
# slots of hyper baked in
_NORMS_TAG = norms.SOURCE_TAG + "_"
_HYPER_TAG = _hyper.LAYOUT_TAG + "_" + "".join(
    "".join(map(str, table.hyper_slots(s))) for s in table.STEPS) + "_"


def _hyper_globals(step_name):
    def extra(dt):
        slots = {f"S{k}": s for k, s in enumerate(table.hyper_slots(step_name))}
        step = pyfunc(step_name, dt, grad_in=N[dt].scaled)
        return {**slots, "GS": table.HYPER_GSCALE,
                "step": cuda.jit(device=True, inline="always")(step)}
    return extra


def _reduction_globals(dt):
    f8 = np.dtype(np.float64)
    return {"GSCALE": table.HYPER_GSCALE, "CLIP": table.HYPER_CLIP,
            # float64 for every dtype, and the rescaled sum for float64 g: see norms.clip_scale
            "clip_scale": N[f8].clip_scale, "unit_sq": N[f8].unit_sq, "WIDE": dt == np.float64}


for _n, _row in table.STEPS.items():
    register(_n, _STEP_TEMPLATES[_row.template], _step_params(_n), {"update": _row.update},
             tag=_NORMS_TAG)
for _n, _s in table.STEP_HYPER.items():
    register(_n, _HYPER_TEMPLATES[table.STEPS[_s].template], _step_params(_n),
             extra=_hyper_globals(_s), tag=_HYPER_TAG + _NORMS_TAG)
register(table.ADVANCE_KERNEL, _hyper.opt_advance, table.ENTRIES[table.ADVANCE_KERNEL],
         tag=_HYPER_TAG)
register(table.CLIP_KERNEL, _opt_clip, _CLIP, extra=_reduction_globals,
         tag=_HYPER_TAG + _NORMS_TAG)
register(table.L2_KERNEL, _l2_penalty, _L2, extra=_reduction_globals, tag=_NORMS_TAG)


# --- the kernel table ----------------------------------------------------------------------------

def _step_hyper_launch(name):
    def launch(arrays, hyper, flags, present):
        c, grid, block = start(arrays[0], "flat")
        kernel(name, arrays[0].dtype)(c, grid, block, *arrays, hyper, *flags, *present)
    return launch


for _name in table.STEP_HYPER:  # sgd_step_hyper, ..., adamw_step_hyper
    globals()[_name] = checks.make_step_hyper(_name, _step_hyper_launch(_name),
                                              checks.ArrayLike, True)


def _advance_launch(hyper, table_):  # one thread
    kernel(table.ADVANCE_KERNEL, np.float64)(Call(hyper), (1, 1, 1), (1, 1, 1), hyper, table_)


opt_advance = checks.make_advance(_advance_launch, checks.ArrayLike)


def _clip_launch(g, hyper):
    c, grid, block = start(g, "flat")
    kernel(table.CLIP_KERNEL, g.dtype)(c, grid, block, g, hyper, c.scratch(grid[0] + 1),
                                        c.counters(1))


def _l2_launch(p, g, spans, alpha, weight, count, value, value_scale):
    dt = p.dtype
    c, grid, block = start(p, "flat")
    out = c.scalar_out(dt)
    real = dt.type
    kernel(table.L2_KERNEL, dt)(c, grid, block, p, g, spans, real(alpha),
                                 p if weight is None else weight, weight is not None,
                                 real(count), value.reshape(1), real(value_scale),
                                 c.scratch(grid[0] + 1), c.counters(1), out)
    return out.reshape(())


opt_clip = checks.make_clip(_clip_launch, checks.ArrayLike, True)
l2_penalty = checks.make_l2(_l2_launch, checks.ArrayLike, True, device_value=True)
