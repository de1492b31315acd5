"""The scalar math of every fused op, written once; ``cpu/`` and ``cuda/`` compile it.

Plain Python functions on scalars: Numba inlines them into CPU loops and CUDA kernels.
``compiled(decorate, dtype)`` clones each with its float literals and float globals typed as
``dtype``: Numba types a Python float literal as float64, which would send a whole float32
kernel to float64 (half the SIMD lanes, f64 divides on the GPU).

- activations: ``<name>(z, alpha)`` and ``<name>_grad(a, z, alpha)`` (from the output ``a`` or
  the pre-activation ``z``); ``ACTIVATIONS`` maps names to the pair;
- losses: ``<name>(pred, target, delta) -> (value, dvalue/dpred)`` per element, and the pieces
  of a softmax-cross-entropy row;
- optimizers: the per-element update of each step, returning the new parameter and state.

``exp`` and ``log1p`` are written out so that LLVM can vectorise the CPU loops: without SVML
``math.exp`` is a libm call per element (1M float64 exps: 11.8 ms, against 2.1 ms); float32
gets ``exp_f32`` (degree 6, where float64 needs 12).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import sys
from types import CodeType, FunctionType, SimpleNamespace

import numpy as np

# --- elementary functions, vectorisable --------------------------------------------------------

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact (Cody-Waite)
_LN2_LO = 1.90821492927058770002e-10
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715


def exp(x):
    """``e**x`` to about 1 ulp in float64; clamps to [-708, 709] (no inf, no subnormals)."""
    x = min(max(x, -708.0), 709.0)
    k = math.floor(x * _LOG2E + 0.5)
    r = x - k * _LN2_HI - k * _LN2_LO  # |r| <= ln2 / 2: Taylor to r**12 is below 1 ulp
    p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (
        1 / 720 + r * (1 / 5040 + r * (1 / 40320 + r * (1 / 362880 + r * (
            1 / 3628800 + r * (1 / 39916800 + r * (1 / 479001600))))))))))))
    # 2**k built from its bits: a bit cast, not a libm call
    return p * np.int64((np.int64(k) + 1023) << 52).view(np.float64)


# Cody-Waite split of ln 2 for float32: _LN2_HI_F32 = 355/512 has 9 significant bits, so
# k * _LN2_HI_F32 is exact for |k| <= 2**15; the degree-6 polynomial is Cephes' expf (minimax).
_LN2_HI_F32 = 0.693359375
_LN2_LO_F32 = -2.12194440e-4


def exp_f32(x):
    """``e**x`` to about 1 ulp in float32; 0 from -87 down, inf from 88.73 up.

    Subnormal results are flushed to 0: x86 takes a microcode assist per subnormal element
    (bias + sigmoid over 1M float32 at z = -95: 11.3 ms, against 0.74 ms at z = -5).
    """
    xc = min(max(x, -87.0), 89.0)  # so k stays in [-126, 128]: no NaN from inf * 0
    k = np.floor(xc * _LOG2E + 0.5)  # np.floor keeps x's type (math.floor is an int64)
    r = xc - k * _LN2_HI_F32 - k * _LN2_LO_F32  # |r| <= ln2 / 2
    p = 1.0 + (r + r * r * (0.5000000120 + r * (0.16666665459 + r * (0.041665795894 + r * (
        0.0083334519073 + r * (0.0013981999507 + r * 0.00019875691500))))))
    # times 2**k in two steps: 2**k1 added to p's exponent bits (exact), then one multiply by
    # 2**k2, which rounds once and overflows to inf (a bit-cast 2**k cannot reach k = 128, and
    # two float multiplies could be reassociated under fastmath into 2**k1 * 2**k2 = inf)
    ki = np.int32(k)
    k1 = np.int32(ki >> 1)
    q = np.int32(np.float32(p).view(np.int32) + (k1 << 23)).view(np.float32)
    y = q * np.int32((ki - k1 + 127) << 23).view(np.float32)
    return 0.0 if x < -87.0 else y


def log1p(t):
    """``log(1 + t)`` for ``0 <= t <= 1`` (what log-sum-exp terms need), to a few ulp."""
    s = t / (2.0 + t)  # log1p(t) = 2 atanh(s), s in [0, 1/3]: the series needs s**33
    s2 = s * s
    q = 1 / 3 + s2 * (1 / 5 + s2 * (1 / 7 + s2 * (1 / 9 + s2 * (1 / 11 + s2 * (1 / 13 + s2 * (
        1 / 15 + s2 * (1 / 17 + s2 * (1 / 19 + s2 * (1 / 21 + s2 * (1 / 23 + s2 * (
            1 / 25 + s2 * (1 / 27 + s2 * (1 / 29 + s2 * (1 / 31 + s2 * (1 / 33)))))))))))))))
    return 2.0 * s * (1.0 + s2 * q)


def sigmoid_of(z):
    """``1 / (1 + e**-z)`` without overflow for either sign."""
    e = exp(-abs(z))
    return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)


def tanh_of(z):
    """``tanh(z)``; an odd Taylor polynomial near 0, where ``(1 - t) / (1 + t)`` cancels."""
    # |z| capped at 20, where tanh is 1 in float64 too: past ~44 exp(-2x) is a float32
    # subnormal, slow on x86 (bias+gelu on 1M float32, a tenth above 50: 7.1 ms, against 1.05)
    x = min(abs(z), 20.0)
    x2 = x * x
    small = x * (1.0 + x2 * (-1 / 3 + x2 * (2 / 15 + x2 * (-17 / 315 + x2 * (
        62 / 2835 + x2 * (-1382 / 155925 + x2 * (21844 / 6081075)))))))
    t = exp(-2.0 * x)
    y = small if x < 0.0625 else (1.0 - t) / (1.0 + t)
    return y if z >= 0 else -y


# tanh(x) / x = P(x**2) / Q(x**2) on |x| <= 8, fitted for float32 (Lawson): 5.5 ulp at most,
# never above 1; no exp, no branch (bias + tanh, 1M float32: 0.26 ms against 0.73 ms). Only the
# tanh activation uses it: gelu's derivative needs 1 + t near t = -1 to a fraction of an ulp.
def tanh_value(z):
    """The tanh activation's value: ``tanh_of``, or ``tanh_rational_f32`` in float32."""
    return tanh_of(z)


def tanh_rational_f32(z):
    """``tanh(z)`` to 6 float32 ulp: a rational function of z, odd, exactly z near 0."""
    x = min(max(z, -8.0), 8.0)
    u = x * x
    p = 1.0 + u * (0.13444535434246063 + u * (0.0035716432612389326 + u * (
        2.1895417376072146e-05 + u * 1.5231501393486724e-08)))
    q = 1.0 + u * (0.46777862310409546 + u * (0.026164615526795387 + u * (
        0.0003411366487853229 + u * 8.522881671524374e-07)))
    return x * p / q


# --- activations: value and derivative side by side --------------------------------------------

def identity(z, alpha):
    return z


def identity_grad(a, z, alpha):  # d identity = 1
    return 1.0


def relu(z, alpha):  # NaN stays NaN (as np.maximum's): "z if z > 0 else 0" made it 0
    return 0.0 if z <= 0 else z


def relu_grad(a, z, alpha):  # d relu = 1 where the output is positive
    return 1.0 if a > 0 else 0.0


def leaky_relu(z, alpha):
    return z if z > 0 else alpha * z


def leaky_relu_grad(a, z, alpha):  # d leaky = 1 or alpha; the output keeps z's sign
    return 1.0 if a > 0 else alpha


def sigmoid(z, alpha):
    return sigmoid_of(z)


def sigmoid_grad(a, z, alpha):  # d sigmoid = y (1 - y), from the output
    return a * (1.0 - a)


def tanh(z, alpha):
    return tanh_value(z)


def tanh_grad(a, z, alpha):  # d tanh = 1 - y**2, from the output
    return 1.0 - a * a


def gelu(z, alpha):  # tanh approximation (Hendrycks & Gimpel), as in GPT-2
    return 0.5 * z * (1.0 + tanh_of(_GELU_C * (z + _GELU_K * z * z * z)))


def gelu_grad(a, z, alpha):  # d gelu = (1 + t)/2 + z (1 - t**2) u'/2, t = tanh(u), from z
    t = tanh_of(_GELU_C * (z + _GELU_K * z * z * z))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_K * z * z)


def silu(z, alpha):
    return z * sigmoid_of(z)


def silu_grad(a, z, alpha):  # d silu = s (1 + z (1 - s)), s = sigmoid(z), from z
    s = sigmoid_of(z)
    return s * (1.0 + z * (1.0 - s))


# Elementwise activations: name -> (value, derivative). Softmax is row-wise: see softmax_* below.
ACTIVATIONS = {
    "identity": (identity, identity_grad),
    "relu": (relu, relu_grad),
    "leaky_relu": (leaky_relu, leaky_relu_grad),
    "sigmoid": (sigmoid, sigmoid_grad),
    "tanh": (tanh, tanh_grad),
    "gelu": (gelu, gelu_grad),
    "silu": (silu, silu_grad),
}


# Softmax over a row z: a_j = exp(z_j - m) / s with m = max_j z_j, s = sum_j exp(z_j - m).
def softmax_term(z, m):
    return exp(z - m)


def softmax_grad(a, g, ga):  # d softmax: dz_j = a_j (g_j - sum_k g_k a_k), ga = that sum
    return a * (g - ga)


# --- losses: value and gradient of one element -------------------------------------------------

def xent_label(z, lse, is_target):
    """Softmax-xent with a label: ``(-log p_j if target else 0, p_j - onehot_j)``."""
    return (lse - z if is_target else 0.0), exp(z - lse) - (1.0 if is_target else 0.0)


def xent_prob(z, lse, t, tsum):
    """Softmax-xent with probabilities: ``(t (lse - z), p tsum - t)``; rows need not sum to 1."""
    return t * (lse - z), exp(z - lse) * tsum - t


def xent_label_row(log_s, m, z_t):
    """A row's ``-log p_t = lse - z_t`` from ``lse = m + log_s`` (m the row max, s the sum of
    ``exp(z - m)``), summed as two terms >= 0 so nothing cancels; d/dz = ``p - onehot``."""
    return log_s + (m - z_t)


def xent_prob_row(log_s, tsum, tmz):
    """A row's ``sum_j t_j (lse - z_j) = tsum log_s + sum_j t_j (m - z_j)``, ``tmz`` that
    last sum; both terms >= 0. d/dz = ``p tsum - t``."""
    return tsum * log_s + tmz


def sigmoid_bce(z, t, delta):
    # l = max(z, 0) - z t + log(1 + exp(-|z|)); d l / d z = sigmoid(z) - t
    e = exp(-abs(z))
    s = 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
    return max(z, 0.0) - z * t + log1p(e), s - t


def mse(p, t, delta):
    r = p - t
    return r * r, 2.0 * r  # d r**2 = 2 r


def mae(p, t, delta):
    r = p - t
    sign = 1.0 if r > 0 else (-1.0 if r < 0 else 0.0)
    return abs(r), sign  # d |r| = sign(r), 0 at 0


def huber(p, t, delta):
    r = p - t
    a = abs(r)
    sign = 1.0 if r > 0 else (-1.0 if r < 0 else 0.0)
    if a <= delta:
        return 0.5 * r * r, r  # d r**2/2 = r
    return delta * (a - 0.5 * delta), delta * sign  # d delta |r| = delta sign(r)


def poisson(z, t, delta):
    # half Poisson deviance of the mean mu = exp(z) (log link), t >= 0:
    # l = t log(t / mu) - t + mu (0 at mu = t; t log t is 0 at t = 0); d l / d z = mu - t
    mu = exp(z)
    return mu - t + (t * (math.log(t) - z) if t > 0 else 0.0), mu - t



# --- optimizers: the update of one element -----------------------------------------------------
# Arguments and hyper-parameters as in reference.py; each returns the new (p, state...).

def sgd(p, g, lr, wd):
    return p - lr * (g + wd * p)


def momentum(p, g, buf, lr, mu, wd):
    d = g + wd * p
    buf = mu * buf + d
    return p - lr * buf, buf


def nesterov(p, g, buf, lr, mu, wd):
    d = g + wd * p
    buf = mu * buf + d
    return p - lr * (d + mu * buf), buf


def rmsprop(p, g, sq, mom, gavg, lr, rho, mu, eps, wd, centered):
    """Returns ``(p, sq, mom, gavg)``; ``mom`` is used when ``mu > 0``, ``gavg`` if centered."""
    d = g + wd * p
    sq = rho * sq + (1.0 - rho) * d * d
    if centered:
        gavg = rho * gavg + (1.0 - rho) * d
        denom = math.sqrt(sq - gavg * gavg) + eps
    else:
        denom = math.sqrt(sq) + eps
    if mu > 0:
        mom = mu * mom + d / denom
        return p - lr * mom, sq, mom, gavg
    return p - lr * d / denom, sq, mom, gavg


def adam(p, d, m, v, vmax, lr, beta1, beta2, eps, bc1, bc2, amsgrad):
    """Adam on the (already decayed) gradient ``d``; returns ``(p, m, v, vmax)``."""
    m = beta1 * m + (1.0 - beta1) * d
    v = beta2 * v + (1.0 - beta2) * d * d
    vhat = v
    if amsgrad:
        vmax = max(vmax, v)
        vhat = vmax
    return p - lr * (m / bc1) / (math.sqrt(vhat / bc2) + eps), m, v, vmax


def adam_l2(p, g, m, v, vmax, lr, beta1, beta2, eps, wd, bc1, bc2, amsgrad):
    return adam(p, g + wd * p, m, v, vmax, lr, beta1, beta2, eps, bc1, bc2, amsgrad)


def adamw(p, g, m, v, vmax, lr, beta1, beta2, eps, wd, bc1, bc2, amsgrad):
    # decoupled decay first, then Adam on the raw gradient
    return adam(p * (1.0 - lr * wd), g, m, v, vmax, lr, beta1, beta2, eps, bc1, bc2, amsgrad)


# --- deep networks: LayerNorm rows and counter-based dropout -----------------------------------

def layernorm_stats(shift, s1, s2, m, eps):
    """A row's ``(mean, 1 / sqrt(var + eps))`` from ``s1 = sum(x - shift)``,
    ``s2 = sum((x - shift)**2)`` over ``m`` elements (``m`` in the kernel's dtype); shifting by
    the row's ``x[0]`` keeps the variance from cancelling in float32 when the mean is large."""
    d = s1 / m
    var = max(s2 / m - d * d, 0.0)
    return shift + d, 1.0 / math.sqrt(var + eps)


def layernorm(x, mean, rstd, gamma, beta):  # y = gamma (x - mean) / sqrt(var + eps) + beta
    return (x - mean) * rstd * gamma + beta


def layernorm_grad(g, xhat, g_mean, gx_mean, rstd):
    # d LN: dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy gamma, xhat = (x - mean) rstd
    return rstd * (g - g_mean - xhat * gx_mean)


# Dropout masks come from a counter-based hash of (key, element): no generator state, so the
# same (seed, step, layer) gives the same mask on every device, thread order and resume, and
# backward recomputes it. uint64s holding 32-bit words: the same in Numba, CUDA and NumPy.
_U32 = np.uint64(0xFFFFFFFF)
_MIX1 = np.uint64(0x7FEB352D)
_MIX2 = np.uint64(0x846CA68B)
_SH15 = np.uint64(15)
_SH16 = np.uint64(16)
_U64 = (1 << 64) - 1


def mix32(x):
    """lowbias32 (C. Wellons' hash prospector): a bijection of 32-bit words in uint64s."""
    x = x ^ (x >> _SH16)
    x = (x * _MIX1) & _U32
    x = x ^ (x >> _SH15)
    x = (x * _MIX2) & _U32
    return x ^ (x >> _SH16)


def dropout_keep(e, k0, k1, threshold):
    """Whether element ``e`` (uint64 flat index) is kept: hash(e, key) >= threshold; ``k0``,
    ``k1``: the key's 32-bit words; ``threshold``: ``dropout_threshold(p)``."""
    return mix32(mix32((e & _U32) ^ k0) ^ k1) >= threshold


def dropout(a, keep, scale):  # inverted dropout: kept values times 1 / (1 - p), so E[out] = a
    return a * scale if keep else 0.0


def _splitmix64(z):
    z = (z + 0x9E3779B97F4A7C15) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


def dropout_key(seed, step, layer):
    """The 64-bit key of one layer's mask at one optimizer step: SplitMix64 chained over
    (seed, step, layer), Python ints."""
    return _splitmix64(_splitmix64(_splitmix64(int(seed) & _U64) ^ int(step)) ^ int(layer))


def dropout_threshold(p):
    """The hash threshold (Python int in [0, 2**32)) that drops a fraction ``p`` in [0, 1)."""
    return min(int(round(p * 4294967296.0)), 4294967295)


# --- compiling this module ---------------------------------------------------------------------

# Per dtype, functions replaced by a version for that precision, under the name callers use.
DTYPE_FUNCTIONS = {np.dtype(np.float32): {"exp": "exp_f32", "tanh_value": "tanh_rational_f32"}}


def typed_code(code: CodeType, dtype) -> CodeType:
    """``code`` with every float literal (nested code too) a ``dtype`` scalar."""
    ftype = np.dtype(dtype).type
    consts = tuple(
        ftype(c) if type(c) is float else typed_code(c, dtype) if isinstance(c, CodeType) else c
        for c in code.co_consts)
    return code.replace(co_consts=consts)


def typed_globals(ns: dict, dtype) -> dict:
    """A copy of the namespace ``ns`` with every float value a ``dtype`` scalar."""
    ftype = np.dtype(dtype).type
    return {k: ftype(v) if type(v) is float else v for k, v in ns.items()}


def specialise(fn: FunctionType, ns: dict, dtype, name: str | None = None) -> FunctionType:
    """A clone of ``fn`` computing in ``dtype``: float literals typed, globals from ``ns``
    (from ``typed_globals``, so float constants read as globals follow too)."""
    clone = FunctionType(typed_code(fn.__code__, dtype), ns, name or fn.__name__,
                         fn.__defaults__, fn.__closure__)
    clone.__qualname__ = fn.__qualname__
    return clone


def compiled(decorate, dtype=np.float64) -> SimpleNamespace:
    """Every function above for ``dtype`` through ``decorate`` (e.g. ``njit(inline="always")``),
    each calling the others' compiled copies (``DTYPE_FUNCTIONS`` swapped in)."""
    ns = typed_globals(globals(), dtype)
    for name, obj in globals().items():
        if isinstance(obj, FunctionType) and obj.__module__ == __name__ and obj not in _TOOLS:
            ns[name] = decorate(specialise(obj, ns, dtype))
    for name, impl in DTYPE_FUNCTIONS.get(np.dtype(dtype), {}).items():
        ns[name] = ns[impl]
    return SimpleNamespace(**ns)


_TOOLS = (typed_code, typed_globals, specialise, compiled)


SOURCE_TAG = hashlib.sha1(inspect.getsource(sys.modules[__name__]).encode()).hexdigest()[:12]
"""Hash of this file, in compiled kernels' cache names: Numba's disk cache only watches the
file a kernel is defined in."""
