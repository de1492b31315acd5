"""How the CPU kernels are built and picked: the per-dtype scalar functions, the fast-math
flags, the (serial, parallel) clones of a loop template, and the size from which the parallel
one runs.

Each op is compiled twice from one loop body, serial and ``parallel=True``; the entry picks one
by size (``pick``). Each kernel is specialised per dtype (``scalar.specialise``) and casts its
scalar arguments to it, so float32 kernels compute in float32 (8 AVX2 lanes instead of 4); only
loss totals are summed in float64.
"""

# The kernel templates read names bound as globals when they are cloned (value, real, ...).
# ruff: noqa: F821
from __future__ import annotations

import logging

import numpy as np
from devnet.kernels import norms, scalar
from numba import njit
from numba.core.caching import FunctionCache

# Element count from which a kernel runs as a Numba parallel region: never, by default. On the
# 2-core machine a parallel region costs more than the whole serial kernel (float32 1000x1000:
# bias+relu 0.15 ms serial vs 6.3 ms parallel, adam 2.7 vs 7.6 ms), and inside a step it fights
# OpenBLAS's spinning threads (every kernel parallel: S 131x, M 4.8x slower; see
# `python -m benchmarks threads`). Raise it with set_parallel_min on machines with more cores.
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
# Fast-math flags of every kernel. "reassoc" lets LLVM vectorise sums. No "nsz": with it LLVM
# folded exp's Cody-Waite reduction x - k*ln2_hi - k*ln2_lo to x - k*ln2 (211 ulp at 700 in
# float64). No "arcp": with it a kernel's bits depended on where it was compiled (inlined into
# the compiled epoch's driver, LayerNorm models came out an ulp apart).
FASTMATH = frozenset({"reassoc", "contract"})
# The flags in each kernel's cache name: Numba's disk cache keys on the defining file, not on
# the compile options.
FLAGS_TAG = "fm_" + "_".join(sorted(FASTMATH))


class _Cache(FunctionCache):
    """Numba's disk cache of one function, where a failed write (a full disk, a file size
    limit, a folder that became read-only) leaves the function compiled for this process: a
    warning, not an OSError from the call that compiled it. A write that failed halfway is a
    miss for the next process (Numba writes the index before the data file)."""

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except OSError as exc:
            if not _UNCACHED:
                logging.getLogger("devnet").warning(
                    "devnet: Numba could not write its disk cache (%s: %s): compiled kernels "
                    "are kept for this process only, and compiled again by the next",
                    type(exc).__name__, exc)
            _UNCACHED.append(self._name)


_UNCACHED: list = []  # the functions whose cache write failed, in this process


def jit(fn, **options):
    """``njit(cache=True, **options)(fn)`` with a cache write that may fail (``_Cache``): a
    RuntimeError only where Numba finds no cache folder at all, as ``cache=True``."""
    dispatcher = njit(**options)(fn)
    dispatcher._cache = _Cache(dispatcher.py_func)  # Dispatcher.enable_caching's own line
    return dispatcher


def build(template, tag, dtype, **funcs):
    """(serial, parallel) kernels for ``dtype`` from ``template`` with ``funcs`` as globals.

    A clone rather than a closure: Numba never finds a closure over a dispatcher in its disk
    cache. The cache name carries the dtype (the clones share their bytecode),
    ``scalar.SOURCE_TAG`` and ``FLAGS_TAG``.
    """
    ns = scalar.typed_globals({**template.__globals__, **funcs, "real": dtype}, dtype)
    kernels = []
    for parallel in (False, True):
        fn = scalar.specialise(template, ns, dtype)
        fn.__qualname__ = (f"{tag}_{np.dtype(dtype).name}_{'par' if parallel else 'ser'}_"
                           f"{scalar.SOURCE_TAG}_{FLAGS_TAG}")
        kernels.append(jit(fn, parallel=parallel, nogil=True, error_model="numpy",
                           fastmath=set(FASTMATH)))
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
            e = softmax_term(g[j], mx)
            g[j] = e
            s += e
    else:
        for j in range(g.shape[0]):
            e = softmax_term(z[j], mx)
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


def k(template, tag, **names):
    """``{dtype char: (serial, parallel)}``; ``names``: global -> name of a scalar function."""
    return {c: build(template, tag, dt, **COMMON[c],
                      **{g: getattr(S[c], n) for g, n in names.items()})
            for c, dt in DTYPES.items()}


def char(a):
    """The dtype char of the kernels for array ``a``: float32's, else float64's."""
    return "f" if a.dtype.char == "f" else "d"


def pick(kernels, a):
    """The kernel of ``kernels`` (``{dtype char: (serial, parallel)}``) for array ``a``."""
    return kernels[char(a)][a.size >= PARALLEL_MIN]


NCHUNKS = 2  # row chunks of a parallel column-sum kernel: one per core


def chunks(a):
    """Row chunks of a column-sum kernel over ``a``: NCHUNKS when parallel, else 1."""
    return NCHUNKS if a.size >= PARALLEL_MIN else 1


def same(out, a):
    """Whether ``out`` is ``a`` itself (an in-place call); another view of the same memory is
    correct too, only slower (the loop with the runtime overlap check)."""
    return out is a
