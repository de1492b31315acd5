"""The CPU kernels of the deep-network ops: LayerNorm rows, dropout, the residual add.

Same contracts as ``reference.py``'s "deep networks" section. Flags that change a loop's body
(keep Z, dropout, residual add) are compile-time globals of each specialisation: a branch per
element blocks vectorisation, and an unused output aliased to A must not even be named in the
loop (see ``elementwise._bias_act_fwd``).
"""

# The kernel templates read names bound as globals when they are cloned (value, real, ...).
# ruff: noqa: F821
from __future__ import annotations

import numpy as np
from devnet.kernels import checks
from devnet.kernels.cpu import build as _b
from devnet.kernels.cpu.build import COMMON, DTYPES, S, build, chunks, same
from numba import prange


def _layernorm_fwd(X, gamma, beta, Y, mean, rstd, eps):
    eps = real(eps)
    n, m = X.shape
    mm = real(m)  # an int64 m would promote float32 math to float64
    for i in prange(n):
        shift = X[i, 0]
        s1 = 0.0
        s2 = 0.0
        for j in range(m):  # one pass: shifted sum and sum of squares
            d = X[i, j] - shift
            s1 += d
            s2 += d * d
        mu, r = layernorm_stats(shift, s1, s2, mm, eps)
        mean[i] = mu
        rstd[i] = r
        for j in range(m):  # the row is in L1 now
            Y[i, j] = layernorm(X[i, j], mu, r, gamma[j], beta[j])


def _layernorm_bwd(G, X, mean, rstd, gamma, dX, dgamma, dbeta, R, nchunks):
    # per row: one pass for mean(g), mean(g xhat) and the dgamma / dbeta partials, then dX
    # from the row in L1; row chunks with their own partial column sums, as _act_bwd
    n, m = G.shape
    mm = real(m)
    pg = np.zeros((nchunks, m), dtype=dgamma.dtype)
    pb = np.zeros((nchunks, m), dtype=dgamma.dtype)
    step = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        ag = pg[c]
        ab = pb[c]
        for i in range(c * step, min(n, (c + 1) * step)):
            mu = mean[i]
            r = rstd[i]
            sg = 0.0
            sgx = 0.0
            for j in range(m):
                dy = G[i, j]
                xh = (X[i, j] - mu) * r
                g = dy * gamma[j]
                sg += g
                sgx += g * xh
                ag[j] += dy * xh
                ab[j] += dy
            sg = sg / mm
            sgx = sgx / mm
            for j in range(m):
                d = layernorm_grad(G[i, j] * gamma[j], (X[i, j] - mu) * r, sg, sgx, r)
                if RESID:
                    d += R[i, j]
                dX[i, j] = d
    col_sums(pg, dgamma)
    col_sums(pb, dbeta)


def _bias_act_drop_fwd(A, b, Z, alpha, threshold, scale, k0, k1, R, out, row0):
    alpha, scale = real(alpha), real(scale)
    n, m = A.shape
    for i in prange(n):
        base = np.uint64((row0 + i) * m)  # the global flat index: masks of a shard's rows
        for j in range(m):
            z = A[i, j] + b[j]
            if KEEP_Z:
                Z[i, j] = z
            a = value(z, alpha)
            if DROP:
                a = dropout(a, dropout_keep(base + np.uint64(j), k0, k1, threshold), scale)
            A[i, j] = a
            if RESID:
                out[i, j] = R[i, j] + a


def _act_drop_bwd(G, A, Z, dZ, db, alpha, threshold, scale, inv, k0, k1, nchunks, row0):
    alpha, scale, inv = real(alpha), real(scale), real(inv)
    # as _act_bwd; the activation's output is recovered as A (1 - p) where kept
    n, m = G.shape
    part = np.zeros((nchunks, m), dtype=db.dtype)
    step = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        acc = part[c]
        for i in range(c * step, min(n, (c + 1) * step)):
            base = np.uint64((row0 + i) * m)
            for j in range(m):
                keep = dropout_keep(base + np.uint64(j), k0, k1, threshold)
                d = dropout(G[i, j] * grad(A[i, j] * inv, Z[i, j], alpha), keep, scale)
                if INPLACE:
                    G[i, j] = d
                else:
                    dZ[i, j] = d
                acc[j] += d
    col_sums(part, db)


def _dropout_fwd(A, threshold, scale, k0, k1, row0):
    scale = real(scale)
    n, m = A.shape
    for i in prange(n):
        base = np.uint64((row0 + i) * m)
        for j in range(m):
            A[i, j] = dropout(A[i, j], dropout_keep(base + np.uint64(j), k0, k1, threshold), scale)


_DEEP: dict[tuple, dict] = {}


def _deep(template, tag, c, **funcs):
    """(serial, parallel) of ``template`` for dtype char ``c``, built on first use; ``funcs``:
    global -> a scalar function name (str) or a compile-time constant (bool)."""
    key = (tag, c)
    kernels = _DEEP.get(key)
    if kernels is None:
        bound = {g: getattr(S[c], v) if isinstance(v, str) else v for g, v in funcs.items()}
        kernels = _DEEP[key] = build(
            template, tag, DTYPES[c], **COMMON[c], layernorm_stats=S[c].layernorm_stats,
            layernorm=S[c].layernorm, layernorm_grad=S[c].layernorm_grad,
            dropout=S[c].dropout, dropout_keep=S[c].dropout_keep, **bound)
    return kernels


def _deep_pick(template, tag, a, **funcs):
    return _deep(template, tag, _b.char(a), **funcs)[a.size >= _b.PARALLEL_MIN]


@checks.checked("layernorm_fwd")
def layernorm_fwd(X, gamma, beta, Y, mean, rstd, eps=1e-5):
    """Per row ``Y <- gamma (X - mean) / sqrt(var + eps) + beta``; see ``reference``."""
    kernel = _deep_pick(_layernorm_fwd, "layernorm_fwd", X)
    kernel(X, gamma, beta, Y, mean, rstd, float(eps))


@checks.checked("layernorm_bwd")
def layernorm_bwd(G, X, mean, rstd, gamma, dX, dgamma, dbeta, R=None):
    """``dX <- dL/dX (+ R)``, ``dgamma``, ``dbeta``; see ``reference.layernorm_bwd``."""
    resid = R is not None
    kernel = _deep_pick(_layernorm_bwd, f"layernorm_bwd_{int(resid)}", G, RESID=resid)
    kernel(G, X, mean, rstd, gamma, dX, dgamma, dbeta, R if resid else G, chunks(G))


@checks.checked("dropout_fwd")
def dropout_fwd(A, p, key, row0=0):
    """In place inverted dropout of A (n, m), rows from global row ``row0``; see
    ``reference.dropout_fwd``."""
    threshold, scale, _, k0, k1, row0 = checks.dropout_args("dropout_fwd", p, key, row0)
    kernel = _deep_pick(_dropout_fwd, "dropout_fwd", A)
    kernel(A, threshold, scale, k0, k1, row0)


@checks.checked("bias_act_drop_fwd")
def bias_act_drop_fwd(act, A, b, Z, alpha, p, key, R=None, out=None, row0=0):
    """In place ``A <- dropout(act(A + b))``, then ``out <- R + A`` when R is given."""
    checks.elementwise_act(act)
    checks.residual_out("bias_act_drop_fwd", R, out)
    threshold, scale, _, k0, k1, row0 = checks.dropout_args("bias_act_drop_fwd", p, key, row0)
    keep_z, drop, resid = Z is not None, p > 0, R is not None
    kernel = _deep_pick(_bias_act_drop_fwd,
                        f"bias_act_drop_fwd_{act}_{int(keep_z)}{int(drop)}{int(resid)}", A,
                        value=act, KEEP_Z=keep_z, DROP=drop, RESID=resid)
    kernel(A, b, Z if keep_z else A, float(alpha), threshold, scale, k0, k1,
           R if resid else A, out if resid else A, row0)


@checks.checked("act_drop_bwd")
def act_drop_bwd(act, G, A, Z, dZ, db, alpha, p, key, row0=0):
    """``dZ <- G * mask / (1 - p) * act'``, ``db <- column sums``; see ``reference``."""
    checks.elementwise_act(act)
    Z = checks.preactivation("act_drop_bwd", act, Z, A)
    threshold, scale, inv, k0, k1, row0 = checks.dropout_args("act_drop_bwd", p, key, row0)
    inplace = same(dZ, G)
    kernel = _deep_pick(_act_drop_bwd, f"act_drop_bwd_{act}_{int(inplace)}", G,
                        grad=f"{act}_grad", INPLACE=inplace)
    kernel(G, A, Z, dZ, db, float(alpha), threshold, scale, inv, k0, k1, chunks(G), row0)
