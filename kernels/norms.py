"""The scalar math of the reductions over a model's flat buffers, written once: scikit-learn's
L2 term (``l2_penalty``) and gradient-norm clipping (``opt_clip``, and the gradient scale the
hyper steps apply as they read g).

Plain Python, compiled like ``scalar.py``'s functions (``compiled``: float literals typed per
dtype, each function inlined) by ``cpu/`` and ``cuda/``; ``reference.py`` runs the same
functions on host floats. Apart from ``scalar.py`` so that its edits do not recompile every
kernel: the kernels using these functions carry ``SOURCE_TAG`` in their cache names.

Sums of squares are accumulated in float64 by the kernels; what these functions see is the
finished sum, in the kernel's dtype (a float32 kernel keeps float32 math, as ``scalar.py``),
except ``clip_scale``, which the kernels of every dtype run in float64: see there.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import sys
from types import FunctionType, SimpleNamespace

from devnet.kernels import scalar


def span_bounds(start, stop, prev, n):
    """``[lo, hi)`` of the span ``[start, stop)`` clamped into ``[prev, n]``: whatever a span
    array holds (out of range, reversed, overlapping the previous span), a kernel looping over
    the clamped spans in order stays inside the buffer and visits each element once."""
    lo = min(max(start, prev), n)
    hi = min(max(stop, lo), n)
    return lo, hi


def l2_coef(alpha, sw):  # d/dp of 0.5 alpha p**2 / sw; alpha = 0: none, whatever sw
    return alpha / sw if alpha != 0.0 else 0.0


def l2_grad(p, g, coef):  # g + d(0.5 coef p**2)/dp
    return g + coef * p


def l2_value(value, value_scale, alpha, sq, sw):
    """scikit-learn's loss: the data term times its scale plus ``0.5 alpha ||W||**2 / sw``."""
    return value * value_scale + (0.5 * alpha * sq / sw if alpha != 0.0 else 0.0)


def clip_scale(sq, clip, unit):
    """``min(1, clip / (unit * sqrt(sq) + 1e-6))`` for ``sq = |g / unit|**2`` (unit 1, or
    max|g| where ``|g|**2`` overflows); a NaN norm stays NaN (a plain ``min`` would read it as
    1, "no clipping", and hide the divergence).

    Float64 whatever g's dtype (``cpu/`` and ``cuda/`` bind the float64 copy): a float32
    gradient of norm 2e19 has a square beyond float32's range, so a float32 ``sq`` is inf,
    the scale 0 and every update skipped: the very exploding gradient clipping exists for.
    Only a float64 g (norm past 1.3e154) overflows the float64 sum: the kernels then sum the
    squares of ``g / max|g|`` instead and pass ``unit = max|g|``.
    """
    s = clip / (unit * math.sqrt(sq) + 1e-6)
    return 1.0 if s >= 1.0 else s


def unit_sq(g):
    """``(|g / max|g||**2, max|g|)``: the squared norm of a float64 g whose squares overflow
    the float64 sum, taken over g scaled to at most 1 (see ``clip_scale``)."""
    top = 0.0
    for i in range(g.size):
        top = max(top, abs(g[i]))
    sq = 0.0
    for i in range(g.size):
        gi = g[i] / top
        sq += gi * gi
    return sq, top


def unscaled(g, gscale):  # the by-value steps: g as it is (their math unchanged)
    return g


def scaled(g, gscale):  # the hyper steps: g times hyper's gscale (1 without clipping)
    return g * gscale


_FUNCTIONS = (span_bounds, l2_coef, l2_grad, l2_value, clip_scale, unit_sq, unscaled,
              scaled)


def compiled(decorate, dtype) -> SimpleNamespace:
    """Every function above for ``dtype`` through ``decorate`` (as ``scalar.compiled``)."""
    ns = scalar.typed_globals(globals(), dtype)
    return SimpleNamespace(**{fn.__name__: decorate(scalar.specialise(fn, ns, dtype))
                              for fn in _FUNCTIONS if isinstance(fn, FunctionType)})


SOURCE_TAG = hashlib.sha1(inspect.getsource(sys.modules[__name__]).encode()).hexdigest()[:12]
"""Hash of this file, in the cache names of the kernels that inline its functions."""
