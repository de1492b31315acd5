"""The unfused baseline: each kernel as the best plain NumPy / CuPy sequence a user would write.

The benchmarks' headline "fused vs unfused" ratios are against these, not against
``devnet.kernels.reference`` (the test oracle, written for clarity: ``z**3``, fresh temporaries
everywhere). Here: in-place operators and ``out=``, temporaries reused, no ``**`` for small integer
powers, one ``exp`` where the maths allows it. Same names and signatures as the kernel tables;
valid inputs only (no label checks: they time the arithmetic). ``tests/test_benchmarks.py``
checks every function against the reference.
"""

from __future__ import annotations

import math

import numpy as np

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715


def _xp(a):
    return np if isinstance(a, np.ndarray) else __import__("cupy")


# --- activations, in place ----------------------------------------------------------------------

def _sigmoid_(xp, A):
    # sigmoid(z) = 1 / (1 + exp(-z)); exp overflows to inf for z < -88 (float32): 1/inf = 0
    xp.negative(A, out=A)
    xp.exp(A, out=A)
    A += 1
    xp.reciprocal(A, out=A)


def _gelu_(xp, A):
    t = A * A
    t *= _GELU_K
    t += 1
    t *= A
    t *= _GELU_C
    xp.tanh(t, out=t)
    t += 1
    t *= 0.5
    A *= t


def _silu_(xp, A):
    s = xp.negative(A)
    xp.exp(s, out=s)
    s += 1
    A /= s


def _softmax_(xp, A):
    A -= A.max(axis=1, keepdims=True)
    xp.exp(A, out=A)
    A /= A.sum(axis=1, keepdims=True)


_FWD = {
    "identity": lambda xp, A, alpha: None,
    "relu": lambda xp, A, alpha: xp.maximum(A, 0, out=A),
    "leaky_relu": lambda xp, A, alpha: xp.maximum(A, A * alpha, out=A),  # 0 < alpha < 1
    "sigmoid": lambda xp, A, alpha: _sigmoid_(xp, A),
    "tanh": lambda xp, A, alpha: xp.tanh(A, out=A),
    "gelu": lambda xp, A, alpha: _gelu_(xp, A),
    "silu": lambda xp, A, alpha: _silu_(xp, A),
    "softmax": lambda xp, A, alpha: _softmax_(xp, A),
}


def bias_act_fwd(act, A, b, Z=None, alpha=0.01):
    """In place: ``A <- act(A + b)``; ``Z <- A + b`` first when given (see the reference)."""
    xp = _xp(A)
    A += b
    if Z is not None:
        xp.copyto(Z, A)
    with np.errstate(over="ignore"):
        _FWD[act](xp, A, alpha)


def tanh_rational_(A):
    """``A <- tanh(A)`` to the fused kernel's accuracy in plain NumPy.

    The same rational function as ``scalar.tanh_rational_f32`` (6 float32 ulp): the
    same-accuracy baseline for the tanh activation (NumPy's own tanh is accurate to ~1 ulp).
    """
    xp = _xp(A)
    xp.clip(A, -8.0, 8.0, out=A)
    u = A * A
    p = u * 1.5231501393486724e-08
    p += 2.1895417376072146e-05
    p *= u
    p += 0.0035716432612389326
    p *= u
    p += 0.13444535434246063
    p *= u
    p += 1.0
    q = u * 8.522881671524374e-07
    q += 0.0003411366487853229
    q *= u
    q += 0.026164615526795387
    q *= u
    q += 0.46777862310409546
    q *= u
    q += 1.0
    A *= p
    A /= q


# --- activation gradients: dZ = G * act'(.) -----------------------------------------------------

def _grad_into(act, xp, G, A, Z, dZ, alpha):
    if act == "identity":
        if dZ is not G:
            xp.copyto(dZ, G)
    elif act == "relu":
        xp.multiply(G, A > 0, out=dZ)
    elif act == "leaky_relu":
        xp.multiply(G, xp.where(A > 0, A.dtype.type(1), A.dtype.type(alpha)), out=dZ)
    elif act == "sigmoid":  # a (1 - a)
        t = xp.subtract(1, A)
        t *= A
        xp.multiply(G, t, out=dZ)
    elif act == "tanh":  # 1 - a a
        t = A * A
        xp.subtract(1, t, out=t)
        xp.multiply(G, t, out=dZ)
    elif act == "gelu":  # 0.5 (1 + th) + 0.5 z (1 - th th) c (1 + 3 k z z)
        z2 = Z * Z
        th = z2 * _GELU_K
        th += 1
        th *= Z
        th *= _GELU_C
        xp.tanh(th, out=th)
        inner = th * th
        xp.subtract(1, inner, out=inner)
        inner *= Z
        z2 *= 3 * _GELU_K
        z2 += 1
        inner *= z2
        inner *= _GELU_C
        inner += th
        inner += 1
        inner *= 0.5
        xp.multiply(G, inner, out=dZ)
    elif act == "silu":  # s (1 + z (1 - s)) = s (1 - a) + a, a = z s
        s = xp.negative(Z)
        with np.errstate(over="ignore"):
            xp.exp(s, out=s)
        s += 1
        xp.reciprocal(s, out=s)
        t = xp.subtract(1, A)
        t *= s
        t += A
        xp.multiply(G, t, out=dZ)
    elif act == "softmax":  # a (g - sum(g a))
        s = xp.einsum("ij,ij->i", G, A)[:, None]
        xp.subtract(G, s, out=dZ)
        dZ *= A
    else:
        raise ValueError(f"unknown activation {act!r}")


def act_bwd(act, G, A, Z, dZ, db, alpha=0.01):
    """``dZ <- G * act'(.)``, ``db <- column sums of dZ`` (see the reference)."""
    xp = _xp(G)
    _grad_into(act, xp, G, A, Z, dZ, alpha)
    dZ.sum(axis=0, out=db)


# --- losses -------------------------------------------------------------------------------------

def _coef(xp, weight, scale, n, dtype):
    if weight is None:
        return None
    c = weight.astype(dtype, copy=True)
    c *= scale
    return c


def softmax_xent(logits, target, grad, weight, scale):
    """Softmax cross-entropy: returns the weighted, scaled sum; writes ``grad`` (may alias)."""
    xp = _xp(logits)
    n = logits.shape[0]
    m = logits.max(axis=1, keepdims=True)
    if target.ndim == 1:
        rows = xp.arange(n)
        picked = logits[rows, target] - m[:, 0]  # read before grad may overwrite the logits
    else:
        tsum = target.sum(axis=1)
        tz = xp.einsum("ij,ij->i", target, logits)
    xp.subtract(logits, m, out=grad)
    xp.exp(grad, out=grad)
    s = grad.sum(axis=1)
    logs = xp.log(s)
    c = _coef(xp, weight, scale, n, logits.dtype)
    if target.ndim == 1:
        loss_rows = logs
        loss_rows -= picked
        grad /= s[:, None]
        grad[rows, target] -= 1
    else:
        logs += m[:, 0]
        loss_rows = logs * tsum - tz
        grad *= (tsum / s)[:, None]
        grad -= target
    if c is None:
        grad *= scale
        return scale * loss_rows.sum()
    grad *= c[:, None]
    return (c * loss_rows).sum()


def _finish(xp, value, grad, weight, scale, dtype):
    """Weighted, scaled sum of the elementwise ``value``; ``grad *= scale * w``."""
    c = _coef(xp, weight, scale, grad.shape[0], dtype)
    if c is None:
        grad *= scale
        return scale * value.sum()
    grad *= c[:, None]
    return xp.einsum("i,ij->", c, value) if value.ndim == 2 else (c * value).sum()


def sigmoid_bce(logits, target, grad, weight, scale):
    """``max(z, 0) - z t + log(1 + exp(-|z|))``; grad ``sigmoid(z) - t``."""
    xp = _xp(logits)
    e = xp.abs(logits)
    xp.negative(e, out=e)
    xp.exp(e, out=e)  # exp(-|z|), never overflows
    value = xp.log1p(e)
    value += xp.maximum(logits, 0)
    value -= logits * target
    xp.add(e, 1, out=grad)
    xp.reciprocal(grad, out=grad)  # 1 / (1 + e): sigmoid(|z|)
    xp.multiply(grad, e, out=grad, where=logits < 0)  # e / (1 + e) for z < 0
    grad -= target
    return _finish(xp, value, grad, weight, scale, logits.dtype)


def mse(pred, target, grad, weight, scale):
    """``(p - t)**2``; grad ``2 (p - t)``."""
    xp = _xp(pred)
    xp.subtract(pred, target, out=grad)
    rows = xp.einsum("ij,ij->i", grad, grad)
    grad *= 2
    c = _coef(xp, weight, scale, grad.shape[0], pred.dtype)
    if c is None:
        grad *= scale
        return scale * rows.sum()
    grad *= c[:, None]
    return (c * rows).sum()


def mae(pred, target, grad, weight, scale):
    """``|p - t|``; grad ``sign(p - t)``."""
    xp = _xp(pred)
    xp.subtract(pred, target, out=grad)
    value = xp.abs(grad)
    xp.sign(grad, out=grad)
    return _finish(xp, value, grad, weight, scale, pred.dtype)


def huber(pred, target, grad, weight, scale, delta=1.0):
    """``q (|r| - q / 2)`` with ``q = min(|r|, delta)``; grad ``clip(r, -delta, delta)``."""
    xp = _xp(pred)
    xp.subtract(pred, target, out=grad)
    a = xp.abs(grad)
    q = xp.minimum(a, delta)
    q *= 0.5
    a -= q
    q *= 2
    a *= q  # q (|r| - q / 2)
    xp.clip(grad, -delta, delta, out=grad)
    return _finish(xp, a, grad, weight, scale, pred.dtype)


def poisson(pred, target, grad, weight, scale):
    """``mu - t + t (log t - z)`` (0 at t = 0), mu = exp(z); grad ``mu - t``."""
    xp = _xp(pred)
    xp.exp(pred, out=grad)
    tlog = xp.log(xp.where(target > 0, target, 1))
    tlog -= pred
    tlog *= target
    tlog += grad
    grad -= target
    tlog -= target
    return _finish(xp, tlog, grad, weight, scale, pred.dtype)


# --- deep networks: LayerNorm rows, dropout ------------------------------------------------------

_U32 = 0xFFFFFFFF


def _mix32_(xp, h, t):
    """In place on uint32 ``h`` (``t``: a scratch of the same shape): ``scalar.mix32``; uint32
    products wrap modulo 2**32 by themselves, so no masking pass is needed."""
    xp.right_shift(h, 16, out=t)
    h ^= t
    h *= xp.uint32(0x7FEB352D)
    xp.right_shift(h, 15, out=t)
    h ^= t
    h *= xp.uint32(0x846CA68B)
    xp.right_shift(h, 16, out=t)
    h ^= t


def dropout_keep(xp, shape, p, key):
    """The keep mask (bool, ``shape``) of ``reference.dropout_mask``, in uint32 arithmetic."""
    from devnet.kernels import scalar

    h = xp.arange(math.prod(shape), dtype=xp.uint32)  # flat index mod 2**32, as the kernels
    t = xp.empty_like(h)
    h ^= xp.uint32(key & _U32)
    _mix32_(xp, h, t)
    h ^= xp.uint32((key >> 32) & _U32)
    _mix32_(xp, h, t)
    return (h >= xp.uint32(scalar.dropout_threshold(p))).reshape(shape)


def _scales(p, dtype):
    # (1 / (1 - p), 1 - p) rounded from float64 to the dtype, as every kernel table does
    t = np.dtype(dtype).type
    return t(1.0 / (1.0 - p)), t(1.0 - p)


def dropout_fwd(A, p, key):
    """In place inverted dropout: ``A <- A / (1 - p)`` where kept, 0 where dropped."""
    if p <= 0:
        return
    xp = _xp(A)
    A *= _scales(p, A.dtype)[0]
    A *= dropout_keep(xp, A.shape, p, key)


def bias_act_drop_fwd(act, A, b, Z, alpha, p, key, R=None, out=None):
    """``A <- dropout(act(A + b))`` (``Z <- A + b`` when given); ``out <- R + A`` when R is."""
    bias_act_fwd(act, A, b, Z, alpha)
    dropout_fwd(A, p, key)
    if R is not None:
        _xp(A).add(R, A, out=out)


def act_drop_bwd(act, G, A, Z, dZ, db, alpha, p, key):
    """``dZ <- G * mask / (1 - p) * act'(.)``, ``db <- column sums``; dZ may be G."""
    xp = _xp(G)
    scale, inv = _scales(p, G.dtype) if p > 0 else (None, None)
    # act is recovered from the kept outputs: A (1 - p); where dropped the mask zeroes dZ
    a = A * inv if p > 0 else A
    _grad_into(act, xp, G, a, Z if Z is not None else a, dZ, alpha)
    if p > 0:
        dZ *= scale
        dZ *= dropout_keep(xp, G.shape, p, key)
    dZ.sum(axis=0, out=db)


def layernorm_fwd(X, gamma, beta, Y, mean, rstd, eps=1e-5):
    """Per row ``Y <- gamma (X - mean) / sqrt(var + eps) + beta``; writes ``mean``, ``rstd``."""
    xp = _xp(X)
    X.mean(axis=1, out=mean)
    xp.subtract(X, mean[:, None], out=Y)
    rstd[...] = xp.einsum("ij,ij->i", Y, Y)  # sum of squares of the centred rows, no temporary
    rstd /= X.shape[1]
    rstd += X.dtype.type(eps)
    xp.sqrt(rstd, out=rstd)
    xp.reciprocal(rstd, out=rstd)
    Y *= rstd[:, None]
    Y *= gamma
    Y += beta


def layernorm_bwd(G, X, mean, rstd, gamma, dX, dgamma, dbeta, R=None):
    """``dX <- dL/dX (+ R)``, ``dgamma``, ``dbeta`` <- column sums; dX may be G or R."""
    xp = _xp(G)
    xhat = xp.subtract(X, mean[:, None])
    xhat *= rstd[:, None]
    g = G * xhat
    g.sum(axis=0, out=dgamma)
    G.sum(axis=0, out=dbeta)
    xp.multiply(G, gamma, out=g)
    g_mean = g.mean(axis=1)
    gx_mean = xp.einsum("ij,ij->i", g, xhat)
    gx_mean /= X.shape[1]
    xhat *= gx_mean[:, None]
    g -= g_mean[:, None]
    g -= xhat
    g *= rstd[:, None]
    if R is None:
        xp.copyto(dX, g)
    else:
        xp.add(R, g, out=dX)


# --- optimizer steps over the flat buffer -------------------------------------------------------

def _decayed(xp, p, g, wd):
    """``g + wd p`` (a new buffer), or ``g`` itself when wd == 0."""
    if not wd:
        return g
    d = p * wd
    d += g
    return d


def sgd_step(p, g, lr, wd):
    xp = _xp(p)
    d = _decayed(xp, p, g, wd)
    if d is g:
        d = g * lr
    else:
        d *= lr
    p -= d


def momentum_step(p, g, buf, lr, mu, wd):
    xp = _xp(p)
    d = _decayed(xp, p, g, wd)
    buf *= mu
    buf += d
    p -= lr * buf


def nesterov_step(p, g, buf, lr, mu, wd):
    xp = _xp(p)
    d = _decayed(xp, p, g, wd)
    buf *= mu
    buf += d
    step = buf * mu
    step += d
    step *= lr
    p -= step


def rmsprop_step(p, g, sq, mom, gavg, lr, rho, mu, eps, wd, centered):
    xp = _xp(p)
    d = _decayed(xp, p, g, wd)
    sq *= rho
    t = d * d
    t *= 1 - rho
    sq += t
    if centered:
        gavg *= rho
        xp.multiply(d, 1 - rho, out=t)
        gavg += t
        xp.multiply(gavg, gavg, out=t)
        xp.subtract(sq, t, out=t)
        xp.sqrt(t, out=t)
    else:
        xp.sqrt(sq, out=t)
    t += eps
    if mu > 0:
        mom *= mu
        xp.divide(d, t, out=t)
        mom += t
        xp.multiply(mom, lr, out=t)
    else:
        xp.divide(d, t, out=t)
        t *= lr
    p -= t


def _adam(xp, p, d, m, v, vmax, lr, beta1, beta2, eps, bc1, bc2, amsgrad):
    m *= beta1
    t = d * (1 - beta1)
    m += t
    v *= beta2
    xp.multiply(d, d, out=t)
    t *= 1 - beta2
    v += t
    if amsgrad:
        xp.maximum(vmax, v, out=vmax)
    xp.multiply(vmax if amsgrad else v, 1 / bc2, out=t)
    xp.sqrt(t, out=t)
    t += eps
    xp.divide(m, t, out=t)
    t *= lr / bc1
    p -= t


def adam_step(p, g, m, v, vmax, lr, beta1, beta2, eps, wd, bc1, bc2, amsgrad):
    xp = _xp(p)
    _adam(xp, p, _decayed(xp, p, g, wd), m, v, vmax, lr, beta1, beta2, eps, bc1, bc2, amsgrad)


def adamw_step(p, g, m, v, vmax, lr, beta1, beta2, eps, wd, bc1, bc2, amsgrad):
    xp = _xp(p)
    p *= 1 - lr * wd
    _adam(xp, p, g, m, v, vmax, lr, beta1, beta2, eps, bc1, bc2, amsgrad)
