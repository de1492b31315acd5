"""NumPy's own BLAS, callable from Numba code, with the calls NumPy's ``matmul`` makes.

The compiled epoch's products must be NumPy's bit for bit: Numba's ``np.dot`` calls SciPy's
BLAS, another OpenBLAS build, whose dgemm sums some shapes in another order (here 0.3.30
against NumPy's 0.3.31: 15-20 % of random float64 shapes differed in the last bit). So the
driver calls the CBLAS functions of the library NumPy itself loaded (the same library, the
same thread pool), with the arguments ``matmul`` passes for each shape and stride pattern
(``call``: NumPy's ``_core/src/umath/matmul.c.src``); shapes it leaves to its own loop (an
inner dimension of 1: one product per element) are that loop.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

ROW_MAJOR, COL_MAJOR, NO_TRANS, TRANS = 101, 102, 111, 112
_NAMES = ("scipy_cblas_{}64_", "cblas_{}64_", "cblas_{}")  # NumPy's wheels: the first
_FUNCS = None
_EXTERNAL: dict = {}


def _library():
    """(ctypes library, symbol pattern, C int type) of NumPy's BLAS, or None."""
    here = os.path.dirname(np.__file__)
    candidates = sorted(glob.glob(os.path.join(here, os.pardir, "numpy.libs", "*openblas*")) +
                        glob.glob(os.path.join(here, ".dylibs", "*openblas*")))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)  # already loaded by NumPy: the same handle
        except OSError:
            continue
        for pattern in _NAMES:
            if hasattr(lib, pattern.format("dgemm")):
                return lib, pattern, ctypes.c_int64 if "64_" in pattern else ctypes.c_int
    return None


def functions():
    """{"sgemm", "dgemm", "sgemv", "dgemv", "sdot", "ddot"}: ctypes functions of NumPy's
    CBLAS (Numba calls them from nopython code), or None where it cannot be found."""
    global _FUNCS
    if _FUNCS is None:
        found = _library()
        if found is None:
            _FUNCS = {}
            return None
        lib, pattern, cint = found
        p, e = ctypes.c_void_p, ctypes.c_int
        funcs = {}
        for c, real in (("s", ctypes.c_float), ("d", ctypes.c_double)):
            gemm = getattr(lib, pattern.format(c + "gemm"))
            gemm.restype, gemm.argtypes = None, [e, e, e, cint, cint, cint, real, p, cint, p,
                                                 cint, real, p, cint]
            gemv = getattr(lib, pattern.format(c + "gemv"))
            gemv.restype, gemv.argtypes = None, [e, e, cint, cint, real, p, cint, p, cint,
                                                 real, p, cint]
            dot = getattr(lib, pattern.format(c + "dot"))
            dot.restype, dot.argtypes = real, [cint, p, cint, p, cint]
            funcs.update({c + "gemm": gemm, c + "gemv": gemv, c + "dot": dot})
        _FUNCS = funcs
    return _FUNCS or None


def external(name: str):
    """NumPy's CBLAS function ``name`` ("dgemm", ...) as a Numba external function: a symbol,
    ``devnet_<name>``, that LLVM resolves by name in each process (registered here, at this
    process's address of the function) when it links the driver or loads it from Numba's disk
    cache. A ctypes function would be a constant address, which Numba cannot cache.

    Its signature is the ctypes function's (``functions``), so the driver passes the same
    arguments, converted the same way."""
    ext = _EXTERNAL.get(name)
    if ext is None:
        import llvmlite.binding as llvm
        from numba import types

        funcs = functions()
        if funcs is None:
            raise RuntimeError("NumPy's BLAS library was not found")
        func = funcs[name]
        kinds = {ctypes.c_int: types.int32, ctypes.c_int64: types.int64,
                 ctypes.c_float: types.float32, ctypes.c_double: types.float64,
                 ctypes.c_void_p: types.voidptr, None: types.void}
        sig = kinds[func.restype](*(kinds[t] for t in func.argtypes))
        symbol = f"devnet_{name}"
        llvm.add_symbol(symbol, ctypes.cast(func, ctypes.c_void_p).value)
        ext = _EXTERNAL[name] = types.ExternalFunction(symbol, sig)
    return ext


def _blasable2d(is1: int, is2: int, d1: int, d2: int, size: int) -> bool:
    """NumPy's ``is_blasable2d``: unit stride along the second axis, a usable leading one."""
    return is2 == size and is1 % size == 0 and d2 <= is1 // size


def _gemv(s1m, s1n, sv, so, m, n, size):
    if _blasable2d(s1m, s1n, m, n, size):
        order, lda = COL_MAJOR, s1m // size
    else:
        order, lda = ROW_MAJOR, s1n // size
    return (order, TRANS, n, m, lda, sv // size, so // size)


def call(x, y, out) -> tuple[str, tuple]:
    """The BLAS call NumPy's matmul makes for ``out <- x @ y`` (2-D views, their strides):
    ("dot", (n, incx, incy)); ("gemv_mv", ...) a matrix x times a vector y and ("gemv_vm",
    ...) a vector x times a matrix y, both (order, trans, n, m, lda, incx, incy) with the
    matrix first; ("gemm", (trans1, trans2, M, P, N, lda, ldb, ldc)); or ("loop", ()):
    NumPy's own loop (an inner dimension of 1: one product per element)."""
    size = x.itemsize
    (dm, dn), dp = x.shape, y.shape[1]
    (s1m, s1n), (s2n, s2p), (som, sop) = x.strides, y.strides, out.strides
    if dm == 1 and dp == 1:
        return ("dot", (dn, s1n // size, s2n // size))
    if dn == 1:
        return ("loop", ())
    if dm == 1:  # vector @ matrix: the matrix y transposed times x
        return ("gemv_vm", _gemv(s2p, s2n, s1n, sop, dp, dn, size))
    if dp == 1:
        return ("gemv_mv", _gemv(s1m, s1n, s2n, som, dm, dn, size))
    if _blasable2d(s1m, s1n, dm, dn, size):
        trans1, lda = NO_TRANS, s1m // size
    else:
        trans1, lda = TRANS, s1n // size
    if _blasable2d(s2n, s2p, dn, dp, size):
        trans2, ldb = NO_TRANS, s2n // size
    else:
        trans2, ldb = TRANS, s2p // size
    if x.ctypes.data == y.ctypes.data and dm == dp and s1m == s2p and s1n == s2n and \
            trans1 != trans2:  # NumPy's syrk: a matrix times its own transpose
        raise ValueError("a product of a matrix with its own transpose (NumPy calls syrk)")
    return ("gemm", (trans1, trans2, dm, dp, dn, lda, ldb, som // size))
