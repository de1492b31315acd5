"""The CUDA kernels of activations and losses: bias + activation forward, its backward with
the bias gradient, softmax, softmax cross-entropy and the element-wise losses.

Same names and signatures as ``reference.py`` (read its docstrings for the contract).

- Elementwise ops are 2-D grid-stride loops over (rows, columns): no per-element integer
  division. The bias gradient is a column reduction: each block writes one float64 partial per
  column, and the last block of each column tile (an atomic ticket after a fence) adds them:
  one launch, no atomics on the data, deterministic. Softmax and softmax-xent give each row a
  row of threads, reduced in shared memory; a loss value is reduced like db into a slot of a
  preallocated ring (``launch.LOSS_RING``).
- Precision: every kernel computes in its dtype (float literals and scalar arguments typed so,
  ``scalar.specialise``). Only the loss totals and the partial sums stay float64, a few adds
  per row or block; ``tests/kernels/test_kernels_ptx.py`` checks that nothing else is.
"""

from __future__ import annotations

import math

import numpy as np
from devnet.kernels import checks, scalar, table
from devnet.kernels.cuda.launch import Call, config, kernel
from devnet.kernels.cuda.registry import SPECS, register
from devnet.kernels.table import NEEDS_PREACTIVATION, decl
from numba import cuda

from devnet.errors import DataError, lookup

_NEG_INF = -math.inf
_NAN = math.nan


# --- kernel templates: plain functions, cloned with their scalar functions bound as globals ---
# Globals bound per kernel: value / grad (an activation), loss (an element loss); to all,
# device.COMMON's (the block helpers, exp_, log_, softmax_term, softmax_grad, xent_*).

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
            A[i, j] = value(z, alpha)  # noqa: F821


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
            d = G[i, j] * grad(A[i, j], Z[i, j], alpha)  # noqa: F821
            dZ[i, j] = d
            acc += d
    col_partial(acc, j, m, part)  # noqa: F821
    col_finish(part, j, m, count, db)  # noqa: F821


def _col_partials(X, part, count, db):
    # db = column sums of X, as in _act_bwd (softmax's db after its row pass)
    n, m = X.shape
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    acc = 0.0
    if j < m:
        step = cuda.gridDim.y * cuda.blockDim.y
        for i in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, n, step):
            acc += X[i, j]
    col_partial(acc, j, m, part)  # noqa: F821
    col_finish(part, j, m, count, db)  # noqa: F821


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
        mx = row_reduce(mx, True)  # noqa: F821
        s = 0.0
        if i < n:
            for j in range(tx, k, bx):
                e = softmax_term(A[i, j], mx)  # noqa: F821
                A[i, j] = e
                s += e
        s = row_reduce(s, False)  # noqa: F821
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
        ga = row_reduce(ga, False)  # noqa: F821
        if i < n:
            for j in range(tx, k, bx):
                dZ[i, j] = softmax_grad(A[i, j], G[i, j], ga)  # noqa: F821


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
        mx = row_reduce(mx, True)  # noqa: F821
        s = 0.0
        if i < n:
            for j in range(tx, k, bx):
                s += exp_(L[i, j] - mx)  # noqa: F821
        s = row_reduce(s, False)  # noqa: F821
        if i < n:
            lse = mx + log_(s)  # noqa: F821
            c = scale * w[i] if has_w else scale
            t = T[i]
            # a label outside [0, k) is never an index: its row's loss and gradient are NaN,
            # as on the CPU (set per element, in the kernel's dtype, not on the float64 total)
            ok = t >= 0 and t < k
            row = 0.0
            for j in range(tx, k, bx):  # grad may be L: each element read before written
                v, d = xent_label(L[i, j], lse, j == t)  # noqa: F821
                if not ok:
                    v = _NAN
                    d = _NAN
                row += v
                grad[i, j] = c * d
            total += c * row
    block_sum(total, part, cuda.blockIdx.x)  # noqa: F821
    sum_finish(part, cuda.gridDim.x, count, out)  # noqa: F821


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
        mx = row_reduce(mx, True)  # noqa: F821
        tsum = row_reduce(ts, False)  # noqa: F821
        s = 0.0
        if i < n:
            for j in range(tx, k, bx):
                s += exp_(L[i, j] - mx)  # noqa: F821
        s = row_reduce(s, False)  # noqa: F821
        if i < n:
            lse = mx + log_(s)  # noqa: F821
            c = scale * w[i] if has_w else scale
            row = 0.0
            for j in range(tx, k, bx):
                v, d = xent_prob(L[i, j], lse, T[i, j], tsum)  # noqa: F821
                row += v
                grad[i, j] = c * d
            total += c * row
    block_sum(total, part, cuda.blockIdx.x)  # noqa: F821
    sum_finish(part, cuda.gridDim.x, count, out)  # noqa: F821


def _elem_loss(P, T, grad, w, has_w, scale, delta, part, count, out):
    # "cols" layout as _act_bwd; one partial per block, blocks numbered x-fastest
    n, k = P.shape
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    total = np.float64(0.0)
    if j < k:
        step = cuda.gridDim.y * cuda.blockDim.y
        for i in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, n, step):
            c = scale * w[i] if has_w else scale
            v, d = loss(P[i, j], T[i, j], delta)  # noqa: F821
            total += c * v
            grad[i, j] = c * d
    block_sum(total, part, cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x)  # noqa: F821
    sum_finish(part, cuda.gridDim.x * cuda.gridDim.y, count, out)  # noqa: F821


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
for _n, _row in table.LOSSES.items():  # the element losses of every table row
    if _row.scalar is not None:
        register(_n, _elem_loss, _ELEM_LOSS, {"loss": _row.scalar})

def _check_act(table_key, act):
    if table_key not in SPECS:
        lookup({**{a: 0 for a in scalar.ACTIVATIONS}, "softmax": 0}, act, "activation")


# --- the kernel table: activations ---------------------------------------------------------------

@checks.checked("bias_act_fwd", checks.ArrayLike, True)
def bias_act_fwd(act, A, b, Z=None, alpha=0.01):
    """In place ``A <- act(A + b)`` (``Z <- A + b`` first when given); see ``reference``."""
    name = f"bias_act_fwd_{act}"
    _check_act(name, act)
    n, m = A.shape
    c = Call(A)
    grid, block = config(c, "rows" if act == "softmax" else "cols", n, m)
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
    if Z is None:
        if act in NEEDS_PREACTIVATION:
            raise DataError(f"act_bwd({act!r}) needs the pre-activation Z")
        Z = A
    n, m = G.shape
    c = Call(G)
    dt = G.dtype
    grid, block = config(c, "cols", n, m)
    part = c.scratch(grid[1] * m)
    count = c.counters(grid[0])
    if act == "softmax":
        rgrid, rblock = config(c, "rows", n, m)
        kernel("softmax_bwd_rows", dt)(c, rgrid, rblock, G, A, dZ)
        kernel("col_partials", dt)(c, grid, block, dZ, part, count, db)
    elif act == "identity" and _same_buffer(dZ, G):
        # dZ = G already: only the bias gradient, no identity copy of G into itself
        kernel("col_partials", dt)(c, grid, block, G, part, count, db)
    else:
        kernel(name, dt)(c, grid, block, G, A, Z, dZ, part, count, db, dt.type(alpha))


# --- losses --------------------------------------------------------------------------------------

def softmax_xent(logits, target, grad, weight, scale):
    """Softmax cross-entropy into ``grad``; returns the loss as a 0-d device array (no sync);
    see ``reference.softmax_xent``."""
    labels, target, weight = checks.loss_args("softmax_xent", logits, target, grad, weight,
                                              checks.ArrayLike, True)
    n, k = logits.shape
    dt = logits.dtype
    c = Call(logits)
    if labels:
        name = f"softmax_xent_label_{'i32' if target.dtype == np.int32 else 'i64'}"
    else:
        name = "softmax_xent_prob"
    grid, block = config(c, "rows", n, k)
    out = c.scalar_out(dt)
    # without a weight (has_w False) a row of grad stands in for it
    kernel(name, dt)(c, grid, block, logits, target, grad, grad[0] if weight is None else weight,
                      weight is not None, dt.type(scale), c.scratch(grid[0] + 1),
                      c.counters(1), out)
    return out.reshape(())


def _elem_launch(name):
    def launch(pred, target, grad, weight, scale, param):
        n, k = pred.shape
        c = Call(pred)
        grid, block = config(c, "cols", n, k)
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
