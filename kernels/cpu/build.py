"""How the CPU kernels are built and picked: the per-dtype scalar functions, the fast-math
flags, the (serial, parallel) clones of a loop template, and the size from which the parallel
one runs.

Each op is compiled twice from one loop body: serial, and ``parallel=True`` over row / element
chunks; the entry picks one by size (``pick``). Each kernel is specialised per dtype
(``scalar.specialise``: the float literals of the loop and of the scalar functions typed as the
array's dtype, ``exp_f32`` for float32) and the entries cast scalar arguments to it, so float32
kernels compute in float32: 8 lanes of AVX2 instead of 4, float32 divides, square roots and
exp. Only loss totals are summed in float64.

Thread pools (2-core machine, OpenBLAS with 2 threads, Numba's workqueue layer): see
``PARALLEL_MIN`` for the measured threshold; below it every kernel runs serially, so a small
MLP's step never enters a Numba parallel region and never fights OpenBLAS for the cores.
"""

from __future__ import annotations

import numpy as np
from devnet.kernels import norms, scalar
from numba import njit

# Element count from which a kernel runs as a Numba parallel region: never, by default. Measured
# on this 2-core KVM Xeon (numba 0.68.1 workqueue layer, OpenBLAS 0.3.31 pthreads x2), float32
# 1000x1000, no matmul running: bias+relu 0.15 ms serial vs 6.3 ms parallel, act_bwd relu
# 0.47 vs 12.4 ms, sgd 0.29 vs 6.1 ms, adam 2.7 vs 7.6 ms; only gelu was close (2.4 vs 8.0 ms,
# still slower). A parallel region costs more than the whole serial kernel here, so kernels stay
# serial and OpenBLAS keeps both cores. Inside a training step it is worse, since OpenBLAS's
# threads spin after each product (`python -m benchmarks threads`, step with every kernel
# parallel / serial: tiny 2.3x, S 131x, M1 34x, M 4.8x slower); with NUMBA_THREADING_LAYER=omp
# and OMP_WAIT_POLICY=passive parallel was still 8% (M1) and 4% (M) slower than serial.
# Raise it with set_parallel_min on machines with more cores.
PARALLEL_MIN = 1 << 62


def set_parallel_min(n: int) -> None:
    """Set the element count from which kernels go parallel (``n <= 0``: always)."""
    global PARALLEL_MIN
    PARALLEL_MIN = int(n)


# The dtypes kernels are specialised for, by ``dtype.char``; any other dtype runs the float64 ones.
DTYPES = {"f": np.float32, "d": np.float64}
# The scalar functions per dtype, compiled for inlining into the loops below.
S = {c: scalar.compiled(njit(inline="always"), dt) for c, dt in DTYPES.items()}
# The reductions' scalar math (clip scale, L2 term, the gradient scale of the hyper steps).
N = {c: norms.compiled(njit(inline="always"), dt) for c, dt in DTYPES.items()}
# Fast-math flags of every kernel. "reassoc" lets LLVM vectorise sums; without "nsz" LLVM's
# Reassociate pass and InstCombine's factoring leave floating-point chains alone, which is what
# keeps exp's Cody-Waite reduction x - k*ln2_hi - k*ln2_lo intact: with "nsz" it was folded to
# x - k*ln2, and exp lost accuracy growing with |x| (4.5 ulp at 88 in float32, 211 ulp at 700 in
# float64, against 1.0 and 2.3 without), at no measured speed difference.
# Without "arcp" a division stays a division. With it, a kernel's bits depended on where it
# was compiled: the compiled epoch's driver, loaded from the disk cache before the process had
# built the kernels, ran its own copy of each, re-optimised with the driver, and LayerNorm
# models came out an ulp apart from the same kernels called from Python (87 of 180 float32
# fits, up to 1.8e-7 after 3 epochs; 0 of 180 without "arcp"). It cost the step 1-2 % at M1
# and on a LayerNorm model, nothing measurable at tiny and S (5 interleaved rounds).
FASTMATH = frozenset({"reassoc", "contract"})
FLAGS_TAG = "fm_" + "_".join(sorted(FASTMATH))
"""The flags in each kernel's cache name: Numba's disk cache keys on the defining file, not on
the compile options, so a change of flags must rename the kernels."""


def build(template, tag, dtype, **funcs):
    """(serial, parallel) kernels for ``dtype`` from ``template`` with ``funcs`` as globals.

    A clone per (op, scalar function, dtype) rather than a closure: Numba never finds a closure
    over a dispatcher in its on-disk cache (the pickled dispatcher carries a per-process uuid).
    The cache name carries the dtype (the clones share their bytecode, which the cache index
    keys on), ``scalar.SOURCE_TAG``, so editing scalar.py recompiles, and ``FLAGS_TAG``.
    """
    ns = scalar.typed_globals({**template.__globals__, **funcs, "real": dtype}, dtype)
    kernels = []
    for parallel in (False, True):
        fn = scalar.specialise(template, ns, dtype)
        fn.__qualname__ = (f"{tag}_{np.dtype(dtype).name}_{'par' if parallel else 'ser'}_"
                           f"{scalar.SOURCE_TAG}_{FLAGS_TAG}")
        kernels.append(njit(cache=True, parallel=parallel, nogil=True, error_model="numpy",
                            fastmath=set(FASTMATH))(fn))
    return tuple(kernels)



def _row_max(row):
    # Eight independent maxima: LLVM vectorises no max reduction here (fcmp/select chain, with
    # or without nnan), and one chain is latency bound: 1000x1000 float32 0.95 ms -> 0.18 ms.
    m = row.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = row[0]
    j = 0
    while j + 8 <= m:
        m0 = max(m0, row[j])
        m1 = max(m1, row[j + 1])
        m2 = max(m2, row[j + 2])
        m3 = max(m3, row[j + 3])
        m4 = max(m4, row[j + 4])
        m5 = max(m5, row[j + 5])
        m6 = max(m6, row[j + 6])
        m7 = max(m7, row[j + 7])
        j += 8
    for jj in range(j, m):
        m0 = max(m0, row[jj])
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


def _col_sums(part, db):
    n, m = part.shape
    for j in range(m):
        s = part[0, j]
        for c in range(1, n):
            s += part[c, j]
        db[j] = s



def _softmax_exp_row(z, g, mx, inplace):
    """``g_j <- exp(z_j - mx)``; returns their sum. ``inplace``: g is z (see _act_bwd)."""
    s = 0.0
    if inplace:
        for j in range(g.shape[0]):
            e = softmax_term(g[j], mx)  # noqa: F821
            g[j] = e
            s += e
    else:
        for j in range(g.shape[0]):
            e = softmax_term(z[j], mx)  # noqa: F821
            g[j] = e
            s += e
    return s



def _common(c):
    """The helpers every kernel of dtype ``DTYPES[c]`` is given as globals."""
    dt, fns = DTYPES[c], S[c]
    common = dict(
        softmax_term=fns.softmax_term, softmax_grad=fns.softmax_grad,
        xent_label_row=fns.xent_label_row, xent_prob_row=fns.xent_prob_row,
        col_sums=njit(inline="always")(_col_sums), row_max=njit(inline="always")(_row_max),
    )
    common["softmax_exp_row"] = njit(inline="always")(scalar.specialise(
        _softmax_exp_row, scalar.typed_globals({**globals(), **common}, dt), dt))
    return common


COMMON = {c: _common(c) for c in DTYPES}
"""dtype char -> the helpers every kernel of that dtype is given as globals."""


def k(template, tag, **names):
    """``{dtype char: (serial, parallel)}``; ``names``: global -> name of a scalar function."""
    return {c: build(template, tag, dt, **COMMON[c],
                      **{g: getattr(S[c], n) for g, n in names.items()})
            for c, dt in DTYPES.items()}



def pick(kernels, a):
    """The kernel of ``kernels`` (``{dtype char: (serial, parallel)}``) for array ``a``."""
    return kernels["f" if a.dtype.char == "f" else "d"][a.size >= PARALLEL_MIN]


def chunks(a):
    """Row chunks of a parallel column-sum kernel over ``a``: one per core, 1 when serial."""
    return NCHUNKS if a.size >= PARALLEL_MIN else 1


NCHUNKS = 2  # row chunks of a parallel act_bwd: one per core


def same(out, a):
    """Whether ``out`` is ``a`` itself (an in-place call). Another view of the same memory
    is still correct, only slower: it takes the loop with the runtime overlap check."""
    return out is a


def char(a):
    return "f" if a.dtype.char == "f" else "d"
