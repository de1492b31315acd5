"""The CUDA kernels of activations and losses: bias + activation forward, its backward with
the bias gradient, softmax, softmax cross-entropy and the element-wise losses.

Same names and signatures as ``reference.py``.

- Elementwise ops are 2-D grid-stride loops over (rows, columns): no per-element integer
  division. The bias gradient is a column reduction: each block writes one float64 partial per
  column and the last block of each column tile (an atomic ticket after a fence) adds them: one
  launch, deterministic. Softmax and softmax-xent give each row a row of threads, reduced in
  shared memory; a loss value is reduced like db into a slot of ``launch.LOSS_RING``.
- Every kernel computes in its dtype; only loss totals and partial sums are float64
  (``tests/kernels/test_kernels_ptx.py`` checks that nothing else is).
"""

# The kernel templates read names bound as globals when they are cloned (value, real, ...).
# ruff: noqa: F821
from __future__ import annotations

import math

import numpy as np
from devnet.kernels import checks, scalar, table
from devnet.kernels.cuda.launch import config, kernel, start
from devnet.kernels.cuda.registry import SPECS, register
from devnet.kernels.table import ACTIVATION_NAMES, decl
from numba import cuda

from devnet.errors import lookup

_NEG_INF = -math.inf
_NAN = math.nan


# --- kernel templates, cloned with their scalar functions bound as globals --------------------
# Bound per kernel: value / grad (an activation), loss (an element loss); to all, device.COMMON.

def _bias_act_fwd(A, b, Z, keep_z, alpha):
    # the "cols" layout of _act_bwd: no per-element integer division to recover (i, j)
    n, m = A.shape
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if j < m:
        bj = b[j]
        step = cuda.gridDim.y * cuda.blockDim.y
        for i in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, n, step):
            z = A[i, j] + bj
            if keep_z:
                Z[i, j] = z
            A[i, j] = value(z, alpha)


def _act_bwd(G, A, Z, dZ, part, count, db, alpha):
    # 2-D blocks: threadIdx.x a column of a tile of blockDim.x columns (coalesced rows),
    # threadIdx.y strides over rows; one partial column sum per (row block, column), summed
    # into db by the tile's last row block
    n, m = G.shape
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    acc = 0.0
    if j < m:
        step = cuda.gridDim.y * cuda.blockDim.y
        for i in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, n, step):
            d = G[i, j] * grad(A[i, j], Z[i, j], alpha)
            dZ[i, j] = d
            acc += d
    col_partial(acc, j, m, part)
    col_finish(part, j, m, count, db)


def _col_partials(X, part, count, db):
    # db = column sums of X, as in _act_bwd (softmax's db after its row pass)
    n, m = X.shape
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    acc = 0.0
    if j < m:
        step = cuda.gridDim.y * cuda.blockDim.y
        for i in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, n, step):
            acc += X[i, j]
    col_partial(acc, j, m, part)
    col_finish(part, j, m, count, db)


# Row kernels: block (tx, ty) = (a power of two >= the row length or NT, NT // that); thread row
# ty of block b handles rows b * ty_count + ty, grid-stride; the loop bounds are the same for all
# threads of a block, so every thread reaches every syncthreads.

def _softmax_fwd(A, b, Z, keep_z, alpha):
    n, k = A.shape
    tx = cuda.threadIdx.x
    bx = cuda.blockDim.x
    by = cuda.blockDim.y
    for r0 in range(cuda.blockIdx.x * by, n, cuda.gridDim.x * by):
        i = r0 + cuda.threadIdx.y
        mx = _NEG_INF
        if i < n:
            for j in range(tx, k, bx):
                z = A[i, j] + b[j]
                if keep_z:
                    Z[i, j] = z
                A[i, j] = z
                mx = max(mx, z)
        mx = row_reduce(mx, True)
        s = 0.0
        if i < n:
            for j in range(tx, k, bx):
                e = softmax_term(A[i, j], mx)
                A[i, j] = e
                s += e
        s = row_reduce(s, False)
        if i < n:
            r = 1.0 / s
            for j in range(tx, k, bx):
                A[i, j] = A[i, j] * r


def _softmax_bwd_rows(G, A, dZ):
    n, k = G.shape
    tx = cuda.threadIdx.x
    bx = cuda.blockDim.x
    by = cuda.blockDim.y
    for r0 in range(cuda.blockIdx.x * by, n, cuda.gridDim.x * by):
        i = r0 + cuda.threadIdx.y
        ga = 0.0
        if i < n:
            for j in range(tx, k, bx):
                ga += G[i, j] * A[i, j]
        ga = row_reduce(ga, False)
        if i < n:
            for j in range(tx, k, bx):
                dZ[i, j] = softmax_grad(A[i, j], G[i, j], ga)


def _xent_label(L, T, grad, w, has_w, scale, part, count, out):
    n, k = L.shape
    tx = cuda.threadIdx.x
    bx = cuda.blockDim.x
    by = cuda.blockDim.y
    total = np.float64(0.0)  # loss totals in float64 whatever the dtype
    for r0 in range(cuda.blockIdx.x * by, n, cuda.gridDim.x * by):
        i = r0 + cuda.threadIdx.y
        mx = _NEG_INF
        if i < n:
            for j in range(tx, k, bx):
                mx = max(mx, L[i, j])
        mx = row_reduce(mx, True)
        s = 0.0
        if i < n:
            for j in range(tx, k, bx):
                s += exp_(L[i, j] - mx)
        s = row_reduce(s, False)
        if i < n:
            lse = mx + log_(s)
            c = scale * w[i] if has_w else scale
            t = T[i]
            # a label outside [0, k) is never an index: its row's loss and gradient are NaN,
            # as on the CPU (set per element, in the kernel's dtype, not on the float64 total)
            ok = t >= 0 and t < k
            row = 0.0
            for j in range(tx, k, bx):  # grad may be L: each element read before written
                v, d = xent_label(L[i, j], lse, j == t)
                if not ok:
                    v = _NAN
                    d = _NAN
                row += v
                grad[i, j] = c * d
            total += c * row
    block_sum(total, part, cuda.blockIdx.x)
    sum_finish(part, cuda.gridDim.x, count, out)


def _xent_prob(L, T, grad, w, has_w, scale, part, count, out):
    n, k = L.shape
    tx = cuda.threadIdx.x
    bx = cuda.blockDim.x
    by = cuda.blockDim.y
    total = np.float64(0.0)  # loss totals in float64 whatever the dtype
    for r0 in range(cuda.blockIdx.x * by, n, cuda.gridDim.x * by):
        i = r0 + cuda.threadIdx.y
        mx = _NEG_INF
        ts = 0.0
        if i < n:
            for j in range(tx, k, bx):
                mx = max(mx, L[i, j])
                ts += T[i, j]
        mx = row_reduce(mx, True)
        tsum = row_reduce(ts, False)
        s = 0.0
        if i < n:
            for j in range(tx, k, bx):
                s += exp_(L[i, j] - mx)
        s = row_reduce(s, False)
        if i < n:
            lse = mx + log_(s)
            c = scale * w[i] if has_w else scale
            row = 0.0
            for j in range(tx, k, bx):
                v, d = xent_prob(L[i, j], lse, T[i, j], tsum)
                row += v
                grad[i, j] = c * d
            total += c * row
    block_sum(total, part, cuda.blockIdx.x)
    sum_finish(part, cuda.gridDim.x, count, out)


def _elem_loss(P, T, grad, w, has_w, scale, delta, part, count, out):
    # "cols" layout as _act_bwd; one partial per block, blocks numbered x-fastest
    n, k = P.shape
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    total = np.float64(0.0)
    if j < k:
        step = cuda.gridDim.y * cuda.blockDim.y
        for i in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, n, step):
            c = scale * w[i] if has_w else scale
            v, d = loss(P[i, j], T[i, j], delta)
            total += c * v
            grad[i, j] = c * d
    block_sum(total, part, cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x)
    sum_finish(part, cuda.gridDim.x * cuda.gridDim.y, count, out)


# --- the registry: each kernel's arguments ------------------------------------------------------
# scalars (alpha, scale, ...) in the arrays' type: a float64 would promote; part: float64
# partial sums; count: the int32 ticket counters of the last-block sums

_FWD = decl("A[n,m] rw", "b[m]", "Z[n,m] w", "keep_z bool", "alpha")
_BWD = decl("G[n,m]", "A[n,m]", "Z[n,m]", "dZ[n,m] w", "part[P] f64 rw", "count[C] i32 rw",
            "db[m] w", "alpha")
_TOTAL = ("part[P] f64 rw", "count[C] i32 rw", "out[1] w")  # a loss value's reduction


def _xent(target):
    return decl("L[n,k]", target, "grad[n,k] w", "w[n]", "has_w bool", "scale", *_TOTAL)


for _a in scalar.ACTIVATIONS:
    register(f"bias_act_fwd_{_a}", _bias_act_fwd, _FWD, {"value": _a})
    register(f"act_bwd_{_a}", _act_bwd, _BWD, {"grad": f"{_a}_grad"})
register("bias_act_fwd_softmax", _softmax_fwd, _FWD)
register("softmax_bwd_rows", _softmax_bwd_rows, decl("G[n,k]", "A[n,k]", "dZ[n,k] w"))
register("col_partials", _col_partials,
         decl("X[n,m]", "part[P] f64 rw", "count[C] i32 rw", "db[m] w"))
register("softmax_xent_label_i32", _xent_label, _xent("T[n] i32"))
register("softmax_xent_label_i64", _xent_label, _xent("T[n] i64"))
register("softmax_xent_prob", _xent_prob, _xent("T[n,k]"))
_ELEM_LOSS = decl("P[n,k]", "T[n,k]", "grad[n,k] w", "w[n]", "has_w bool", "scale", "delta",
                  *_TOTAL)
for _n in table.ELEMENT_LOSSES:
    register(_n, _elem_loss, _ELEM_LOSS, {"loss": table.LOSSES[_n].scalar})


def _check_act(table_key, act):
    if table_key not in SPECS:
        lookup(dict.fromkeys(ACTIVATION_NAMES), act, "activation")


# --- the kernel table ----------------------------------------------------------------------------

@checks.checked("bias_act_fwd", checks.ArrayLike, True)
def bias_act_fwd(act, A, b, Z=None, alpha=0.01):
    """In place ``A <- act(A + b)`` (``Z <- A + b`` first when given); see ``reference``."""
    name = f"bias_act_fwd_{act}"
    _check_act(name, act)
    c, grid, block = start(A, "rows" if act == "softmax" else "cols")
    kernel(name, A.dtype)(c, grid, block, A, b, A if Z is None else Z, Z is not None,
                           A.dtype.type(alpha))


def _same_buffer(a, b):
    """True when ``a`` and ``b`` view the same elements (same start, shape and strides)."""
    if a is b:
        return True
    if a.shape != b.shape or a.strides != b.strides or type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    return a.data.ptr == b.data.ptr


@checks.checked("act_bwd", checks.ArrayLike, True)
def act_bwd(act, G, A, Z, dZ, db, alpha=0.01):
    """``dZ <- G * act'(.)``, ``db <- column sums of dZ``: one launch (softmax: two); see
    ``reference.act_bwd``."""
    name = f"act_bwd_{act}"
    if act != "softmax":
        _check_act(name, act)
    Z = checks.preactivation("act_bwd", act, Z, A)
    dt = G.dtype
    c, grid, block = start(G, "cols")
    part = c.scratch(grid[1] * G.shape[1])
    count = c.counters(grid[0])
    if act == "softmax":
        rgrid, rblock = config(c, "rows", *G.shape)
        kernel("softmax_bwd_rows", dt)(c, rgrid, rblock, G, A, dZ)
        kernel("col_partials", dt)(c, grid, block, dZ, part, count, db)
    elif act == "identity" and _same_buffer(dZ, G):
        # dZ = G already: only the bias gradient, no identity copy of G into itself
        kernel("col_partials", dt)(c, grid, block, G, part, count, db)
    else:
        kernel(name, dt)(c, grid, block, G, A, Z, dZ, part, count, db, dt.type(alpha))


def softmax_xent(logits, target, grad, weight, scale):
    """Softmax cross-entropy into ``grad``; returns the loss as a 0-d device array (no sync);
    see ``reference.softmax_xent``."""
    labels, target, weight = checks.loss_args("softmax_xent", logits, target, grad, weight,
                                              checks.ArrayLike, True)
    dt = logits.dtype
    c, grid, block = start(logits, "rows")
    name = (f"softmax_xent_label_{'i32' if target.dtype == np.int32 else 'i64'}" if labels
            else "softmax_xent_prob")
    out = c.scalar_out(dt)
    # without a weight (has_w False) a row of grad stands in for it
    kernel(name, dt)(c, grid, block, logits, target, grad, grad[0] if weight is None else weight,
                      weight is not None, dt.type(scale), c.scratch(grid[0] + 1),
                      c.counters(1), out)
    return out.reshape(())


def _elem_launch(name):
    def launch(pred, target, grad, weight, scale, param):
        c, grid, block = start(pred, "cols")
        out = c.scalar_out(pred.dtype)
        real = pred.dtype.type
        kernel(name, pred.dtype)(c, grid, block, pred, target, grad,
                                  grad[0] if weight is None else weight, weight is not None,
                                  real(scale), real(param), c.scratch(grid[0] * grid[1] + 1),
                                  c.counters(1), out)
        return out.reshape(())
    return launch


for _name in table.ELEMENT_LOSSES:  # sigmoid_bce, mse, mae, huber, poisson, ...
    globals()[_name] = checks.make_loss(_name, _elem_launch(_name), checks.ArrayLike, True)
