"""xp-generic (NumPy or CuPy) versions of every fused op: the oracle kernels are tested against.

Every kernel of ``cpu/`` and ``cuda/`` has its counterpart here, of the same name and signature;
the by-value optimizer steps (``adam_step``, ...) are the oracle's alone. Conventions shared by
all kernel tables:

- matrices are C-contiguous ``(n_samples, n_features)``; dtypes float32 or float64;
- ``act`` is an activation name from ``ACTIVATION_NAMES``; ``alpha`` is leaky_relu's slope;
- losses return ``scale * sum_i w_i * l_i`` (a 0-d array / scalar on the array's device) and
  write ``grad = scale * w_i * dl_i/dpred`` so the caller picks the mean (``scale = 1/n``);
- optimizer steps update ``p`` and their state buffers in place over the whole flat buffer.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
from devnet.kernels import norms, scalar

# re-exported from table.py for the tests and benchmarks that read them from the oracle
from devnet.kernels.table import (  # noqa: F401
    ACTIVATION_NAMES,
    HYPER_CLIP,
    HYPER_GSCALE,
    HYPER_STEPWISE0,
    HYPER_T,
    HYPER_T0,
    KERNEL_NAMES,
    LAYERNORM_EPS,
    LOSS_KERNELS,
    LOSSES,
    NEEDS_PREACTIVATION,
    ROWWISE,
    STEP_HYPER,
    STEP_KERNELS,
    STEPS,
    gated_scalars,
    hyper_layout,
    hyper_slots,
    step_hyper_argnames,
)

_GELU_C = math.sqrt(2.0 / math.pi)


def get_xp(a):
    """The array module (numpy or cupy) that owns ``a``."""
    if isinstance(a, np.ndarray):
        return np
    try:
        import cupy

        return cupy.get_array_module(a)
    except ImportError:  # pragma: no cover - only without CuPy
        return np


def _sigmoid(xp, z):
    # 1 / (1 + exp(-z)) without overflow: exp only ever sees -|z|
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


# --- activations: value(xp, z, alpha) and d act / d z = grad(xp, a, z, alpha), by name ---------

def _gelu(xp, z, alpha):  # tanh approximation (Hendrycks & Gimpel), as in GPT-2
    return 0.5 * z * (1 + xp.tanh(_GELU_C * (z + 0.044715 * z**3)))


def _gelu_grad(xp, a, z, alpha):
    t = xp.tanh(_GELU_C * (z + 0.044715 * z**3))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * z * z)


def _silu_grad(xp, a, z, alpha):  # d silu = s (1 + z (1 - s)), s = sigmoid(z)
    s = _sigmoid(xp, z)
    return s * (1 + z * (1 - s))


def _softmax(xp, z, alpha):
    e = xp.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


ACTIVATIONS = {
    "identity": (lambda xp, z, alpha: z, lambda xp, a, z, alpha: xp.ones_like(a)),
    # d relu = 1 where the output is positive
    "relu": (lambda xp, z, alpha: xp.maximum(z, 0),
             lambda xp, a, z, alpha: (a > 0).astype(a.dtype)),
    # sign is kept by the output, so a > 0 <=> z > 0
    "leaky_relu": (lambda xp, z, alpha: xp.where(z > 0, z, alpha * z),
                   lambda xp, a, z, alpha: xp.where(a > 0, 1, alpha).astype(a.dtype)),
    # d sigmoid = y (1 - y), from the output
    "sigmoid": (lambda xp, z, alpha: _sigmoid(xp, z), lambda xp, a, z, alpha: a * (1 - a)),
    # d tanh = 1 - y**2, from the output
    "tanh": (lambda xp, z, alpha: xp.tanh(z), lambda xp, a, z, alpha: 1 - a * a),
    "gelu": (_gelu, _gelu_grad),
    "silu": (lambda xp, z, alpha: z * _sigmoid(xp, z), _silu_grad),
    "softmax": (_softmax, None),  # row-wise: act_bwd applies its row Jacobian
}


def _act(act, which):
    """Activation ``act``'s value (``which`` 0) or derivative (1), or a ValueError."""
    fn = ACTIVATIONS[act][which] if act in ACTIVATIONS else None
    if fn is None:
        raise ValueError(f"unknown activation {act!r}; valid: {', '.join(ACTIVATION_NAMES)}")
    return fn


def bias_act_fwd(act, A, b, Z=None, alpha=0.01):
    """In place ``A <- act(A + b)``; ``Z <- A + b`` first when given.

    A: (n, m) matmul output; b: (m,); Z: (n, m) or None, needed when ``act in
    NEEDS_PREACTIVATION``. Row-wise ``softmax`` is allowed (output layers).
    """
    xp = get_xp(A)
    A += b
    if Z is not None:
        Z[...] = A
    A[...] = _act(act, 0)(xp, A, alpha)


def act_bwd(act, G, A, Z, dZ, db, alpha=0.01):
    """``dZ <- G * act'(.)`` and ``db <- column sums of dZ``, in one pass.

    G: (n, m) dL/dA; A: (n, m) forward output; Z: (n, m) pre-activation or None (needed for
    ``NEEDS_PREACTIVATION``); dZ: (n, m), may be G; db: (m,). Softmax applies its row Jacobian
    ``dZ = A * (G - sum(G * A, axis=1))``.
    """
    xp = get_xp(G)
    if act == "softmax":
        s = (G * A).sum(axis=1, keepdims=True)
        dZ[...] = A * (G - s)
    else:
        dZ[...] = G * _act(act, 1)(xp, A, Z, alpha)
    db[...] = dZ.sum(axis=0)


def act_fwd(act, Z, alpha=0.01):
    """``act(Z)`` as a new array (used by tests and predict paths, never in the step)."""
    return _act(act, 0)(get_xp(Z), Z, alpha)


# --- losses: value and gradient in one call ----------------------------------------------------

def _row_weight(xp, weight, n, dtype):
    return xp.ones((n,), dtype=dtype) if weight is None else weight


def softmax_xent(logits, target, grad, weight, scale):
    """Softmax cross-entropy from logits; returns ``scale * sum_i w_i l_i``; writes ``grad``.

    logits: (n, k); target: (n,) integer labels or (n, k) probabilities (``l_i = sum_k t_ik
    (lse_i - z_ik)``); grad: (n, k), may be logits; weight: (n,) or None. A label outside
    [0, k) (or not a whole number) makes its row's loss and gradient NaN, never an index.
    """
    xp = get_xp(logits)
    n, k = logits.shape
    w = _row_weight(xp, weight, n, logits.dtype)
    m = logits.max(axis=1, keepdims=True)
    lse = m + xp.log(xp.exp(logits - m).sum(axis=1, keepdims=True))
    p = xp.exp(logits - lse)
    if target.ndim == 1:
        rows = xp.arange(n)
        # a label that is not an integer in [0, k) gives a NaN row, as the fused kernels do
        valid = (target >= 0) & (target < k)
        t = xp.where(valid, target, 0).astype(xp.int64)
        valid &= t == target  # whole numbers only
        t[~valid] = 0
        loss_rows = xp.where(valid, lse[:, 0] - logits[rows, t], xp.nan)
        g = p
        g[rows, t] -= 1  # d l / d z = softmax - onehot
        g[~valid] = xp.nan
    else:
        tsum = target.sum(axis=1, keepdims=True)
        loss_rows = (target * (lse - logits)).sum(axis=1)
        g = p * tsum - target  # d l / d z = p * sum(t) - t
    total = scale * (w * loss_rows).sum()
    grad[...] = g * (scale * w)[:, None]
    return total


# Elementwise losses keyed by name: f(xp, pred, target, delta) -> (value, d value / d pred).

def _sigmoid_bce(xp, z, t, delta):
    # l = max(z, 0) - z t + log(1 + exp(-|z|)); d l / d z = sigmoid(z) - t
    value = xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z)))
    return value, _sigmoid(xp, z) - t


def _mse(xp, p, t, delta):  # (p - t)**2; d = 2 (p - t)
    r = p - t
    return r * r, 2 * r


def _mae(xp, p, t, delta):  # |p - t|; d = sign(p - t), 0 at 0
    r = p - t
    return xp.abs(r), xp.sign(r)


def _huber(xp, p, t, delta):
    # r**2 / 2 for |r| <= delta, else delta (|r| - delta / 2); d = r inside, delta sign(r) out
    r = p - t
    a = xp.abs(r)
    inside = a <= delta
    value = xp.where(inside, 0.5 * r * r, delta * (a - 0.5 * delta))
    return value, xp.where(inside, r, delta * xp.sign(r))


def _poisson(xp, z, t, delta):
    # half Poisson deviance, log link: z = log(mu), t >= 0; l = t log(t / mu) - t + mu
    # (t log t is 0 at t = 0); d = mu - t
    mu = xp.exp(z)
    tlog = xp.where(t > 0, t * (xp.log(xp.where(t > 0, t, 1)) - z), 0)
    return mu - t + tlog, mu - t


ELEMENT_LOSSES = {"sigmoid_bce": _sigmoid_bce, "mse": _mse, "mae": _mae, "huber": _huber,
                  "poisson": _poisson}


def _element_loss(name):
    """The oracle entry of element loss ``name`` (``table.LOSSES``): shapes (n, k)."""
    row, f = LOSSES[name], ELEMENT_LOSSES[name]
    defaults = dict(row.params)

    def loss(pred, target, grad, weight, scale, **params):
        xp = get_xp(pred)
        n = pred.shape[0]
        w = _row_weight(xp, weight, n, pred.dtype)[:, None]
        value, g = f(xp, pred, target, {**defaults, **params}.get("delta", 1.0))
        total = scale * (w * value).sum()
        grad[...] = g * (scale * w)
        return total

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = row.doc + " Returns ``scale * sum w_i l_i``; writes ``grad``."
    return loss


for _name in ELEMENT_LOSSES:
    globals()[_name] = _element_loss(_name)


# --- optimizer steps: p, g and the state (N,) of one dtype, p and the state in place ---------
# ``wd`` is L2 weight decay added to the gradient, except in adamw_step (decoupled). No kernel
# table holds these: the ``<step>_hyper`` kernels must match them bit for bit.

def sgd_step(p, g, lr, wd):
    """``p -= lr (g + wd p)``."""
    p -= lr * (g + wd * p)


def momentum_step(p, g, buf, lr, mu, wd):
    """Heavy ball: ``buf = mu buf + d; p -= lr buf`` with ``d = g + wd p``."""
    d = g + wd * p
    buf *= mu
    buf += d
    p -= lr * buf


def nesterov_step(p, g, buf, lr, mu, wd):
    """Nesterov (Sutskever form): ``buf = mu buf + d; p -= lr (d + mu buf)``."""
    d = g + wd * p
    buf *= mu
    buf += d
    p -= lr * (d + mu * buf)


def rmsprop_step(p, g, sq, mom, gavg, lr, rho, mu, eps, wd, centered):
    """RMSProp: ``sq = rho sq + (1 - rho) d**2``; step ``d / (sqrt(sq) + eps)``.

    centered: ``gavg = rho gavg + (1 - rho) d``, denominator ``sqrt(sq - gavg**2) + eps``;
    mu > 0: ``mom = mu mom + step; p -= lr mom``. mom / gavg may be None when unused.
    """
    xp = get_xp(p)
    d = g + wd * p
    sq *= rho
    sq += (1 - rho) * d * d
    if centered:
        gavg *= rho
        gavg += (1 - rho) * d
        denom = xp.sqrt(sq - gavg * gavg) + eps
    else:
        denom = xp.sqrt(sq) + eps
    if mu > 0:
        mom *= mu
        mom += d / denom
        p -= lr * mom
    else:
        p -= lr * d / denom


def adam_step(p, g, m, v, vmax, lr, beta1, beta2, eps, wd, bc1, bc2, amsgrad):
    """Adam with L2 ``wd``: ``p -= lr (m / bc1) / (sqrt(v / bc2) + eps)``, bc1 = 1 - beta1**t,
    bc2 = 1 - beta2**t; amsgrad: ``vmax = max(vmax, v)`` in place of v (else vmax may be None)."""
    _adam(p, g + wd * p, m, v, vmax, lr, beta1, beta2, eps, bc1, bc2, amsgrad)


def adamw_step(p, g, m, v, vmax, lr, beta1, beta2, eps, wd, bc1, bc2, amsgrad):
    """AdamW: decoupled decay ``p *= 1 - lr wd``, then Adam on ``g``."""
    p *= 1 - lr * wd
    _adam(p, g, m, v, vmax, lr, beta1, beta2, eps, bc1, bc2, amsgrad)


def _adam(p, d, m, v, vmax, lr, beta1, beta2, eps, bc1, bc2, amsgrad):
    xp = get_xp(p)
    m *= beta1
    m += (1 - beta1) * d
    v *= beta2
    v += (1 - beta2) * d * d
    if amsgrad:
        xp.maximum(vmax, v, out=vmax)
        vhat = vmax
    else:
        vhat = v
    p -= lr * (m / bc1) / (xp.sqrt(vhat / bc2) + eps)


# The same steps with their scalars in a float64 array (``table.hyper_layout``), and its
# per-step advance. The oracle reads the scalars to the host and runs the by-value step above.

def opt_advance(hyper, table):
    """In place ``t += 1``, then the stepwise slots <- row ``min(t - 1 - t0, rows - 1)`` (>= 0)
    of ``table``. hyper: (H,) float64; table: (rows, columns) float64."""
    xp = get_xp(hyper)
    hyper[HYPER_T] += 1.0
    ahead = xp.minimum(hyper[HYPER_T] - hyper[HYPER_T0], table.shape[0])
    row = xp.where(ahead >= 1.0, ahead, 1.0).astype(np.int64) - 1  # NaN -> row 0
    hyper[HYPER_STEPWISE0:HYPER_STEPWISE0 + table.shape[1]] = table[row]


def _step_hyper(name):
    step_name = STEP_HYPER[name]
    by_value, slots = globals()[step_name], hyper_slots(step_name)
    n_arrays = 1 + len(STEPS[step_name].buffers)
    argnames = step_hyper_argnames(name)
    gated = [(argnames.index(b), STEPS[step_name].scalars.index(h))
             for b, h in gated_scalars(step_name)]

    def step(*args):
        values = args[n_arrays].tolist()
        scalars = [values[s] for s in slots]
        for pos, k in gated:  # a gated buffer left None: its term off
            if args[pos] is None:
                scalars[k] = 0.0
        arrays = list(args[:n_arrays])
        gscale = values[HYPER_GSCALE]  # the clip's scale, applied to g as it is read
        if gscale != 1.0:
            arrays[1] = arrays[1] * arrays[1].dtype.type(gscale)
        by_value(*arrays, *scalars, *args[n_arrays + 1:])

    step.__name__ = step.__qualname__ = name
    step.__signature__ = inspect.Signature(
        [inspect.Parameter(a, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in argnames])
    step.__doc__ = (f"``{step_name}`` with its scalars read from ``hyper`` (float64, slots "
                    f"{', '.join(hyper_layout(step_name))}).")
    return step


for _name in STEP_HYPER:  # sgd_step_hyper, ..., adamw_step_hyper
    globals()[_name] = _step_hyper(_name)


# --- reductions over the flat buffers (math in norms.py; sums read to the host) ---------------

def opt_clip(g, hyper):
    """``hyper[gscale] <- min(1, hyper[clip] / (|g| + 1e-6))``, in float64 whatever g's dtype
    (``norms.clip_scale``). g: (N,), unchanged; hyper: (H,) float64, H >= the header's slots."""
    g64 = g.astype(np.float64)
    top = np.float64(1.0)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        sq = np.float64((g64 ** 2).sum())
        if sq == np.inf and g.dtype == np.float64:  # norm past 1.3e154: rescaled by max |g|
            top = np.abs(g64).max()
            sq = np.float64(((g64 / top) ** 2).sum())
        scale = np.float64(hyper[HYPER_CLIP]) / (top * np.sqrt(sq) + 1e-6)
    hyper[HYPER_GSCALE] = 1.0 if scale >= 1.0 else float(scale)


def l2_penalty(p, g, spans, alpha, weight, count, value, value_scale=1.0):
    """scikit-learn's L2 term over the weight spans of the flat buffers, in place on g.

    p, g: (N,); spans: (k, 2) int64 ``[start, stop)`` offsets of the weights in p (sorted,
    disjoint; ``norms.span_bounds`` clamps any other); alpha: the L2 strength; weight: (n,)
    sample weights or None (then ``count`` samples); value: the loss value (a number or a
    1-element array), times value_scale. With ``sw = sum(weight)`` (or count):
    ``g[span] += alpha / sw * p[span]``; returns ``value * value_scale + 0.5 alpha
    sum(p[spans]**2) / sw`` (squares summed in float64).
    """
    # NumPy float64 scalars: a batch weighing 0 gives inf / NaN, as the kernels, not an error
    alpha = np.float64(alpha)
    sw = np.float64(count if weight is None else float(weight.astype(np.float64).sum()))
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = p.dtype.type(norms.l2_coef(alpha, sw))
    sq, prev = 0.0, 0
    for start, stop in spans.tolist():
        lo, hi = norms.span_bounds(int(start), int(stop), prev, p.size)
        prev = hi
        part = p[lo:hi]
        with np.errstate(invalid="ignore", over="ignore"):  # inf coef (sw = 0): as the kernels
            g[lo:hi] += coef * part
        sq += float((part.astype(np.float64) ** 2).sum())
    if getattr(value, "ndim", 0):
        value = value.reshape(())
    with np.errstate(divide="ignore", invalid="ignore"):
        return norms.l2_value(value, value_scale, alpha, sq, sw)


# --- deep networks: LayerNorm rows, dropout, the residual add ----------------------------------
# Dropout masks: ``scalar.dropout_keep`` (uint64 arithmetic, run on the arrays as it is) on each
# element's C-order flat index, keyed by ``scalar.dropout_key(seed, step, layer)``.

def dropout_mask(xp, shape, p, key, row0=0):
    """The keep mask (bool, ``shape``) of dropout rate ``p`` and 64-bit ``key``; ``row0``: the
    global row of the array's first row (element (i, j) is hashed as (row0 + i) m + j)."""
    if p <= 0:
        return xp.ones(shape, dtype=bool)
    start = row0 * math.prod(shape[1:])
    e = xp.arange(start, start + math.prod(shape), dtype=xp.uint64).reshape(shape)
    return scalar.dropout_keep(e, xp.uint64(key & 0xFFFFFFFF), xp.uint64(key >> 32),
                               xp.uint64(scalar.dropout_threshold(p)))


def dropout_scales(p, dtype):
    """``(1 / (1 - p), 1 - p)`` in ``dtype``, rounded from float64 as every table does."""
    t = np.dtype(dtype).type
    return t(1.0 / (1.0 - p)), t(1.0 - p)


def dropout_fwd(A, p, key, row0=0):
    """In place inverted dropout: ``A <- A / (1 - p)`` where kept, 0 where dropped.

    A: (n, m); p: rate in [0, 1); key: 64-bit int (``scalar.dropout_key``); row0: the global
    row of A's first row (a data-parallel shard): the mask is a function of (key, (row0 + i) m
    + j, p), so the shards' masks are the whole batch's. Its backward is the same call on G.
    """
    xp = get_xp(A)
    scale, _ = dropout_scales(p, A.dtype)
    keep = dropout_mask(xp, A.shape, p, key, row0)
    A[...] = xp.where(keep, A * scale, A.dtype.type(0))


def bias_act_drop_fwd(act, A, b, Z, alpha, p, key, R=None, out=None, row0=0):
    """In place ``A <- dropout(act(A + b))`` (``Z <- A + b`` first when given); then, when ``R``
    is given, ``out <- R + A``. A, Z, R, out: (n, m); b: (m,); p, key, row0: as
    ``dropout_fwd`` (p = 0: no dropout). Elementwise activations only.
    """
    bias_act_fwd(act, A, b, Z, alpha)
    if p > 0:
        dropout_fwd(A, p, key, row0)
    if R is not None:
        get_xp(A).add(R, A, out=out)


def act_drop_bwd(act, G, A, Z, dZ, db, alpha, p, key, row0=0):
    """Backward of ``bias_act_drop_fwd``: ``dZ <- G * mask / (1 - p) * act'(.)``, ``db <-
    column sums of dZ``. A: the forward's output, ``act = A (1 - p)`` where kept; G, Z, dZ:
    (n, m), dZ may be G; db: (m,); p, key, row0: the forward's (the mask is recomputed).
    """
    xp = get_xp(G)
    scale, inv = dropout_scales(p, G.dtype)
    keep = dropout_mask(xp, G.shape, p, key, row0)
    a = A * inv
    dZ[...] = xp.where(keep, G * scale * _act(act, 1)(xp, a, Z, alpha), G.dtype.type(0))
    db[...] = dZ.sum(axis=0)


def layernorm_fwd(X, gamma, beta, Y, mean, rstd, eps=LAYERNORM_EPS):
    """Per row ``Y <- gamma (X - mean) / sqrt(var + eps) + beta``; writes ``mean``, ``rstd``.

    X, Y: (n, m), Y not aliasing X; gamma, beta: (m,); mean, rstd: (n,) (``rstd = 1/sqrt(var +
    eps)``, the biased variance); all one float dtype.
    """
    xp = get_xp(X)
    mu = X.mean(axis=1)
    var = ((X - mu[:, None]) ** 2).mean(axis=1)
    mean[...] = mu
    rstd[...] = 1 / xp.sqrt(var + X.dtype.type(eps))
    Y[...] = (X - mean[:, None]) * rstd[:, None] * gamma + beta


def layernorm_bwd(G, X, mean, rstd, gamma, dX, dgamma, dbeta, R=None):
    """Backward of ``layernorm_fwd``: ``dX <- dL/dX`` (plus ``R``, a residual block's skip
    gradient, when given), ``dgamma``, ``dbeta``. G: (n, m) dL/dY; X, mean, rstd: the
    forward's; dX: (n, m), may be G or R; dgamma, dbeta: (m,).
    """
    xhat = (X - mean[:, None]) * rstd[:, None]
    g = G * gamma
    dx = rstd[:, None] * (g - g.mean(axis=1, keepdims=True)
                          - xhat * (g * xhat).mean(axis=1, keepdims=True))
    dgamma[...] = (G * xhat).sum(axis=0)
    dbeta[...] = G.sum(axis=0)
    dX[...] = dx if R is None else R + dx
