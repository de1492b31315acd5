"""Numba-CUDA kernels built from ``scalar.py``: the CUDA backend's kernel table.

Over 400 lines: templates, signatures and the checked launch path of every CUDA kernel.

Same names and signatures as ``reference.py`` (read its docstrings for the contract); arrays are
CuPy arrays (or NumPy arrays under ``NUMBA_ENABLE_CUDASIM=1``), float32 or float64, C-contiguous.

How the kernels are built and launched:

- ``scalar.py``'s functions become ``cuda.jit(device=True, inline="always")`` device functions
  (``scalar.compiled``). ``inline="always"`` inlines them at Numba-IR level: besides saving the
  calls, that is what lets ``compile_ptx`` run without a GPU (a non-inlined device function asks
  the driver for the current device's compute capability when it is compiled).
- Each kernel is a plain-Python template below, cloned per scalar function with those bound as
  globals (as ``cpu.py`` does): one specialised kernel per activation, loss and optimizer. Each is
  compiled on first use for exactly one signature per dtype (``cuda.jit(sig)``), and then launched
  without the dispatcher's per-call type inference (see the launch bullet below).
- Elementwise ops are grid-stride loops (2-D over (rows, columns) for matrices, so no
  per-element integer division); the bias gradient is a column reduction (each block sums a
  tile of rows per column in shared memory and writes one float64 partial per column; the
  last block of each column tile, found with an atomic ticket after a fence, adds the
  partials: one launch, no atomics on the data, deterministic); softmax and softmax-xent give
  each row a row of threads of a 2-D block, reduced in shared memory; a loss value is reduced
  the same way (per-block partials, the last block sums them) into a slot of a preallocated
  ring (``LOSS_RING``): no allocation per step.
- Launches go on the current stream of the current device: the backend's own stream and
  device (``CUDABackend.scope()``, entered by every kernel-table entry). Each launch checks its
  arrays' dtype, rank, C-contiguity and device against the signature, marshals the kernel
  parameters itself (exactly numba-cuda's ``_prepare_args`` layout, built from CuPy's
  attributes: no Numba device-array view, no ``__cuda_array_interface__`` dict) and calls
  cuda.core's ``launch`` with a cached config, a cached cuda.core ``Stream`` per CuPy stream
  and the kernel loaded once per device. That direct launch runs only on the numba-cuda
  versions it was checked on (``DIRECT_LAUNCH_VERSIONS``), and each kernel's first launch
  compares its parameters with numba-cuda's own; elsewhere, or on a difference (a warning),
  numba-cuda's launch runs. Under the simulator the kernels get the arrays' host buffers
  without a copy.

``scalar.exp`` / ``scalar.exp_f32`` / ``scalar.log1p`` are CPU-vectorisation versions (a bit-cast
``2**k`` that does not compile for CUDA without a driver); the GPU gets ``math.exp`` /
``math.log1p`` (libdevice) in their place through ``scalar.compiled``'s globals, so every caller
of ``exp`` uses them.

Precision: every kernel is compiled per dtype from clones with their float literals typed as
that dtype (``scalar.specialise``), and takes its scalar arguments in that dtype, so a float32
kernel computes in float32 (``math.exp`` of a float32 is libdevice's ``__nv_expf``; one float64
literal would turn the whole chain into f64 divides and ``__nv_exp``). What stays float64 on
purpose: the loss totals and the scratch partial sums (column sums of db, loss values), a few
adds per row or block; ``tests/test_kernels_ptx.py`` checks that nothing else is.
"""

from __future__ import annotations

import math
import os

import numpy as np
from devnet.kernels import checks, norms, scalar, table
from devnet.kernels import hyper as _hyper
from devnet.kernels.table import KERNEL_NAMES, NEEDS_PREACTIVATION  # noqa: F401
from numba import cuda, types

from devnet.errors import DataError, lookup

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# Threads per block. 256 on a GPU (8 warps: enough to hide latency, small enough for many
# resident blocks per SM); 32 under the simulator, which runs every thread as a Python thread.
NT = 32 if SIMULATOR else 256
# Blocks per SM a grid-stride kernel is given at most (H100: 132 SMs x 8 = 1056 blocks).
BLOCKS_PER_SM = 8
# Under the simulator a grid of at most this many blocks, so grid-stride loops wrap around.
SIM_MAX_BLOCKS = 2
_NEG_INF = -math.inf
_NAN = math.nan


# --- scalar functions, compiled as inlined device functions -------------------------------------

def _gpu_exp(x):
    return math.exp(x)  # libdevice __nv_expf for a float32 x, __nv_exp for a float64


def _gpu_log1p(t):
    return math.log1p(t)


_GPU_MATH = {"exp": _gpu_exp, "exp_f32": _gpu_exp, "log1p": _gpu_log1p}


def _device(fn):
    """``scalar.compiled``'s decorator: libdevice exp/log1p, every function inlined."""
    return cuda.jit(device=True, inline="always")(_GPU_MATH.get(fn.__name__, fn))


_FLOAT_TYPES = {np.dtype(np.float32): types.float32, np.dtype(np.float64): types.float64}
# The scalar functions per dtype (their float literals in that dtype).
S = {dt: scalar.compiled(_device, dt) for dt in _FLOAT_TYPES}
# The reductions' scalar math (clip scale, L2 term, the hyper steps' gradient scale).
N = {dt: norms.compiled(_device, dt) for dt in _FLOAT_TYPES}


# --- block-level helpers (inlined into the kernels) ----------------------------------------------

def _row_reduce(x, is_max):
    """Max or sum of ``x`` over threadIdx.x, per threadIdx.y; every thread gets the result.

    blockDim.x must be a power of two; every thread of the block must call it (syncthreads).
    In the kernel's dtype ``real``: a row's max and exp sum feed each element's exp.
    """
    sh = cuda.shared.array(NT, real)  # noqa: F821
    tx = cuda.threadIdx.x
    base = cuda.threadIdx.y * cuda.blockDim.x
    cuda.syncthreads()  # earlier readers of sh are done
    sh[base + tx] = x
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tx < s:
            if is_max:
                sh[base + tx] = max(sh[base + tx], sh[base + tx + s])
            else:
                sh[base + tx] += sh[base + tx + s]
        cuda.syncthreads()
        s //= 2
    return sh[base]


def _block_sum(x, part, slot):
    """Sum ``x`` over the whole block (power-of-two size) into ``part[slot]`` (thread 0).

    float64 in every kernel: it sums loss totals and float64 partials.
    """
    sh = cuda.shared.array(NT, np.float64)
    nt = cuda.blockDim.x * cuda.blockDim.y
    t = cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    sh[t] = x
    cuda.syncthreads()
    s = nt // 2
    while s > 0:
        if t < s:
            sh[t] += sh[t + s]
        cuda.syncthreads()
        s //= 2
    if t == 0:
        part[slot] = sh[0]


def _col_partial(acc, j, m, part):
    """Sum ``acc`` over threadIdx.y (one column j per threadIdx.x) into ``part[blockIdx.y, j]``.

    ``part`` is the flat (gridDim.y, m) float64 scratch; blockDim.y a power of two. Sums in
    the kernel's dtype ``real`` (a few rows per column), stored as float64.
    """
    sh = cuda.shared.array(NT, real)  # noqa: F821
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    bx = cuda.blockDim.x
    sh[ty * bx + tx] = acc
    cuda.syncthreads()
    s = cuda.blockDim.y // 2
    while s > 0:
        if ty < s:
            sh[ty * bx + tx] += sh[(ty + s) * bx + tx]
        cuda.syncthreads()
        s //= 2
    if ty == 0 and j < m:
        part[cuda.blockIdx.y * m + j] = sh[tx]


def _last_block(count, slot, total):
    """True, in every thread, in the block that is the last of ``total`` to finish here.

    ``count[slot]`` is an int32 ticket counter, 0 between launches (the last block resets
    it). Each thread fences its earlier global writes first, so the last block reads every
    other block's partials: one launch does what a second "sum the partials" launch did.
    """
    flag = cuda.shared.array(1, np.int32)
    cuda.threadfence()
    cuda.syncthreads()
    if cuda.threadIdx.x == 0 and cuda.threadIdx.y == 0:
        last = cuda.atomic.add(count, slot, 1) == total - 1
        flag[0] = 1 if last else 0
        if last:
            count[slot] = 0
    cuda.syncthreads()
    return flag[0] == 1


def _col_finish(part, j, m, count, db):
    """After ``col_partial``: the last row block of this column tile writes ``db[j]``."""
    if last_block(count, cuda.blockIdx.x, cuda.gridDim.y):  # noqa: F821
        if cuda.threadIdx.y == 0 and j < m:
            s = np.float64(0.0)  # the partials are float64
            for r in range(cuda.gridDim.y):
                s += part[r * m + j]
            db[j] = s


def _sum_finish(part, nparts, count, out):
    """After each block's ``block_sum`` into ``part[:nparts]``: the last block writes their
    sum to ``out[0]`` (``part[nparts]`` is its scratch slot)."""
    if last_block(count, 0, nparts):  # noqa: F821
        s = np.float64(0.0)
        nt = cuda.blockDim.x * cuda.blockDim.y
        t = cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        for r in range(t, nparts, nt):
            s += part[r]
        block_sum(s, part, nparts)  # noqa: F821
        if t == 0:
            out[0] = part[nparts]


def _block_total(x, n):
    """The float64 sum of ``x[:n]`` by the whole (1-D, power-of-two) block; every thread gets
    it. Each block computes the same sum in the same order: no second launch, no atomics."""
    sh = cuda.shared.array(NT, np.float64)
    t = cuda.threadIdx.x
    s = np.float64(0.0)
    for i in range(t, n, cuda.blockDim.x):
        s += x[i]
    sh[t] = s
    cuda.syncthreads()
    k = cuda.blockDim.x // 2
    while k > 0:
        if t < k:
            sh[t] += sh[t + k]
        cuda.syncthreads()
        k //= 2
    total = sh[0]
    cuda.syncthreads()  # every thread has read it before sh is written again
    return total


def _sum_last(part, nparts, count):
    """After each block's ``block_sum`` into ``part[:nparts]``: True in (thread 0 of) the
    last block to finish, which finds their sum in ``part[nparts]``; False elsewhere."""
    if last_block(count, 0, nparts):  # noqa: F821
        s = np.float64(0.0)
        t = cuda.threadIdx.x
        for r in range(t, nparts, cuda.blockDim.x):
            s += part[r]
        block_sum(s, part, nparts)  # noqa: F821
        return t == 0
    return False


def _helpers(dt):
    """The block helpers for kernels of dtype ``dt``, as inlined device functions."""
    ns = scalar.typed_globals({**globals(), "real": dt.type}, dt)
    helpers = {}
    for name, fn in (("row_reduce", _row_reduce), ("block_sum", _block_sum),
                     ("col_partial", _col_partial), ("last_block", _last_block),
                     ("col_finish", _col_finish), ("sum_finish", _sum_finish),
                     ("block_total", _block_total), ("sum_last", _sum_last)):
        # later helpers call earlier ones: each sees those compiled before it
        helpers[name] = cuda.jit(device=True, inline="always")(
            scalar.specialise(fn, {**ns, **helpers}, dt))
    return helpers


# --- kernel templates: plain functions, cloned with their scalar functions bound as globals ---
# Globals bound per kernel: value / grad (an activation), loss (an element loss), update (an
# optimizer); the helpers above, exp_, log_, softmax_term, softmax_grad, xent_* to all.

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
            # a label outside [0, k) is never used as an index: its row's loss and gradient
            # are NaN (as on the CPU), so the loss shows it
            # (selected in the kernel's dtype, per element: a select on the float64 total
            # would be float64 math in a float32 kernel)
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


# The steps read g through ``grad_in(g[i], gs)``: ``norms.unscaled`` (g itself) in the
# by-value kernels, whose PTX stays as it was (gs, last, is passed 1 and unused), and
# ``norms.scaled`` (g * gs, the clip's scale) in the hyper kernels' inlined copy (``step``).

def _sgd(p, g, lr, wd, gs):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i] = update(p[i], grad_in(g[i], gs), lr, wd)  # noqa: F821


def _heavy_ball(p, g, buf, lr, mu, wd, gs):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        pi, bi = update(p[i], grad_in(g[i], gs), buf[i], lr, mu, wd)  # noqa: F821
        p[i] = pi
        buf[i] = bi


def _rmsprop(p, g, sq, mom, gavg, lr, rho, mu, eps, wd, centered, gs):
    use_mom = mu > 0
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        pi, s, mo, ga = update(  # noqa: F821
            p[i], grad_in(g[i], gs), sq[i], mom[i] if use_mom else 0.0,  # noqa: F821
            gavg[i] if centered else 0.0, lr, rho, mu, eps, wd, centered)
        p[i] = pi
        sq[i] = s
        if use_mom:
            mom[i] = mo
        if centered:
            gavg[i] = ga


def _adam(p, g, m, v, vmax, lr, beta1, beta2, eps, wd, bc1, bc2, amsgrad, gs):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        pi, mi, vi, vm = update(  # noqa: F821
            p[i], grad_in(g[i], gs), m[i], v[i], vmax[i] if amsgrad else 0.0,  # noqa: F821
            lr, beta1, beta2, eps, wd, bc1, bc2, amsgrad)
        p[i] = pi
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vmax[i] = vm


# The same steps with their scalars read from ``hyper`` (float64, ``table.hyper_layout``): the
# by-value template above, bound as ``step`` (an inlined device function, g read scaled),
# fed from memory. Each thread reads the slots once (``S0``, ``S1``, ...: the slot of each of
# the row's scalars, bound as constants; ``GS`` the gradient's scale) and casts them to the
# kernel's type, as the by-value launch casts its arguments on the host.

def _sgd_hyper(p, g, hyper):
    step(p, g, real(hyper[S0]), real(hyper[S1]), real(hyper[GS]))  # noqa: F821


def _heavy_ball_hyper(p, g, buf, hyper):
    step(p, g, buf, real(hyper[S0]), real(hyper[S1]), real(hyper[S2]),  # noqa: F821
         real(hyper[GS]))  # noqa: F821


def _rmsprop_hyper(p, g, sq, mom, gavg, hyper, centered, has_mom):
    # without a mom buffer (p stands in for it) momentum is off whatever hyper holds
    mu = real(hyper[S2]) if has_mom else real(0.0)  # noqa: F821
    step(p, g, sq, mom, gavg, real(hyper[S0]), real(hyper[S1]), mu,  # noqa: F821
         real(hyper[S3]), real(hyper[S4]), centered, real(hyper[GS]))  # noqa: F821


def _adam_hyper(p, g, m, v, vmax, hyper, amsgrad):
    step(p, g, m, v, vmax, real(hyper[S0]), real(hyper[S1]), real(hyper[S2]),  # noqa: F821
         real(hyper[S3]), real(hyper[S4]), real(hyper[S5]), real(hyper[S6]),  # noqa: F821
         amsgrad, real(hyper[GS]))  # noqa: F821


# --- reductions over the flat buffers: the clip scale and scikit-learn's L2 term ---------------
# One launch each: a grid-stride pass summing squares in float64 per thread, block partials,
# the last block finishing the sum (``sum_last``) and the scalar math (norms.py, kernel dtype).

def _opt_clip(g, hyper, part, count):
    acc = np.float64(0.0)
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        gi = np.float64(g[i])  # squared in float64: a float32 g of 2e19 squares past its range
        acc += gi * gi
    block_sum(acc, part, cuda.blockIdx.x)  # noqa: F821
    if sum_last(part, cuda.gridDim.x, count):  # noqa: F821
        sq = part[cuda.gridDim.x]
        top = np.float64(1.0)
        # only a float64 g (see norms.clip_scale); one thread: a diverging run's rare case
        if WIDE and sq == np.inf:  # noqa: F821
            sq, top = unit_sq(g)  # noqa: F821
        hyper[GSCALE] = clip_scale(sq, hyper[CLIP], top)  # noqa: F821


def _l2_penalty(p, g, spans, alpha, w, has_w, count, value, value_scale, part, counter, out):
    sw = np.float64(count)
    if has_w:  # the batch's weight sum, by every block alike: no other launch, no host sync
        sw = block_total(w, w.size)  # noqa: F821
    coef = l2_coef(alpha, real(sw))  # noqa: F821
    acc = np.float64(0.0)
    n = p.size
    prev = 0
    for s in range(spans.shape[0]):
        lo, hi = span_bounds(spans[s, 0], spans[s, 1], prev, n)  # noqa: F821
        prev = hi
        for i in range(lo + cuda.grid(1), hi, cuda.gridsize(1)):
            pi = p[i]
            g[i] = l2_grad(pi, g[i], coef)  # noqa: F821
            acc += np.float64(pi * pi)
    block_sum(acc, part, cuda.blockIdx.x)  # noqa: F821
    if sum_last(part, cuda.gridDim.x, counter):  # noqa: F821
        out[0] = l2_value(value[0], value_scale, alpha, real(part[cuda.gridDim.x]),  # noqa: F821
                          real(sw))  # noqa: F821


# --- signatures ----------------------------------------------------------------------------------

def _sig(kind, ft):
    """The one signature kernel ``kind`` is compiled for, with float type ``ft``."""
    # scalar arguments (alpha, scale, lr, ...) in the arrays' type ft: a float64 would promote
    # part: float64 partial sums; count: the int32 ticket counters of the last-block sums
    a2, a1, part, f8, b1, count = ft[:, ::1], ft[::1], types.float64[::1], ft, \
        types.boolean, types.int32[::1]
    h8 = types.float64[::1]
    sigs = {
        "fwd": (a2, a1, a2, b1, f8),
        "bwd": (a2, a2, a2, a2, part, count, a1, f8),
        "col_partials": (a2, part, count, a1),
        "softmax_bwd_rows": (a2, a2, a2),
        "xent_label_i32": (a2, types.int32[::1], a2, a1, b1, f8, part, count, a1),
        "xent_label_i64": (a2, types.int64[::1], a2, a1, b1, f8, part, count, a1),
        "xent_prob": (a2, a2, a2, a1, b1, f8, part, count, a1),
        "elem_loss": (a2, a2, a2, a1, b1, f8, f8, part, count, a1),
        # the steps' last f8: gs (1, unused by value; the hyper kernels pass hyper's)
        "sgd": (a1, a1, f8, f8, f8),
        "heavy_ball": (a1, a1, a1, f8, f8, f8, f8),
        "rmsprop": (a1, a1, a1, a1, a1, f8, f8, f8, f8, f8, b1, f8),
        "adam": (a1, a1, a1, a1, a1, f8, f8, f8, f8, f8, f8, f8, b1, f8),
        # hyper steps and the advance: the scalars in a float64 array, whatever ft
        "sgd_hyper": (a1, a1, h8),
        "heavy_ball_hyper": (a1, a1, a1, h8),
        "rmsprop_hyper": (a1, a1, a1, a1, a1, h8, b1, b1),
        "adam_hyper": (a1, a1, a1, a1, a1, h8, b1),
        "advance": (h8, types.float64[:, ::1]),
        "clip": (a1, h8, part, count),
        "l2": (a1, a1, types.int64[:, ::1], f8, a1, b1, f8, a1, f8, part, count, a1),
    }
    return types.void(*sigs[kind])


# --- the kernel registry: name -> (template, signature kind, bound functions) --------------------

def _common(dt):
    """The globals every kernel of dtype ``dt`` is given."""
    fns = S[dt]
    return dict(
        cuda=cuda, np=np, NT=NT, _NEG_INF=_NEG_INF, _NAN=_NAN, exp_=fns.exp, log_=math.log,
        softmax_term=fns.softmax_term, softmax_grad=fns.softmax_grad,
        xent_label=fns.xent_label, xent_prob=fns.xent_prob, **_helpers(dt),
        **vars(N[dt]), grad_in=N[dt].unscaled,
    )


_COMMON = {dt: _common(dt) for dt in _FLOAT_TYPES}

# funcs: global -> name of the scalar function bound to it (from S[dtype])
_SPECS: dict[str, tuple] = {}
for _a in scalar.ACTIVATIONS:
    _SPECS[f"bias_act_fwd_{_a}"] = (_bias_act_fwd, "fwd", {"value": _a})
    _SPECS[f"act_bwd_{_a}"] = (_act_bwd, "bwd", {"grad": f"{_a}_grad"})
_SPECS["bias_act_fwd_softmax"] = (_softmax_fwd, "fwd", {})
_SPECS["softmax_bwd_rows"] = (_softmax_bwd_rows, "softmax_bwd_rows", {})
_SPECS["col_partials"] = (_col_partials, "col_partials", {})
_SPECS["softmax_xent_label_i32"] = (_xent_label, "xent_label_i32", {})
_SPECS["softmax_xent_label_i64"] = (_xent_label, "xent_label_i64", {})
_SPECS["softmax_xent_prob"] = (_xent_prob, "xent_prob", {})
# the loss and optimizer kernels of every table row (table.LOSSES, table.STEPS)
for _n, _row in table.LOSSES.items():
    if _row.scalar is not None:
        _SPECS[_n] = (_elem_loss, "elem_loss", {"loss": _row.scalar})
_STEP_TEMPLATES = {"sgd": _sgd, "heavy_ball": _heavy_ball, "rmsprop": _rmsprop, "adam": _adam}
for _n, _row in table.STEPS.items():
    _SPECS[_n] = (_STEP_TEMPLATES[_row.template], _row.template, {"update": _row.update})
_HYPER_TEMPLATES = {"sgd": _sgd_hyper, "heavy_ball": _heavy_ball_hyper,
                    "rmsprop": _rmsprop_hyper, "adam": _adam_hyper}
# Globals of kernels beyond scalar functions: name -> f(dtype) -> {global: value}
_EXTRA: dict[str, object] = {}


def _hyper_globals(step_name):
    def extra(dt):
        slots = {f"S{k}": s for k, s in enumerate(table.hyper_slots(step_name))}
        step = _pyfunc(step_name, dt, grad_in=N[dt].scaled)
        return {"real": dt.type, **slots, "GS": table.HYPER_GSCALE,
                "step": cuda.jit(device=True, inline="always")(step)}
    return extra


def _reduction_globals(dt):
    return {"real": dt.type, "GSCALE": table.HYPER_GSCALE, "CLIP": table.HYPER_CLIP,
            # float64 for every dtype, and the rescaled sum for float64 g: see norms.clip_scale
            "clip_scale": N[np.dtype(np.float64)].clip_scale,
            "unit_sq": N[np.dtype(np.float64)].unit_sq, "WIDE": dt == np.float64}


for _n, _s in table.STEP_HYPER.items():
    _row = table.STEPS[_s]
    _SPECS[_n] = (_HYPER_TEMPLATES[_row.template], f"{_row.template}_hyper", {})
    _EXTRA[_n] = _hyper_globals(_s)
_SPECS[table.ADVANCE_KERNEL] = (_hyper.opt_advance, "advance", {})
_SPECS[table.CLIP_KERNEL] = (_opt_clip, "clip", {})
_SPECS[table.L2_KERNEL] = (_l2_penalty, "l2", {})
_EXTRA[table.CLIP_KERNEL] = _EXTRA[table.L2_KERNEL] = _reduction_globals
# the slots the hyper kernels and the advance bake in (Numba's disk cache does not see table.py)
_HYPER_TAG = _hyper.LAYOUT_TAG + "_" + "".join(
    "".join(map(str, table.hyper_slots(s))) for s in table.STEPS)


def _pyfunc(name, dtype, **override):
    """The plain-Python kernel ``name`` for ``dtype``: its template cloned with its functions
    as globals and its float literals in ``dtype`` (``scalar.specialise``); ``override``:
    globals to bind instead (the hyper kernels' ``step`` reads g scaled)."""
    dt = np.dtype(dtype)
    template, _, funcs = _SPECS[name]
    extra = _EXTRA[name](dt) if name in _EXTRA else {}
    ns = scalar.typed_globals(
        {**template.__globals__, **_COMMON[dt],
         **{g: getattr(S[dt], f) for g, f in funcs.items()}, **extra, **override}, dt)
    fn = scalar.specialise(template, ns, dt)
    # the name carries the dtype (the clones share their bytecode) and scalar.py's hash: Numba's
    # disk cache then recompiles when it changes (norms.py's hash too, where its functions are
    # inlined; the layout's slots where they are baked in)
    tag = _HYPER_TAG + "_" if name in _HYPER_NAMES else ""
    tag += norms.SOURCE_TAG + "_" if name in _NORMS_NAMES else ""
    fn.__qualname__ = f"{name}_{dt.name}_{tag}{scalar.SOURCE_TAG}"
    return fn


_HYPER_NAMES = frozenset((*table.STEP_HYPER_KERNELS, table.ADVANCE_KERNEL,
                          table.CLIP_KERNEL))
_NORMS_NAMES = frozenset((*table.STEP_KERNELS, *table.STEP_HYPER_KERNELS, table.CLIP_KERNEL,
                          table.L2_KERNEL))
_PTX_HYPER = frozenset((*table.STEP_HYPER_KERNELS, table.ADVANCE_KERNEL))
PTX_TARGETS = [
    (f"{name}[{dt.name}]", _pyfunc(name, dt), _sig(_SPECS[name][1], ft))
    for name in _SPECS if name not in _PTX_HYPER for dt, ft in _FLOAT_TYPES.items()
]
"""(name, plain-Python kernel, signature) of every kernel this module launches, for PTX tests,
but the hyper steps and the advance (``PTX_HYPER_TARGETS``). ``opt_clip`` is here: it reads
g in its dtype and keeps float32 math (only its float64 sum and hyper's load / store)."""
PTX_HYPER_TARGETS = [
    (f"{name}[{dt.name}]", _pyfunc(name, dt), _sig(_SPECS[name][1], ft))
    for name in table.STEP_HYPER_KERNELS for dt, ft in _FLOAT_TYPES.items()
] + [(f"{table.ADVANCE_KERNEL}[float64]", _pyfunc(table.ADVANCE_KERNEL, np.float64),
      _sig("advance", types.float64))]
"""The same for the hyper steps and ``opt_advance`` (float64 only: one dtype whatever the
model's). Apart: a float32 hyper step holds ``ld.f64`` / ``cvt`` (its scalars are read as
float64 and cast), which ``test_kernels_ptx``'s no-float64 rule for steps refuses."""


def _array_specs(sig):
    """(position, dtype, ndim) of each array argument of ``sig``."""
    return tuple((i, np.dtype(str(t.dtype)), t.ndim) for i, t in enumerate(sig.args)
                 if isinstance(t, types.Array))


def _scalar_packers(sig):
    """Per argument of ``sig``: None for an array, else what numba-cuda wraps the value in."""
    import ctypes

    packers = []
    for t in sig.args:
        if isinstance(t, types.Array):
            packers.append(None)
        elif t == types.boolean:
            packers.append(bool)
        elif isinstance(t, types.Integer):
            packers.append(getattr(ctypes, f"c_{t}"))
        else:
            packers.append({types.float32: ctypes.c_float, types.float64: ctypes.c_double}[t])
    return tuple(packers)


def marshal(packers, args, device=None):
    """The kernel parameters numba-cuda's ``_Kernel._prepare_args`` would pass for ``args``.

    An array (C-contiguous, checked) becomes meminfo, parent, size, itemsize, data pointer,
    shape, strides in bytes; a scalar its ctypes value. Built straight from CuPy's attributes:
    no Numba device-array view, no ``__cuda_array_interface__`` dict, no typeof.
    """
    out = []
    for pack, a in zip(packers, args):
        if pack is None:
            data = a.data
            if device is not None and data.device_id != device:
                raise DataError(f"an array on cuda:{data.device_id} was passed to a kernel "
                                f"launching on cuda:{device}; run it under its backend's "
                                "scope()")
            out += (0, 0, a.size, a.itemsize, data.ptr, *a.shape, *a.strides)
        else:
            out.append(pack(a))
    return out


def numba_params(compiled, args, stream):
    """numba-cuda's own kernel parameters for ``args``: its ``_Kernel._prepare_args`` over
    its own argument types (what its ``launch`` would hand to cuda.core)."""
    retr, params = [], []
    for ty, value in zip(compiled.argument_types, args):
        compiled._prepare_args(ty, value, stream, retr, params)
    return params


def _param_bytes(p):
    """The bytes cuda.core's ``launch`` copies for parameter ``p`` (a Python int: intptr_t)."""
    import ctypes

    if isinstance(p, (bool, np.bool_)):
        return bytes([bool(p)])
    if isinstance(p, int):
        return int(p).to_bytes(8, "little", signed=p < 0)
    if isinstance(p, float):
        return np.float64(p).tobytes()
    if isinstance(p, np.generic):
        return p.tobytes()
    if isinstance(p, ctypes._SimpleCData):
        return bytes(p)
    return repr(p).encode()  # unknown to devnet: equal only to the very same thing


def params_difference(ours, theirs):
    """None when both parameter lists give cuda.core the same bytes, else the first
    difference in words."""
    if len(ours) != len(theirs):
        return f"{len(ours)} parameters, numba-cuda's launch passes {len(theirs)}"
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if _param_bytes(a) != _param_bytes(b):
            return f"parameter {i} is {a!r}, numba-cuda's launch passes {b!r}"
    return None


class _Driver:
    """cuda.core's ``launch`` and ``Stream``, when devnet's direct launch is used."""

    launch = None
    LaunchConfig = None
    Stream = None


# The direct launch leans on numba-cuda's private launch internals (``_Kernel._prepare_args``'s
# layout, ``_codelibrary``, ``numba.cuda._compat``): used only where those were checked.
DIRECT_LAUNCH_VERSIONS = ((0, 30, 2), (0, 30, 4))
DIRECT_LAUNCH_REASON = "the CUDA simulator runs every kernel through the dispatcher"


def direct_launch_refusal(version):
    """Why numba-cuda ``version`` (its ``__version__``) does not get the direct launch, or
    None."""
    import re

    found = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    lo, hi = DIRECT_LAUNCH_VERSIONS
    if found and lo <= tuple(map(int, found.groups())) <= hi:
        return None
    return (f"numba-cuda {version} is outside the versions devnet's direct launch was checked "
            f"on ({'.'.join(map(str, lo))} to {'.'.join(map(str, hi))})")


if not SIMULATOR:
    try:
        import numba_cuda

        DIRECT_LAUNCH_REASON = direct_launch_refusal(numba_cuda.__version__)
        if DIRECT_LAUNCH_REASON is None:
            from cuda.core import LaunchConfig as _LaunchConfig
            from cuda.core import Stream as _CoreStream
            from cuda.core import launch as _core_launch
            from numba.cuda._compat import CUDA_CORE_GE_1_0 as _GE_1_0

            _Driver.launch = staticmethod(_core_launch)
            _Driver.LaunchConfig = _LaunchConfig
            _Driver.Stream = _CoreStream
            _COOPERATIVE = "is_cooperative" if _GE_1_0 else "cooperative_launch"
    except ImportError as exc:  # numba-cuda's own launch is used instead
        DIRECT_LAUNCH_REASON = str(exc)

_LAUNCH_CONFIGS: dict[tuple, object] = {}


def _launch_config(grid, block):
    cfg = _LAUNCH_CONFIGS.get((grid, block))
    if cfg is None:
        cfg = _LAUNCH_CONFIGS[(grid, block)] = _Driver.LaunchConfig(
            grid=grid, block=block, shmem_size=0, **{_COOPERATIVE: False})
    return cfg


class _Kernel:
    """One kernel compiled for one dtype; launched without the dispatcher's type inference.

    The direct launch skips the dispatcher's typing, so nothing would notice a float64 array
    handed to a float32 kernel or a strided view read as contiguous: ``check`` does, from the
    signature, before every launch (dtype, rank and C-contiguity: attribute reads only).
    Its first launch compares devnet's parameters with numba-cuda's own for the same
    arguments; on any difference the kernel goes through numba-cuda's launch from then on.
    """

    __slots__ = ("name", "dispatcher", "compiled", "arrays", "argnames", "packers", "cufuncs",
                 "direct")

    def __init__(self, name, dtype):
        self._setup(name, _sig(_SPECS[name][1], _FLOAT_TYPES[np.dtype(dtype)]),
                    _pyfunc(name, dtype))

    def _setup(self, name, sig, pyfunc):
        self.name = name
        self.arrays = _array_specs(sig)
        self.packers = _scalar_packers(sig)
        self.cufuncs: dict[int, object] = {}  # device -> the loaded kernel
        self.argnames = pyfunc.__code__.co_varnames[:pyfunc.__code__.co_argcount]
        if SIMULATOR:
            self.dispatcher = cuda.jit(pyfunc)
            self.compiled = None
        else:
            # eager: compiles now for this one signature; cache=True keeps the cubin on disk
            self.dispatcher = cuda.jit(sig, cache=True)(pyfunc)
            self.compiled = next(iter(self.dispatcher.overloads.values()), None)
        # None: not launched yet (checked against numba-cuda's parameters on the first launch)
        self.direct = None if self.compiled is not None and _Driver.launch is not None \
            else False

    def check(self, args, host=None):
        """A DataError naming the argument unless each array matches the signature and, when
        ``host`` is given, is a NumPy array (True: the simulator's kernel tests) or a device
        array (False), as the launch's first array is."""
        for i, dtype, ndim in self.arrays:
            a = args[i]
            if host is not None and isinstance(a, np.ndarray) != host:
                # a host array among device ones has no device pointer to launch with
                raise DataError(
                    f"CUDA kernel {self.name}: argument {self.argnames[i]!r} is "
                    f"{'a device array' if host else 'a host NumPy array'}, the first array "
                    f"is {'a host NumPy array' if host else 'on the GPU'}; pass every array "
                    "on the kernel's device (backend.asarray(...))")
            if a.dtype != dtype or a.ndim != ndim or not a.flags.c_contiguous:
                layout = "C-contiguous" if a.flags.c_contiguous else \
                    f"not C-contiguous (strides {tuple(a.strides)})"
                raise DataError(
                    f"CUDA kernel {self.name}: argument {self.argnames[i]!r} must be a "
                    f"C-contiguous {ndim}-D {dtype} array, got a {a.ndim}-D {a.dtype} array, "
                    f"{layout}; pass arrays of the model's dtype (a contiguous copy of a view)")

    def _agrees_with_numba(self, c, args, params):
        """True when numba-cuda would pass the same parameters; else warns and says False."""
        try:
            why = params_difference(params, numba_params(self.compiled, args, c.stream))
        except Exception as exc:  # noqa: BLE001 - an unexpected numba-cuda is a difference
            # the type only: the message may hold an array's repr (a device-to-host copy)
            why = f"its _prepare_args raised {type(exc).__name__}"
        if why is None:
            return True
        import warnings

        warnings.warn(f"CUDA kernel {self.name}: devnet's direct launch does not match this "
                      f"numba-cuda ({why}); using numba-cuda's own launch for it",
                      RuntimeWarning, stacklevel=3)
        return False

    def __call__(self, c, grid, block, *args):
        """Launch on ``c``'s device and stream; ``args`` are arrays (CuPy) and scalars."""
        self.check(args, c.numpy)
        if self.direct is not False:
            # numba-cuda's launch minus its per-call work: parameters marshalled here from
            # the CuPy arrays, the loaded kernel, the stream and the launch config cached
            params = marshal(self.packers, args, c.device)
            if self.direct is None:
                self.direct = self._agrees_with_numba(c, args, params)
            if self.direct:
                kernel = self.cufuncs.get(c.device)
                if kernel is None:  # loaded into the current (this device's) context
                    kernel = self.cufuncs[c.device] = \
                        self.compiled._codelibrary.get_cufunc().kernel
                _Driver.launch(c.stream, _launch_config(grid, block), kernel, *params)
                return
        dev = c.dev
        kargs = list(args)
        for i, _, _ in self.arrays:
            kargs[i] = dev(args[i])
        # numba-cuda's public launch: it converts its own stream object for cuda.core
        self.dispatcher[grid, block, c.numba_stream()](*kargs)


_KERNELS: dict[tuple, _Kernel] = {}


def _kernel(name, dtype):
    key = (name, dtype)
    k = _KERNELS.get(key)
    if k is None:
        if np.dtype(dtype) not in _FLOAT_TYPES:
            raise DataError(f"CUDA kernels take float32 or float64 arrays, not {dtype}")
        k = _KERNELS[key] = _Kernel(name, dtype)
    return k


# --- launch configurations -----------------------------------------------------------------------

_MAX_BLOCKS: dict[int, int] = {}


def _max_blocks(device):
    """Most blocks a grid-stride kernel is given on ``device`` (SMs x BLOCKS_PER_SM)."""
    top = _MAX_BLOCKS.get(device)
    if top is None:
        if SIMULATOR:
            top = SIM_MAX_BLOCKS
        else:
            props = _cp().cuda.runtime.getDeviceProperties(device)
            top = props["multiProcessorCount"] * BLOCKS_PER_SM
        top = _MAX_BLOCKS[device] = top
    return top


def _pow2_at_least(n, cap):
    p = 1
    while p < n and p < cap:
        p *= 2
    return p


_CONFIGS: dict[tuple, tuple] = {}


def _config(c, kind, n, m=1):
    """(grid, block) as 3-tuples for ``kind`` on ``n`` rows x ``m`` columns on ``c``'s device."""
    key = (c.device, kind, n, m)
    cfg = _CONFIGS.get(key)
    if cfg is not None:
        return cfg
    top = _max_blocks(c.device)
    if kind == "flat":  # grid-stride over n * m elements
        cfg = ((max(1, min(-(-(n * m) // NT), top)), 1, 1), (NT, 1, 1))
    elif kind == "cols":  # column tiles x row blocks, for column partial sums
        tx = _pow2_at_least(m, 32)  # a warp's worth of columns: coalesced row segments
        ty = NT // tx
        gx = -(-m // tx)
        gy = max(1, min(-(-n // ty), max(1, top // gx)))
        cfg = ((gx, gy, 1), (tx, ty, 1))
    elif kind == "rows":  # one row of threads per matrix row
        tx = _pow2_at_least(m, NT)
        ty = NT // tx
        cfg = ((max(1, min(-(-n // ty), top)), 1, 1), (tx, ty, 1))
    else:  # "one": a single block
        cfg = ((1, 1, 1), (NT, 1, 1))
    if len(_CONFIGS) > 4096:
        _CONFIGS.clear()
    _CONFIGS[key] = cfg
    return cfg


# --- arrays and streams --------------------------------------------------------------------------

_cupy = None


def _cp():
    global _cupy
    if _cupy is None:
        import cupy  # under DEVNET_CUDA_SIMULATOR=1: devnet.backend.cupy_sim

        _cupy = cupy
    return _cupy


if SIMULATOR:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

# Every cache below is keyed by device first: a pointer, a stream or an SM count of one GPU
# must never serve a launch on another.
_VIEWS: dict[tuple, object] = {}
_STREAMS: dict[tuple, object] = {}  # cuda.core Streams, for the direct launch
_NUMBA_STREAMS: dict[tuple, object] = {}  # numba-cuda's, for its own launch
_SCRATCH: dict[tuple, object] = {}
_OUTS: dict[tuple, list] = {}
# Loss values are 0-d slots of a ring per (device, stream, dtype), handed out in turn: no
# allocation per step; a value stays valid for LOSS_RING later loss calls on that stream.
LOSS_RING = 64


class _Call:
    """Device, stream and scratch for one public call, on CuPy or (simulator) NumPy arrays.

    The launch goes to the current device and stream (the backend's ``scope()``): arrays of
    another device are refused rather than read through the wrong context.
    """

    __slots__ = ("numpy", "device", "stream", "key")

    def __init__(self, like):
        self.numpy = isinstance(like, np.ndarray)
        if self.numpy:  # the simulator's kernel tests call with NumPy arrays
            if not SIMULATOR:
                raise DataError("CUDA kernels take CuPy arrays (NumPy arrays only under the "
                                "CUDA simulator)")
            self.device = -1
            self.stream = 0
            self.key = (-1, 0)
            return
        cp = _cp()
        self.device = cp.cuda.runtime.getDevice()
        ptr = cp.cuda.get_current_stream().ptr
        self.key = (self.device, ptr)
        if SIMULATOR or _Driver.Stream is None:
            self.stream = 0
            return
        stream = _STREAMS.get(self.key)
        if stream is None:
            # one cuda.core Stream per CuPy stream: cuda.core's launch takes nothing else
            # without a per-launch conversion (and a DeprecationWarning); ptr 0 is CuPy's null
            # stream, the legacy default stream, as it is for the driver
            stream = _STREAMS[self.key] = _Driver.Stream.from_handle(ptr)
        self.stream = stream

    def numba_stream(self):
        """The current stream as numba-cuda's own stream object, for its launch."""
        if SIMULATOR or self.numpy:
            return 0
        stream = _NUMBA_STREAMS.get(self.key)
        if stream is None:
            ptr = self.key[1]
            stream = cuda.legacy_default_stream() if ptr == 0 else cuda.external_stream(ptr)
            _NUMBA_STREAMS[self.key] = stream
        return stream

    def _wrong_device(self, a):
        return DataError(f"an array on cuda:{a.data.device_id} was passed to a kernel "
                         f"launching on cuda:{self.device}; run it under its backend's scope()")

    def dev(self, a):
        """``a`` as a kernel argument: a cached no-sync device view (CuPy) or, under the
        simulator, the host buffer itself (no copy)."""
        if SIMULATOR:
            if self.numpy:
                return FakeCUDAArray(a)
            if a.data.device_id != self.device:
                raise self._wrong_device(a)
            return FakeCUDAArray(a._a)
        key = (a.data.ptr, a.shape, a.strides, a.dtype.char)
        d = _VIEWS.get(key)
        if d is None:
            if a.data.device_id != self.device:
                raise self._wrong_device(a)
            if len(_VIEWS) > 4096:
                _VIEWS.clear()
            # owner=None: the view holds no reference; the caller's array outlives the launch
            d = _VIEWS[key] = cuda.from_cuda_array_interface(
                a.__cuda_array_interface__, owner=None, sync=False)
        return d

    def scratch(self, size):
        """A float64 array of at least ``size`` elements, reused on this device and stream."""
        size = max(int(size), 1)
        if self.numpy:
            return np.empty(size, np.float64)
        buf = _SCRATCH.get(self.key)
        if buf is None or buf.size < size:
            buf = _SCRATCH[self.key] = _cp().empty(
                max(size, 2 * (0 if buf is None else buf.size), 1024), np.float64)
        return buf

    def counters(self, size):
        """int32 ticket counters (>= ``size``, all 0) for last-block sums on this stream.

        Each launch's last block resets the counters it used, so they stay 0 between
        launches; launches on one stream never overlap.
        """
        if self.numpy:
            return np.zeros(max(int(size), 1), np.int32)
        key = (*self.key, "count")
        buf = _SCRATCH.get(key)
        if buf is None or buf.size < size:
            buf = _SCRATCH[key] = _cp().zeros(max(int(size), 1024), np.int32)
        return buf

    def scalar_out(self, dtype):
        """A 1-element output array for a loss value: the next slot of this stream's ring."""
        if self.numpy:
            return np.empty(1, dtype)
        key = (*self.key, dtype.char)
        ring = _OUTS.get(key)
        if ring is None:
            buf = _cp().empty(LOSS_RING, dtype)
            ring = _OUTS[key] = [0, [buf[i:i + 1] for i in range(LOSS_RING)]]
        turn = ring[0]
        ring[0] = (turn + 1) % LOSS_RING
        return ring[1][turn]


def _check(name, args):
    """``checks.check`` for CuPy (or, under the simulator, NumPy) arrays: C-contiguous."""
    return checks.check(name, args, checks.ArrayLike, True)


def _check_act(table_key, act):
    if table_key not in _SPECS:
        lookup({**{a: 0 for a in scalar.ACTIVATIONS}, "softmax": 0}, act, "activation")


# --- the kernel table: activations ---------------------------------------------------------------

def bias_act_fwd(act, A, b, Z=None, alpha=0.01):
    """In place: ``A <- act(A + b)``; ``Z <- A + b`` first when ``Z`` is given.

    A: (n, m) float32/float64 matmul output, overwritten. b: (m,). Z: (n, m) or None; pass it
    when ``act in NEEDS_PREACTIVATION``. ``softmax`` is applied row-wise (a row per thread row).
    """
    name = f"bias_act_fwd_{act}"
    _check_act(name, act)
    _check("bias_act_fwd", (act, A, b, Z))
    n, m = A.shape
    c = _Call(A)
    grid, block = _config(c, "rows" if act == "softmax" else "cols", n, m)
    _kernel(name, A.dtype)(c, grid, block, A, b, A if Z is None else Z, Z is not None,
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


def act_bwd(act, G, A, Z, dZ, db, alpha=0.01):
    """``dZ <- G * act'(.)`` and ``db <- column sums of dZ``: one launch (softmax: two).

    G, A: (n, m); Z: (n, m) pre-activation or None (required for ``NEEDS_PREACTIVATION``);
    dZ: (n, m) output, may be ``G``; db: (m,) output. Softmax applies the row Jacobian.
    """
    name = f"act_bwd_{act}"
    if act != "softmax":
        _check_act(name, act)
    _check("act_bwd", (act, G, A, Z, dZ, db))
    if Z is None:
        if act in NEEDS_PREACTIVATION:
            raise DataError(f"act_bwd({act!r}) needs the pre-activation Z")
        Z = A
    n, m = G.shape
    c = _Call(G)
    dt = G.dtype
    grid, block = _config(c, "cols", n, m)
    part = c.scratch(grid[1] * m)
    count = c.counters(grid[0])
    if act == "softmax":
        rgrid, rblock = _config(c, "rows", n, m)
        _kernel("softmax_bwd_rows", dt)(c, rgrid, rblock, G, A, dZ)
        _kernel("col_partials", dt)(c, grid, block, dZ, part, count, db)
    elif act == "identity" and _same_buffer(dZ, G):
        # dZ = G already: only the bias gradient, no identity copy of G into itself
        _kernel("col_partials", dt)(c, grid, block, G, part, count, db)
    else:
        _kernel(name, dt)(c, grid, block, G, A, Z, dZ, part, count, db, dt.type(alpha))


# --- losses --------------------------------------------------------------------------------------

def _weight_arg(c, weight, like):
    # an unused stand-in of the right type when there is no weight (has_w=False)
    return weight if weight is not None else like[0]


def softmax_xent(logits, target, grad, weight, scale):
    """Softmax cross-entropy; returns ``scale * sum_i w_i l_i`` as a 0-d array; writes ``grad``.

    logits: (n, k); target: (n,) integer labels or (n, k) probabilities; grad: (n, k), may be
    ``logits``; weight: (n,) or None; scale: float. The value stays on the device (no sync).
    """
    labels, target, weight = checks.loss_args("softmax_xent", logits, target, grad, weight,
                                              checks.ArrayLike, True)
    n, k = logits.shape
    dt = logits.dtype
    c = _Call(logits)
    if labels:
        name = f"softmax_xent_label_{'i32' if target.dtype == np.int32 else 'i64'}"
    else:
        name = "softmax_xent_prob"
    grid, block = _config(c, "rows", n, k)
    out = c.scalar_out(dt)
    _kernel(name, dt)(c, grid, block, logits, target, grad, _weight_arg(c, weight, grad),
                      weight is not None, dt.type(scale), c.scratch(grid[0] + 1),
                      c.counters(1), out)
    return out.reshape(())


def _elem_launch(name):
    def launch(pred, target, grad, weight, scale, param):
        n, k = pred.shape
        c = _Call(pred)
        grid, block = _config(c, "cols", n, k)
        out = c.scalar_out(pred.dtype)
        real = pred.dtype.type
        _kernel(name, pred.dtype)(c, grid, block, pred, target, grad,
                                  _weight_arg(c, weight, grad), weight is not None, real(scale),
                                  real(param), c.scratch(grid[0] * grid[1] + 1), c.counters(1),
                                  out)
        return out.reshape(())
    return launch


for _name in table.ELEMENT_LOSSES:  # sigmoid_bce, mse, mae, huber, poisson, ...
    globals()[_name] = checks.make_loss(_name, _elem_launch(_name), checks.ArrayLike, True)


# --- optimizer steps: one launch over the flat buffers, all updated in place ---------------------

def _step_launch(name):
    def launch(arrays, floats, flags):
        p = arrays[0]
        c = _Call(p)
        grid, block = _config(c, "flat", p.size)
        real = p.dtype.type  # float scalars in p's dtype (the kernel's signature)
        _kernel(name, p.dtype)(c, grid, block, *arrays, *[real(f) for f in floats], *flags,
                               real(1.0))  # gs: unused by value (unscaled)
    return launch


for _name in table.STEPS:  # sgd_step, momentum_step, ..., adamw_step
    globals()[_name] = checks.make_step(_name, _step_launch(_name), checks.ArrayLike, True)


def _step_hyper_launch(name):
    def launch(arrays, hyper, flags, present):
        p = arrays[0]
        c = _Call(p)
        grid, block = _config(c, "flat", p.size)
        _kernel(name, p.dtype)(c, grid, block, *arrays, hyper, *flags, *present)
    return launch


for _name in table.STEP_HYPER:  # sgd_step_hyper, ..., adamw_step_hyper
    globals()[_name] = checks.make_step_hyper(_name, _step_hyper_launch(_name),
                                              checks.ArrayLike, True)

_ONE_THREAD = ((1, 1, 1), (1, 1, 1))


def _advance_launch(hyper, table_):
    _kernel(table.ADVANCE_KERNEL, np.float64)(_Call(hyper), *_ONE_THREAD, hyper, table_)


opt_advance = checks.make_advance(_advance_launch, checks.ArrayLike)


def _clip_launch(g, hyper):
    c = _Call(g)
    grid, block = _config(c, "flat", g.size)
    _kernel(table.CLIP_KERNEL, g.dtype)(c, grid, block, g, hyper, c.scratch(grid[0] + 1),
                                        c.counters(1))


def _l2_launch(p, g, spans, alpha, weight, count, value, value_scale):
    c = _Call(p)
    dt = p.dtype
    grid, block = _config(c, "flat", p.size)
    out = c.scalar_out(dt)
    real = dt.type
    _kernel(table.L2_KERNEL, dt)(c, grid, block, p, g, spans, real(alpha),
                                 p if weight is None else weight, weight is not None,
                                 real(count), value.reshape(1), real(value_scale),
                                 c.scratch(grid[0] + 1), c.counters(1), out)
    return out.reshape(())


opt_clip = checks.make_clip(_clip_launch, checks.ArrayLike, True)
l2_penalty = checks.make_l2(_l2_launch, checks.ArrayLike, True, device_value=True)


# --- deep-network kernels (issue 14): LayerNorm, dropout, residual add; built in cuda_rows.py
# with this module's pieces (imported first, cuda_rows sets them here itself when it is done)
from devnet.kernels import cuda_rows as _cuda_rows  # noqa: E402

for _name in getattr(_cuda_rows, "__all__", ()):
    if hasattr(_cuda_rows, _name):
        globals()[_name] = getattr(_cuda_rows, _name)


# Kernels of the table with no Numba-CUDA version yet (reference.KERNEL_NAMES grows first) run
# as the xp-generic reference on the CuPy arrays: correct, unfused, and listed here.
from devnet.kernels import reference as _reference  # noqa: E402

REFERENCE_FALLBACK = tuple(n for n in KERNEL_NAMES if n not in globals())
for _name in REFERENCE_FALLBACK:
    globals()[_name] = getattr(_reference, _name)
