"""The CPU kernels of activations and losses: bias + activation forward, its backward with the
bias gradient, softmax, softmax cross-entropy and the element-wise losses.

Same names and signatures as ``reference.py``. Each activation gets its own specialised kernel:
an in-loop switch on an activation code blocks vectorisation (bias+relu, 1000x1000 float32:
1.97 ms with the switch, 0.14 ms specialised).
"""

# The kernel templates read names bound as globals when they are cloned (value, real, ...).
# ruff: noqa: F821
from __future__ import annotations

import numpy as np
from devnet.kernels import checks, scalar, table
from devnet.kernels.cpu.build import chunks, k, pick, same
from numba import prange

from devnet.errors import lookup

# --- kernel templates, compiled by build.k with their scalar functions bound ------------------
# Globals bound per kernel: value / grad (an activation), loss (an element loss); to all,
# build.COMMON's and ``real``, the kernel's dtype. Scalar arguments come in as Python floats
# (the dispatcher's fast path: a NumPy float32 argument cost ~0.2 us each) and are cast to
# ``real`` first thing.

def _bias_act_fwd(A, b, Z, keep_z, alpha):
    alpha = real(alpha)
    # Two loops, not one with `if keep_z: Z[i, j] = z` inside: without Z the wrapper passes A
    # as Z, the vectoriser's runtime overlap check on Z vs A then fails and every element ran
    # in the scalar remainder loop (bias+sigmoid 1000x1000 float32: 5.4-11 ms vs 0.87 ms), and
    # LLVM only unswitches small bodies (relu) itself.
    n, m = A.shape
    if keep_z:
        for i in prange(n):
            for j in range(m):
                z = A[i, j] + b[j]
                Z[i, j] = z
                A[i, j] = value(z, alpha)
    else:
        for i in prange(n):
            for j in range(m):
                A[i, j] = value(A[i, j] + b[j], alpha)


def _act_bwd(G, A, Z, dZ, db, alpha, nchunks, inplace):
    alpha = real(alpha)
    # Rows split in nchunks, each with its own contiguous partial column sums (the inner loop
    # over columns vectorises), added at the end. ``inplace`` (dZ is G): a loop that names only
    # G, since the vectoriser's runtime overlap check of dZ against G would send every element
    # to the scalar loop.
    n, m = G.shape
    part = np.zeros((nchunks, m), dtype=db.dtype)
    step = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        acc = part[c]
        for i in range(c * step, min(n, (c + 1) * step)):
            if inplace:
                for j in range(m):
                    d = G[i, j] * grad(A[i, j], Z[i, j], alpha)
                    G[i, j] = d
                    acc[j] += d
            else:
                for j in range(m):
                    d = G[i, j] * grad(A[i, j], Z[i, j], alpha)
                    dZ[i, j] = d
                    acc[j] += d
    col_sums(part, db)


def _softmax_fwd(A, b, Z, keep_z, alpha):
    # per row: bias, max, exp and sum, scale; the last two passes run on a row in L1
    n, m = A.shape
    for i in prange(n):
        for j in range(m):
            A[i, j] = A[i, j] + b[j]
        if keep_z:
            for j in range(m):
                Z[i, j] = A[i, j]
        mx = row_max(A[i])
        s = 0.0
        for j in range(m):
            e = softmax_term(A[i, j], mx)
            A[i, j] = e
            s += e
        r = 1.0 / s
        for j in range(m):
            A[i, j] = A[i, j] * r


def _softmax_bwd(G, A, Z, dZ, db, alpha, nchunks, inplace):
    n, m = G.shape
    part = np.zeros((nchunks, m), dtype=db.dtype)
    step = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        acc = part[c]
        for i in range(c * step, min(n, (c + 1) * step)):
            ga = 0.0
            for j in range(m):
                ga += G[i, j] * A[i, j]
            if inplace:  # see _act_bwd
                for j in range(m):
                    d = softmax_grad(A[i, j], G[i, j], ga)
                    G[i, j] = d
                    acc[j] += d
            else:
                for j in range(m):
                    d = softmax_grad(A[i, j], G[i, j], ga)
                    dZ[i, j] = d
                    acc[j] += d
    col_sums(part, db)


def _xent_label(Z, T, grad, w, has_w, scale, inplace):
    scale = real(scale)
    # Per row: max; exp (once per element) into grad with its sum; grad *= c / s, then the
    # one-hot subtracted at the label. 1000x1000 float32: 4.2 ms with exp twice per element.
    # A label outside [0, k) gives that row a NaN loss and a NaN gradient and is never used
    # as an index: Numba does not check bounds, and a label of k wrote past grad, 1e9
    # segfaulted, -1 read the last class. One compare per row, not measurable.
    n, k = Z.shape
    total = np.float64(0.0)  # float64 whatever the dtype: the sum over every row
    for i in prange(n):
        t = T[i]
        if t < 0 or t >= k:
            for j in range(k):
                grad[i, j] = np.nan
            total += np.nan
        else:
            mx = row_max(Z[i])
            zt = Z[i, t]
            s = softmax_exp_row(Z[i], grad[i], mx, inplace)
            c = scale * w[i] if has_w else scale
            r = c / s
            for j in range(k):
                grad[i, j] = grad[i, j] * r
            grad[i, t] = grad[i, t] - c
            total += c * xent_label_row(np.log(s), mx, zt)
    return total


def _xent_prob(Z, T, grad, w, has_w, scale, inplace):
    scale = real(scale)
    # as _xent_label; the row sums of t and t (mx - z) are taken before grad overwrites Z
    n, k = Z.shape
    total = np.float64(0.0)  # see _xent_label
    for i in prange(n):
        mx = row_max(Z[i])
        tsum = 0.0
        tz = 0.0
        for j in range(k):
            t = T[i, j]
            tsum += t
            tz += t * (mx - Z[i, j])
        s = softmax_exp_row(Z[i], grad[i], mx, inplace)
        c = scale * w[i] if has_w else scale
        r = c * tsum / s
        for j in range(k):
            grad[i, j] = grad[i, j] * r - c * T[i, j]
        total += c * xent_prob_row(np.log(s), tsum, tz)
    return total


def _elem_loss_kernel(P, T, grad, w, has_w, scale, delta):
    scale, delta = real(scale), real(delta)
    n, k = P.shape
    total = np.float64(0.0)  # see _xent_label
    for i in prange(n):
        c = scale * w[i] if has_w else scale
        row = 0.0
        for j in range(k):
            v, d = loss(P[i, j], T[i, j], delta)
            row += v
            grad[i, j] = c * d
        total += c * row
    return total


_FWD = {a: k(_bias_act_fwd, f"bias_act_fwd_{a}", value=a) for a in scalar.ACTIVATIONS}
_FWD["softmax"] = k(_softmax_fwd, "bias_act_fwd_softmax")
_BWD = {a: k(_act_bwd, f"act_bwd_{a}", grad=f"{a}_grad") for a in scalar.ACTIVATIONS}
_BWD["softmax"] = k(_softmax_bwd, "act_bwd_softmax")
_XENT_LABEL = k(_xent_label, "softmax_xent_label")
_XENT_PROB = k(_xent_prob, "softmax_xent_prob")
_ELEM = {n: k(_elem_loss_kernel, n, loss=table.LOSSES[n].scalar) for n in table.ELEMENT_LOSSES}


# --- the kernel table ----------------------------------------------------------------------------

def _kernel(by_act, act, a):
    try:
        kernels = by_act[act]
    except KeyError:
        lookup(by_act, act, "activation")  # raises ConfigError listing the valid names
    return pick(kernels, a)


@checks.checked("bias_act_fwd")
def bias_act_fwd(act, A, b, Z=None, alpha=0.01):
    """In place ``A <- act(A + b)`` (``Z <- A + b`` first when given); see ``reference``."""
    kernel = _kernel(_FWD, act, A)
    kernel(A, b, A if Z is None else Z, Z is not None, float(alpha))


@checks.checked("act_bwd")
def act_bwd(act, G, A, Z, dZ, db, alpha=0.01):
    """``dZ <- G * act'(.)``, ``db <- column sums of dZ``, one pass; see ``reference``."""
    kernel = _kernel(_BWD, act, G)
    Z = checks.preactivation("act_bwd", act, Z, A)
    kernel(G, A, Z, dZ, db, float(alpha), chunks(G), same(dZ, G))


def softmax_xent(logits, target, grad, weight, scale):
    """Softmax cross-entropy into ``grad``; returns the loss as a float; see ``reference``."""
    labels, target, weight = checks.loss_args("softmax_xent", logits, target, grad, weight)
    kernel = pick(_XENT_LABEL if labels else _XENT_PROB, logits)
    w = logits[:, 0] if weight is None else weight
    return kernel(logits, target, grad, w, weight is not None, float(scale), same(grad, logits))


def _elem_launch(name):
    kernels = _ELEM[name]

    def launch(pred, target, grad, weight, scale, param):
        w = pred[:, 0] if weight is None else weight
        return pick(kernels, pred)(pred, target, grad, w, weight is not None, scale, param)
    return launch


for _name in _ELEM:  # sigmoid_bce, mse, mae, huber, poisson, ...
    globals()[_name] = checks.make_loss(_name, _elem_launch(_name))
