"""The scalar math of the reductions over the flat buffers: scikit-learn's L2 term
(``l2_penalty``) and gradient-norm clipping (``opt_clip``, and the scale the hyper steps apply
to g).

Compiled like ``scalar.py`` by ``cpu/`` and ``cuda/``; ``reference.py`` runs the same functions
on host floats. Apart from ``scalar.py`` so that its edits do not recompile every kernel. The
kernels sum squares in float64 and pass the finished sum in their dtype, except to
``clip_scale``, which runs in float64 for every dtype.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import sys
from types import SimpleNamespace

from devnet.kernels import scalar


def span_bounds(start, stop, prev, n):
    """``[start, stop)`` clamped into ``[prev, n]``: whatever a span array holds, a kernel
    looping over the clamped spans in order stays inside the buffer, each element once."""
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
    max|g| where ``|g|**2`` overflows); a NaN norm stays NaN (a plain ``min`` would hide it).

    Float64 whatever g's dtype: a float32 g of norm 2e19 squares past float32's range, which
    would make the scale 0 and skip every update. Only a float64 g (norm past 1.3e154)
    overflows the float64 sum: the kernels then pass the squares of ``g / max|g|`` and
    ``unit = max|g|``.
    """
    s = clip / (unit * math.sqrt(sq) + 1e-6)
    return 1.0 if s >= 1.0 else s


def unit_sq(g):
    """``(|g / max|g||**2, max|g|)``, for a float64 g whose squares overflow (``clip_scale``)."""
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


_FUNCTIONS = (span_bounds, l2_coef, l2_grad, l2_value, clip_scale, unit_sq, unscaled, scaled)


def compiled(decorate, dtype) -> SimpleNamespace:
    """Every function above for ``dtype`` through ``decorate`` (as ``scalar.compiled``)."""
    ns = scalar.typed_globals(globals(), dtype)
    return SimpleNamespace(**{fn.__name__: decorate(scalar.specialise(fn, ns, dtype))
                              for fn in _FUNCTIONS})


SOURCE_TAG = hashlib.sha1(inspect.getsource(sys.modules[__name__]).encode()).hexdigest()[:12]
"""Hash of this file, in the cache names of the kernels that inline its functions."""
