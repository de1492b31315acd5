"""The CUDA kernels of the deep-network ops: LayerNorm rows, dropout, residual add.

Same names and contracts as ``reference.py``'s "deep networks" section.

- LayerNorm forward: softmax's "rows" layout, one pass for the shifted sums, then the row.
- LayerNorm backward: a row pass for dX (plus a residual block's skip gradient) and a "cols"
  pass for dgamma and dbeta (partials added by the last block, as db).
- Dropout: ``scalar.dropout_keep`` of each element's global flat index ``(row0 + i) m + j``,
  the CPU's and the reference's mask bit for bit; activation, dropout and residual add are one
  "cols" pass.
"""

# The kernel templates read names bound as globals when they are cloned (value, real, ...).
# ruff: noqa: F821
from __future__ import annotations

import numpy as np
from devnet.kernels import checks, scalar, table
from devnet.kernels.cuda.elementwise import bias_act_fwd
from devnet.kernels.cuda.launch import config, kernel, start
from devnet.kernels.cuda.registry import register
from devnet.kernels.table import decl
from numba import cuda

# --- kernel templates (globals bound per kernel: value / grad, DROP, RESID, the helpers) ------

def _layernorm_fwd(X, gamma, beta, Y, mean, rstd, eps):
    n, m = X.shape
    mm = real(m)
    tx = cuda.threadIdx.x
    bx = cuda.blockDim.x
    by = cuda.blockDim.y
    for r0 in range(cuda.blockIdx.x * by, n, cuda.gridDim.x * by):
        i = r0 + cuda.threadIdx.y
        s1 = 0.0
        s2 = 0.0
        shift = 0.0
        if i < n:
            shift = X[i, 0]
            for j in range(tx, m, bx):
                d = X[i, j] - shift
                s1 += d
                s2 += d * d
        s1 = row_reduce(s1, False)
        s2 = row_reduce(s2, False)
        if i < n:
            mu, r = layernorm_stats(shift, s1, s2, mm, eps)
            if tx == 0:
                mean[i] = mu
                rstd[i] = r
            for j in range(tx, m, bx):
                Y[i, j] = layernorm(X[i, j], mu, r, gamma[j], beta[j])


def _layernorm_bwd_rows(G, X, mean, rstd, gamma, dX, R, has_r):
    n, m = G.shape
    mm = real(m)
    tx = cuda.threadIdx.x
    bx = cuda.blockDim.x
    by = cuda.blockDim.y
    for r0 in range(cuda.blockIdx.x * by, n, cuda.gridDim.x * by):
        i = r0 + cuda.threadIdx.y
        sg = 0.0
        sgx = 0.0
        mu = 0.0
        r = 0.0
        if i < n:
            mu = mean[i]
            r = rstd[i]
            for j in range(tx, m, bx):
                g = G[i, j] * gamma[j]
                sg += g
                sgx += g * ((X[i, j] - mu) * r)
        sg = row_reduce(sg, False) / mm
        sgx = row_reduce(sgx, False) / mm
        if i < n:
            for j in range(tx, m, bx):  # dX may be G or R: each element read before written
                d = layernorm_grad(G[i, j] * gamma[j], (X[i, j] - mu) * r, sg, sgx, r)
                if has_r:
                    d += R[i, j]
                dX[i, j] = d


def _layernorm_bwd_cols(G, X, mean, rstd, part_g, part_b, count, dgamma, dbeta):
    # dgamma = column sums of G xhat, dbeta = column sums of G: partials as _act_bwd's, and
    # the last row block of each column tile adds them up (device.py's last_block ticket)
    n, m = G.shape
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    ag = 0.0
    ab = 0.0
    if j < m:
        step = cuda.gridDim.y * cuda.blockDim.y
        for i in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, n, step):
            dy = G[i, j]
            ag += dy * ((X[i, j] - mean[i]) * rstd[i])
            ab += dy
    col_partial(ag, j, m, part_g)
    cuda.syncthreads()  # thread row 0 has read the first sums before the second are written
    col_partial(ab, j, m, part_b)
    if last_block(count, cuda.blockIdx.x, cuda.gridDim.y):
        if cuda.threadIdx.y == 0 and j < m:
            sg = np.float64(0.0)  # the partials are float64
            sb = np.float64(0.0)
            for r in range(cuda.gridDim.y):
                sg += part_g[r * m + j]
                sb += part_b[r * m + j]
            dgamma[j] = sg
            dbeta[j] = sb


def _bias_act_drop_fwd(A, b, Z, keep_z, alpha, threshold, scale, k0, k1, R, out, row0):
    n, m = A.shape
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if j < m:
        bj = b[j]
        step = cuda.gridDim.y * cuda.blockDim.y
        for i in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, n, step):
            z = A[i, j] + bj
            if keep_z:
                Z[i, j] = z
            a = value(z, alpha)
            if DROP:
                # the global flat index: the masks of a shard's rows are the whole batch's
                a = dropout(a, dropout_keep(np.uint64((row0 + i) * m + j), k0, k1,
                                            threshold), scale)
            A[i, j] = a
            if RESID:
                out[i, j] = R[i, j] + a


def _act_drop_bwd(G, A, Z, dZ, part, count, db, alpha, threshold, scale, inv, k0, k1, row0):
    n, m = G.shape
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    acc = 0.0
    if j < m:
        step = cuda.gridDim.y * cuda.blockDim.y
        for i in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, n, step):
            keep = dropout_keep(np.uint64((row0 + i) * m + j), k0, k1, threshold)
            d = dropout(G[i, j] * grad(A[i, j] * inv, Z[i, j], alpha), keep, scale)
            dZ[i, j] = d
            acc += d
    col_partial(acc, j, m, part)
    col_finish(part, j, m, count, db)


def _dropout_fwd(A, threshold, scale, k0, k1, row0):
    n, m = A.shape
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if j < m:
        step = cuda.gridDim.y * cuda.blockDim.y
        for i in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, n, step):
            A[i, j] = dropout(A[i, j], dropout_keep(np.uint64((row0 + i) * m + j),
                                                    k0, k1, threshold), scale)


# --- the registry: each kernel's arguments (as elementwise.py's; the mask's words uint64) -------

_MASK = ("threshold u64", "scale", "k0 u64", "k1 u64")  # then row0: where the shard's rows start
register("layernorm_fwd", _layernorm_fwd, table.ENTRIES["layernorm_fwd"])
register("layernorm_bwd_rows", _layernorm_bwd_rows,
         decl("G[n,m]", "X[n,m]", "mean[n]", "rstd[n]", "gamma[m]", "dX[n,m] w", "R[n,m]",
              "has_r bool"))
register("layernorm_bwd_cols", _layernorm_bwd_cols,
         decl("G[n,m]", "X[n,m]", "mean[n]", "rstd[n]", "part_g[P] f64 rw", "part_b[P] f64 rw",
              "count[C] i32 rw", "dgamma[m] w", "dbeta[m] w"))
register("dropout_fwd", _dropout_fwd, decl("A[n,m] rw", *_MASK, "row0 i64"))
_DROP_FWD = decl("A[n,m] rw", "b[m]", "Z[n,m] w", "keep_z bool", "alpha", *_MASK, "R[n,m]",
                 "out[n,m] w", "row0 i64")
_DROP_BWD = decl("G[n,m]", "A[n,m]", "Z[n,m]", "dZ[n,m] w", "part[P] f64 rw", "count[C] i32 rw",
                 "db[m] w", "alpha", "threshold u64", "scale", "inv", "k0 u64", "k1 u64",
                 "row0 i64")
for _a in scalar.ACTIVATIONS:
    for _drop, _resid in ((True, False), (False, True), (True, True)):
        register(f"bias_act_drop_fwd_{_a}_{int(_drop)}{int(_resid)}", _bias_act_drop_fwd,
                 _DROP_FWD, {"value": _a, "DROP": _drop, "RESID": _resid})
    register(f"act_drop_bwd_{_a}", _act_drop_bwd, _DROP_BWD, {"grad": f"{_a}_grad"})


# --- the public kernels (signatures and contracts: reference.py) --------------------------------

@checks.checked("layernorm_fwd", checks.ArrayLike, True)
def layernorm_fwd(X, gamma, beta, Y, mean, rstd, eps=1e-5):
    """Per row ``Y <- gamma (X - mean) / sqrt(var + eps) + beta``; see ``reference``."""
    c, grid, block = start(X, "rows")
    kernel("layernorm_fwd", X.dtype)(c, grid, block, X, gamma, beta, Y, mean, rstd,
                                      X.dtype.type(eps))


@checks.checked("layernorm_bwd", checks.ArrayLike, True)
def layernorm_bwd(G, X, mean, rstd, gamma, dX, dgamma, dbeta, R=None):
    """``dX <- dL/dX (+ R)``, ``dgamma``, ``dbeta``; see ``reference.layernorm_bwd``."""
    dt = G.dtype
    # the column sums first: dX may be G, which the row pass overwrites
    c, grid, block = start(G, "cols")
    k = grid[1] * G.shape[1]
    part = c.scratch(2 * k)
    kernel("layernorm_bwd_cols", dt)(c, grid, block, G, X, mean, rstd, part[:k], part[k:2 * k],
                                      c.counters(grid[0]), dgamma, dbeta)
    rgrid, rblock = config(c, "rows", *G.shape)
    kernel("layernorm_bwd_rows", dt)(c, rgrid, rblock, G, X, mean, rstd, gamma, dX,
                                      G if R is None else R, R is not None)


@checks.checked("dropout_fwd", checks.ArrayLike, True)
def dropout_fwd(A, p, key, row0=0):
    """In place inverted dropout of A (n, m), rows from global row ``row0``; see
    ``reference.dropout_fwd``."""
    threshold, scale, _, k0, k1, row0 = checks.dropout_args("dropout_fwd", p, key, row0,
                                                            A.dtype.type)
    c, grid, block = start(A, "cols")
    kernel("dropout_fwd", A.dtype)(c, grid, block, A, threshold, scale, k0, k1, row0)


@checks.checked("bias_act_drop_fwd", checks.ArrayLike, True)
def bias_act_drop_fwd(act, A, b, Z, alpha, p, key, R=None, out=None, row0=0):
    """In place ``A <- dropout(act(A + b))``, then ``out <- R + A`` when R is given."""
    checks.elementwise_act(act)
    checks.residual_out("bias_act_drop_fwd", R, out)
    drop, resid = p > 0, R is not None
    threshold, scale, _, k0, k1, row0 = checks.dropout_args("bias_act_drop_fwd", p, key, row0,
                                                            A.dtype.type)
    if not (drop or resid):
        bias_act_fwd.unchecked(act, A, b, Z, alpha)  # its arguments are checked here
        return
    c, grid, block = start(A, "cols")
    kernel(f"bias_act_drop_fwd_{act}_{int(drop)}{int(resid)}", A.dtype)(
        c, grid, block, A, b, A if Z is None else Z, Z is not None, A.dtype.type(alpha),
        threshold, scale, k0, k1, R if resid else A, out if resid else A, row0)


@checks.checked("act_drop_bwd", checks.ArrayLike, True)
def act_drop_bwd(act, G, A, Z, dZ, db, alpha, p, key, row0=0):
    """``dZ <- G * mask / (1 - p) * act'``, ``db <- column sums``; see ``reference``."""
    checks.elementwise_act(act)
    Z = checks.preactivation("act_drop_bwd", act, Z, A)
    threshold, scale, inv, k0, k1, row0 = checks.dropout_args("act_drop_bwd", p, key, row0,
                                                              G.dtype.type)
    c, grid, block = start(G, "cols")
    part = c.scratch(grid[1] * G.shape[1])
    kernel(f"act_drop_bwd_{act}", G.dtype)(c, grid, block, G, A, Z, dZ, part,
                                            c.counters(grid[0]), db, G.dtype.type(alpha),
                                            threshold, scale, inv, k0, k1, row0)

