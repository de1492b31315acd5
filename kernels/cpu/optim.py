"""The CPU kernels of the optimizers: the steps reading their scalars from ``hyper``
(``table.hyper_layout``), ``opt_advance``, the gradient clip scale and scikit-learn's L2 term.

Same names and signatures as ``reference.py``; a step is one pass over the flat buffers.
"""

# The kernel templates read names bound as globals when they are cloned (value, real, ...).
# ruff: noqa: F821
from __future__ import annotations

import numpy as np
from devnet.kernels import checks, norms, scalar, table
from devnet.kernels import hyper as _hyper
from devnet.kernels.cpu.build import COMMON, DTYPES, N, S, build, char, jit, pick
from numba import prange

# The step loops take their scalars by value and read g through ``grad_in(g[i], gs)``:
# ``norms.unscaled`` (g itself) or ``norms.scaled`` (g times the clip's scale).

def _sgd(p, g, lr, wd, gs):
    lr, wd, gs = real(lr), real(wd), real(gs)
    for i in prange(p.size):
        p[i] = update(p[i], grad_in(g[i], gs), lr, wd)


def _heavy_ball(p, g, buf, lr, mu, wd, gs):
    lr, mu, wd, gs = real(lr), real(mu), real(wd), real(gs)
    for i in prange(p.size):
        p[i], buf[i] = update(p[i], grad_in(g[i], gs), buf[i], lr, mu, wd)


def _rmsprop(p, g, sq, mom, gavg, lr, rho, mu, eps, wd, centered, gs):
    lr, rho, mu, eps, wd = real(lr), real(rho), real(mu), real(eps), real(wd)
    gs = real(gs)
    use_mom = mu > 0
    for i in prange(p.size):
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
    lr, beta1, beta2, eps = real(lr), real(beta1), real(beta2), real(eps)
    wd, bc1, bc2, gs = real(wd), real(bc1), real(bc2), real(gs)
    for i in prange(p.size):
        pi, mi, vi, vm = update(
            p[i], grad_in(g[i], gs), m[i], v[i], vmax[i] if amsgrad else 0.0,
            lr, beta1, beta2, eps, wd, bc1, bc2, amsgrad)
        p[i] = pi
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vmax[i] = vm


_STEP_TEMPLATES = {"sgd": _sgd, "heavy_ball": _heavy_ball, "rmsprop": _rmsprop, "adam": _adam}


def _k_step(name, grad_in):
    """``build.k`` for step ``name`` reading g through ``norms.<grad_in>``."""
    row = table.STEPS[name]
    tag = f"{name}_{grad_in}_{norms.SOURCE_TAG}"  # norms.py's hash: its edits recompile
    return {c: build(_STEP_TEMPLATES[row.template], tag, dt, **COMMON[c],
                      update=getattr(S[c], row.update), grad_in=getattr(N[c], grad_in))
            for c, dt in DTYPES.items()}


_STEPS = {n: _k_step(n, "unscaled") for n in table.STEPS}
_STEPS_SCALED = {n: _k_step(n, "scaled") for n in table.STEPS}


# --- the kernel table ----------------------------------------------------------------------------
# The CPU's "device" is host memory: a hyper step reads its scalars as Python floats and runs the
# by-value loop, or, when clipping scales g (gscale != 1), the loop reading g times gscale. Not
# one loop for both: under fastmath "reassoc" a multiply by a runtime 1.0 may still regroup the
# update (AdamW's moved by an ulp).

def _step_hyper_launch(name):
    step_name = table.STEP_HYPER[name]
    plain, scaled = _STEPS[step_name], _STEPS_SCALED[step_name]
    slots = table.hyper_slots(step_name)
    zero_at = [table.STEPS[step_name].scalars.index(h) for _, h in table.gated_scalars(step_name)]

    def launch(arrays, hyper, flags, present):
        values = hyper.tolist()
        scalars = [values[s] for s in slots]
        for k, given in zip(zero_at, present):
            if not given:  # its buffer was None: the term is off
                scalars[k] = 0.0
        gscale = values[table.HYPER_GSCALE]
        pick(plain if gscale == 1.0 else scaled, arrays[0])(*arrays, *scalars, *flags, gscale)
    return launch


for _name in table.STEP_HYPER:  # sgd_step_hyper, ..., adamw_step_hyper
    globals()[_name] = checks.make_step_hyper(_name, _step_hyper_launch(_name))


def _advance_kernel():  # one thread's work: serial, float64 whatever the model's dtype
    fn = scalar.specialise(_hyper.opt_advance, _hyper.opt_advance.__globals__, np.float64)
    fn.__qualname__ = f"opt_advance_{_hyper.LAYOUT_TAG}"  # the slots are in its cache name
    return jit(fn, nogil=True, error_model="numpy")


opt_advance = checks.make_advance(_advance_kernel())


# --- reductions over the flat buffers: serial loops (memory bound), squares summed in float64 --

def _opt_clip(g, hyper):
    sq = np.float64(0.0)
    for i in range(g.size):
        gi = np.float64(g[i])  # squared in float64: a float32 g of 2e19 squares past its range
        sq += gi * gi
    top = np.float64(1.0)
    if WIDE and sq == np.inf:  # only a float64 g: see norms.clip_scale
        sq, top = unit_sq(g)
    hyper[GSCALE] = clip_scale(sq, hyper[CLIP], top)  # float64: norms.py


def _l2_penalty(p, g, spans, alpha, w, has_w, count):
    alpha = real(alpha)
    sw = np.float64(count)
    if has_w:  # the batch's weight sum, here: no separate reduction, no host sync
        sw = np.float64(0.0)
        for i in range(w.size):
            sw += w[i]
    coef = l2_coef(alpha, real(sw))
    sq = np.float64(0.0)
    n = p.size
    prev = 0
    for s in range(spans.shape[0]):
        lo, hi = span_bounds(spans[s, 0], spans[s, 1], prev, n)
        prev = hi
        for i in range(lo, hi):
            pi = p[i]
            g[i] = l2_grad(pi, g[i], coef)
            sq += np.float64(pi * pi)
    return sq, sw


def _reduction(template, tag):
    """``{dtype char: serial kernel}``: ``template`` with norms.py's functions bound (clip_scale
    and unit_sq the float64 ones for every dtype: see norms.clip_scale)."""
    tag = f"{tag}_{_hyper.LAYOUT_TAG}_{norms.SOURCE_TAG}"
    wide = {"clip_scale": N["d"].clip_scale, "unit_sq": N["d"].unit_sq}
    return {c: build(template, tag, dt, **{**vars(N[c]), **wide}, GSCALE=table.HYPER_GSCALE,
                     CLIP=table.HYPER_CLIP, WIDE=c == "d")[0]
            for c, dt in DTYPES.items()}


_CLIP = _reduction(_opt_clip, table.CLIP_KERNEL)
_L2 = _reduction(_l2_penalty, table.L2_KERNEL)


def _clip_launch(g, hyper):
    _CLIP[char(g)](g, hyper)


def _l2_launch(p, g, spans, alpha, weight, count, value, value_scale):
    sq, sw = _L2[char(p)](p, g, spans, alpha, p if weight is None else weight,
                           weight is not None, count)
    with np.errstate(divide="ignore", invalid="ignore"):  # a batch weighing 0: inf
        return float(norms.l2_value(value, value_scale, alpha, np.float64(sq), np.float64(sw)))


opt_clip = checks.make_clip(_clip_launch)
l2_penalty = checks.make_l2(_l2_launch)
