"""What every CUDA kernel is built from: libdevice math, the scalar functions compiled as
inlined device functions per dtype, and the block-level helpers (row and block reductions,
column partials, the last-block ticket) the kernel templates call.

``inline="always"`` (at Numba-IR level) is what lets ``compile_ptx`` run without a GPU: a
non-inlined device function asks the driver for the device's compute capability. ``scalar``'s
``exp`` / ``exp_f32`` / ``log1p`` are CPU-vectorisation versions; the GPU gets libdevice's in
their place, so every caller of ``exp`` uses them.
"""

# The kernel templates read names bound as globals when they are cloned (value, real, ...).
# ruff: noqa: F821
from __future__ import annotations

import math
import os

import numpy as np
from devnet.kernels import norms, scalar
from numba import cuda, types

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# Threads per block: 8 warps on a GPU; 32 under the simulator (a Python thread each).
NT = 32 if SIMULATOR else 256
# Blocks per SM a grid-stride kernel is given at most (H100: 132 SMs x 8 = 1056 blocks).
BLOCKS_PER_SM = 8
# Under the simulator a grid of at most this many blocks, so grid-stride loops wrap around.
SIM_MAX_BLOCKS = 2


# --- scalar functions, compiled as inlined device functions -------------------------------------

def _gpu_exp(x):
    return math.exp(x)  # libdevice __nv_expf for a float32 x, __nv_exp for a float64


def _gpu_log1p(t):
    return math.log1p(t)


_GPU_MATH = {"exp": _gpu_exp, "exp_f32": _gpu_exp, "log1p": _gpu_log1p}


def _device(fn):
    """``scalar.compiled``'s decorator: libdevice exp/log1p, every function inlined."""
    return cuda.jit(device=True, inline="always")(_GPU_MATH.get(fn.__name__, fn))


FLOAT_TYPES = {np.dtype(np.float32): types.float32, np.dtype(np.float64): types.float64}
S = {dt: scalar.compiled(_device, dt) for dt in FLOAT_TYPES}
N = {dt: norms.compiled(_device, dt) for dt in FLOAT_TYPES}


# --- block-level helpers (inlined into the kernels) ----------------------------------------------

def _row_reduce(x, is_max):
    """Max or sum of ``x`` over threadIdx.x, per threadIdx.y, in the kernel's dtype; every
    thread gets it. blockDim.x a power of two; every thread of the block must call it."""
    sh = cuda.shared.array(NT, real)
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
    """Sum float64 ``x`` over the whole (power-of-two) block into ``part[slot]`` (thread 0)."""
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
    """Sum ``acc`` over threadIdx.y (column j per threadIdx.x) into ``part[blockIdx.y, j]``
    of the flat (gridDim.y, m) float64 scratch; in the kernel's dtype, blockDim.y a power of 2."""
    sh = cuda.shared.array(NT, real)
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

    ``count[slot]``: an int32 ticket counter, 0 between launches (the last block resets it).
    Each thread fences its global writes first, so the last block reads every block's partials.
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
    if last_block(count, cuda.blockIdx.x, cuda.gridDim.y):
        if cuda.threadIdx.y == 0 and j < m:
            s = np.float64(0.0)  # the partials are float64
            for r in range(cuda.gridDim.y):
                s += part[r * m + j]
            db[j] = s


def _block_total(x, n):
    """The float64 sum of ``x[:n]`` by the whole (1-D, power-of-two) block, to every thread;
    each block computes the same sum in the same order."""
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
    """After each block's ``block_sum`` into ``part[:nparts]``: True in thread 0 of the last
    block, which finds their sum in ``part[nparts]``."""
    if last_block(count, 0, nparts):
        s = np.float64(0.0)
        t = cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        for r in range(t, nparts, cuda.blockDim.x * cuda.blockDim.y):
            s += part[r]
        block_sum(s, part, nparts)
        return t == 0
    return False


def _sum_finish(part, nparts, count, out):
    """``sum_last``, then the last block writes the sum to ``out[0]``."""
    if sum_last(part, nparts, count):
        out[0] = part[nparts]


def _helpers(dt):
    """The block helpers for kernels of dtype ``dt``, as inlined device functions."""
    ns = scalar.typed_globals({**globals(), "real": dt.type}, dt)
    helpers = {}
    # later helpers call earlier ones: each sees those compiled before it
    for fn in (_row_reduce, _block_sum, _col_partial, _last_block, _col_finish, _block_total,
               _sum_last, _sum_finish):
        helpers[fn.__name__[1:]] = cuda.jit(device=True, inline="always")(
            scalar.specialise(fn, {**ns, **helpers}, dt))
    return helpers


# The scalar functions every template may call (value, grad, loss, update: bound per kernel).
_SHARED = ("softmax_term", "softmax_grad", "xent_label", "xent_prob", "layernorm_stats",
           "layernorm", "layernorm_grad", "dropout", "dropout_keep")


def _common(dt):
    """The globals every kernel of dtype ``dt`` is given; ``real`` its float type."""
    fns = S[dt]
    return dict(cuda=cuda, np=np, NT=NT, real=dt.type, exp_=fns.exp, log_=math.log,
                **{f: getattr(fns, f) for f in _SHARED}, **_helpers(dt), **vars(N[dt]),
                grad_in=N[dt].unscaled)


COMMON = {dt: _common(dt) for dt in FLOAT_TYPES}
