"""The compiled epoch's code generation: from a step plan, the source of one Numba function
that runs a block of training steps (``source``), one template per op kind (``EMITTERS``),
and the serial helper kernels the generated source calls (``pairwise``, ``deep_kernel``,
``dropout_words``, ``advance_kernel``). ``devnet.train.compiled`` compiles, caches and runs it.
"""

from __future__ import annotations

import numpy as np

from devnet.kernels import scalar
from devnet.kernels import table as ktable
from devnet.train import blas
from devnet.train import plan as plan_mod

# --- code generation -----------------------------------------------------------------------

class _Emitter:
    """Collects the driver's source lines and the kernels it calls (as globals)."""

    def __init__(self, char: str):
        self.char, self.lines, self.globals = char, [], {}
        self.consts: list[float] = []

    def const(self, value) -> str:
        """``value`` (a float, bool or int argument of a kernel) read from the driver's
        constants array at run time. Never a literal: LLVM would fold a literal into the
        inlined kernel and, under the kernels' fast-math flags, regroup its arithmetic (an
        Adam update moved by an ulp against the same kernel called from Python)."""
        self.consts.append(float(value))
        ref = f"consts[{len(self.consts) - 1}]"
        if isinstance(value, bool):
            return f"({ref} != 0.0)"
        return f"np.int64({ref})" if isinstance(value, int) else ref

    def kernel(self, expr: str) -> str:
        """A global of the driver's module bound to ``expr``, an expression over the modules
        the module imports (``_HEADER``): the driver's source names every kernel it calls, so
        its text (hashed) says what it computes, and Numba can cache it."""
        name = f"k{len(self.globals)}"
        self.globals[name] = expr
        return name

    def emit(self, line: str) -> None:
        self.lines.append("        " + line)


def _gather(em, op, a):
    order, X, Y, W, x, y, w = op.args
    em.emit(f"for i in range({a[x]}.shape[0]):")
    em.emit(f"    r = {a[order]}[lo + i]")
    em.emit(f"    {a[x]}[i, :] = {a[X]}[r, :]")
    em.emit(f"    {a[y]}[i] = {a[Y]}[r]" if em.ndim[Y] == 1 else
            f"    {a[y]}[i, :] = {a[Y]}[r, :]")
    if W is not None:
        em.emit(f"    {a[w]}[i] = {a[W]}[r]")


def _standardize(em, op, a):
    x, mean, scale, out = (a[n] for n in op.args)
    em.emit(f"for i in range({x}.shape[0]):")
    em.emit(f"    for j in range({x}.shape[1]):")
    em.emit(f"        {out}[i, j] = ({x}[i, j] - {mean}[j]) / {scale}[j]")


def _matmul(em, op, a):
    # NumPy's BLAS call for these shapes (plan._product): Numba's np.dot makes a gemv for a
    # matrix and a 1-D vector, a dot for two vectors, a gemm for two matrices
    x, y, out, xv, yv, ov, mm = (None if n is None else a[n] for n in op.args)
    ta, tb = op.attr("trans")
    funcs = blas.functions()
    if funcs is not None:  # NumPy's own BLAS, NumPy's call: its bits
        _numpy_product(em, op.attr("blas"), funcs, x, y, out, ta, tb, mm)
        return
    x, y = x + (".T" if ta else ""), y + (".T" if tb else "")
    form = op.attr("form")
    if form == "dot":
        em.emit(f"{ov}[0] = np.dot({xv}, {yv})")
    else:
        em.emit(f"np.dot({xv if form == 'gevm' else x}, {yv if form == 'gemv' else y}, "
                f"{out if form == 'gemm' else ov})")


def _numpy_product(em, kind, funcs, x, y, out, ta, tb, mm):
    """``out <- x(.T) @ y(.T)`` as NumPy's matmul computes it (``blas.call``); ``mm``: the
    call's integer arguments."""
    c = "s" if em.char == "f" else "d"  # BLAS's letters
    if kind == "loop":  # NumPy's loop for an inner dimension of 1: 0 + x * y, per element
        xe, ye = f"{x}.T" if ta else x, f"{y}.T" if tb else y
        em.emit(f"for i in range({out}.shape[0]):")
        em.emit(f"    for j in range({out}.shape[1]):")
        em.emit(f"        {out}[i, j] = {xe}[i, 0] * {ye}[0, j] + 0.0")
    elif kind == "dot":
        fn = em.kernel(f"_b.external({c + 'dot'!r})")
        em.emit(f"{out}[0, 0] = {fn}({mm}[0], {x}.ctypes, {mm}[1], {y}.ctypes, {mm}[2])")
    elif kind in ("gemv_mv", "gemv_vm"):
        fn = em.kernel(f"_b.external({c + 'gemv'!r})")
        mat, vec = (x, y) if kind == "gemv_mv" else (y, x)
        em.emit(f"{fn}(np.int32({mm}[0]), np.int32({mm}[1]), {mm}[2], {mm}[3], 1.0, "
                f"{mat}.ctypes, {mm}[4], {vec}.ctypes, {mm}[5], 0.0, {out}.ctypes, {mm}[6])")
    else:
        fn = em.kernel(f"_b.external({c + 'gemm'!r})")
        em.emit(f"{fn}({blas.ROW_MAJOR}, np.int32({mm}[0]), np.int32({mm}[1]), {mm}[2], "
                f"{mm}[3], {mm}[4], 1.0, {x}.ctypes, {mm}[5], {y}.ctypes, {mm}[6], 0.0, "
                f"{out}.ctypes, {mm}[7])")


def _bias_act_fwd(em, op, a):
    A, b, Z = op.args
    k = em.kernel(f"_e._FWD[{op.attr('act')!r}][{em.char!r}][0]")
    em.emit(f"{k}({a[A]}, {a[b]}, {a[Z or A]}, {em.const(Z is not None)}, "
            f"{em.const(op.attr('alpha'))})")


def _drop_words(em, op, a):
    # the layer's key at this step (``scalar.dropout_key``, in the driver: ``dropout_words``)
    # as the kernels take it, its two 32-bit words
    seed, index = a[op.args[-2]], a[op.args[-1]]
    fn = em.kernel("_c.dropout_words()")
    em.emit(f"dk0, dk1 = {fn}({seed}[0], {index}[0] + s, {em.const(op.attr('layer'))})")


def _drop_args(em, op) -> str:
    # ``checks.dropout_args``: the threshold, 1 / (1 - p) (and 1 - p), read as constants
    p = op.attr("p")
    return (f"np.uint64({em.const(float(scalar.dropout_threshold(p)))}), "
            f"{em.const(1.0 / (1.0 - p))}")


def _bias_act_drop_fwd(em, op, a):
    # args (A, b, Z, R, out, seed, index): a residual block's input R and output out; p = 0
    # (a residual block without dropout): no key, the kernel without its dropout
    A, b, Z, R, out = op.args[:5]
    drop = op.attr("p") > 0
    if drop:
        _drop_words(em, op, a)
    else:
        em.emit(f"dk0 = dk1 = np.uint64({em.const(0.0)})")
    k = em.kernel(f"_c.deep_kernel('bias_act_drop_fwd', {em.char!r}, {op.attr('act')!r}, "
                  f"keep_z={Z is not None}, drop={drop}, resid={R is not None})")
    em.emit(f"{k}({a[A]}, {a[b]}, {a[Z or A]}, {em.const(op.attr('alpha'))}, "
            f"{_drop_args(em, op)}, dk0, dk1, {a[R or A]}, {a[out or A]}, {em.const(0)})")


def _act_drop_bwd(em, op, a):
    G, A, Z, dZ, db = op.args[:5]
    _drop_words(em, op, a)
    k = em.kernel(f"_c.deep_kernel('act_drop_bwd', {em.char!r}, {op.attr('act')!r}, "
                  f"inplace={dZ == G})")
    em.emit(f"{k}({a[G]}, {a[A]}, {a[Z or A]}, {a[dZ]}, {a[db]}, {em.const(op.attr('alpha'))}, "
            f"{_drop_args(em, op)}, {em.const(1.0 - op.attr('p'))}, dk0, dk1, {em.const(1)}, "
            f"{em.const(0)})")


def _layernorm_fwd(em, op, a):
    X, gamma, beta, U, mean, rstd = (a[n] for n in op.args)
    k = em.kernel(f"_c.deep_kernel('layernorm_fwd', {em.char!r})")
    em.emit(f"{k}({X}, {gamma}, {beta}, {U}, {mean}, {rstd}, {em.const(op.attr('eps'))})")


def _layernorm_bwd(em, op, a):
    # args (dU, X, mean, rstd, gamma, dX, dgamma, dbeta, R): R, the skip's gradient, or None
    G, X, mean, rstd, gamma, dX, dgamma, dbeta, R = op.args
    k = em.kernel(f"_c.deep_kernel('layernorm_bwd', {em.char!r}, resid={R is not None})")
    em.emit(f"{k}({a[G]}, {a[X]}, {a[mean]}, {a[rstd]}, {a[gamma]}, {a[dX]}, {a[dgamma]}, "
            f"{a[dbeta]}, {a[R or G]}, {em.const(1)})")


def _add(em, op, a):
    out, other = (a[n] for n in op.args)
    em.emit(f"for i in range({out}.shape[0]):")
    em.emit(f"    for j in range({out}.shape[1]):")
    em.emit(f"        {out}[i, j] = {out}[i, j] + {other}[i, j]")


def _normalise(em, op, a):
    w, wn = (a[n] for n in op.args)
    k = em.kernel("_c.pairwise()")
    if em.dtype[op.args[0]] == "float64":  # NumPy's pairwise sum over the whole array
        em.emit(f"m = {k}({w}, 0, {w}.shape[0]) / {w}.shape[0]")
    else:  # cast in buffers of np.getbufsize() elements: each summed pairwise, in turn
        em.emit("m = 0.0")
        em.emit(f"buf = np.int64({em.const(np.getbufsize())})")
        em.emit(f"for j0 in range(0, {w}.shape[0], buf):")
        em.emit(f"    m += {k}({w}, j0, min(buf, {w}.shape[0] - j0))")
        em.emit(f"m = m / {w}.shape[0]")
    em.emit("m = m if m > 0 else 1.0")
    em.emit(f"for i in range({w}.shape[0]):")
    em.emit(f"    {wn}[i] = np.float64({w}[i]) / m")


def _loss(em, op, a):
    pred, target, grad, w, scale = op.args
    name = op.attr("kernel")
    if name == "softmax_xent":
        kernels = "_e._XENT_LABEL" if op.attr("labels") else "_e._XENT_PROB"
        last = em.const(False)  # grad is the Step's own buffer, never pred (inplace)
    else:
        kernels, last = f"_e._ELEM[{name!r}]", em.const(op.attr("param"))
    k = em.kernel(f"{kernels}[{em.char!r}][0]")
    weight = a[w] if w is not None else f"{a[pred]}[:, 0]"
    em.emit(f"value = {k}({a[pred]}, {a[target]}, {a[grad]}, {weight}, {em.const(w is not None)}, "
            f"{a[scale]}[0], {last})")


def _act_bwd(em, op, a):
    G, A, Z, dZ, db = op.args
    k = em.kernel(f"_e._BWD[{op.attr('act')!r}][{em.char!r}][0]")
    em.emit(f"{k}({a[G]}, {a[A]}, {a[Z or A]}, {a[dZ]}, {a[db]}, {em.const(op.attr('alpha'))}, "
            f"{em.const(1)}, {em.const(dZ == G)})")


def _clip(em, op, a):
    em.emit(f"{em.kernel(f'_o._CLIP[{em.char!r}]')}({a['g']}, {a['hyper']})")


def _advance(em, op, a):
    em.emit(f"{em.kernel('_c.advance_kernel()')}({a['hyper']}, table)")


def _opt_step(em, op, a):
    name = op.attr("kernel")
    plain = em.kernel(f"_o._STEPS[{name!r}][{em.char!r}][0]")
    scaled = em.kernel(f"_o._STEPS_SCALED[{name!r}][{em.char!r}][0]")
    p = op.args[0]
    arrays = ", ".join(a[n or p] for n in op.args[:-1])
    hyper = a[op.args[-1]]
    off = set(op.attr("off"))
    scalars = ", ".join(em.const(0.0) if i in off else f"{hyper}[{s}]"
                        for i, s in enumerate(op.attr("slots")))
    flags = "".join(f", {em.const(f)}" for f in op.attr("flags"))
    em.emit(f"gs = {hyper}[{ktable.HYPER_GSCALE}]")
    em.emit("if gs == 1.0:")
    em.emit(f"    {plain}({arrays}, {scalars}{flags}, gs)")
    em.emit("else:")
    em.emit(f"    {scaled}({arrays}, {scalars}{flags}, gs)")


def _accumulate(em, op, a):
    em.emit(f"{a[op.args[0]]}[0] += value * weight")


# the ops hooks declare (``plan.HookContext``)

def _scale(em, op, a):
    # NumPy's ``array *= float``: the scale cast to the array's dtype, the product in it
    arr, scale = a[op.args[0]], a[op.args[1]]
    em.emit(f"sc = np.{em.dtype[op.args[0]]}({scale}[0])")
    em.emit(f"for i in range({arr}.shape[0]):")
    em.emit(f"    for j in range({arr}.shape[1]):")
    em.emit(f"        {arr}[i, j] = {arr}[i, j] * sc")


def _zero_value(em, op, a):
    em.emit(f"value = {em.const(0.0)}")


def _record(em, op, a):
    pred, target, z, t, at = op.args
    tgt = f"{a[target]}[i, j]" if em.ndim[target] == 2 else f"{a[target]}[i]"
    em.emit(f"at = {a[at]}[0]")
    em.emit(f"for i in range({a[pred]}.shape[0]):")
    em.emit(f"    for j in range({a[pred]}.shape[1]):")
    em.emit(f"        {a[z]}[j, at + i] = {a[pred]}[i, j]")
    em.emit(f"        {a[t]}[j, at + i] = {tgt}")
    em.emit(f"{a[at]}[0] = at + {a[pred]}.shape[0]")


def _l2_penalty(em, op, a):
    # the l2_penalty kernel's loop (``_o._L2``), then ``norms.l2_value`` in float64, as the
    # launch evaluates it (no fast-math here: the same bits)
    p, g, spans, w, x, scal, cast = op.args
    weights = a[p]
    if w is not None:
        weights = a[w]
        if cast is not None:  # the launch's ``w.astype(p.dtype)``
            em.emit(f"for i in range({a[w]}.shape[0]):")
            em.emit(f"    {a[cast]}[i] = {a[w]}[i]")
            weights = a[cast]
    k = em.kernel(f"_o._L2[{em.char!r}]")
    s = a[scal]
    em.emit(f"sq, sw = {k}({a[p]}, {a[g]}, {a[spans]}, {s}[0], {weights}, "
            f"{em.const(w is not None)}, np.float64({a[x]}.shape[0]))")
    value = em.kernel("_o.N['d'].l2_value")
    em.emit(f"value = {value}(value, {s}[1], {s}[0], sq, sw)")


# Each op kind's template is this module's function of the kind's name, as its Python call is
# plan.py's: a kind the executor has and this module lacks fails here, at import
EMITTERS = {kind: globals()[f"_{kind}"] for kind in plan_mod.EXECUTORS}
"""Op kind -> its source template (the Python executor's twin: ``plan.EXECUTORS``)."""


def advance_kernel():
    """The optimizer's table advance kernel (one dispatcher per process: the driver's global)."""
    global _ADVANCE
    if _ADVANCE is None:
        from devnet.kernels.cpu import optim
        _ADVANCE = optim._advance_kernel()
    return _ADVANCE


_ADVANCE = None


def _pairwise_py(a, lo, n):
    # NumPy's pairwise summation of a[lo:lo + n] in float64 (``np.add.reduce``'s inner loop
    # over one contiguous run): the driver's mean of the batch weights is then the one
    # losses.py takes (``_normalise``).
    # NumPy recurses (halves cut at a multiple of 8 down to blocks of 128 at most, left +
    # right); here the same tree walked with a stack: a cached Numba function that calls a
    # recursive one crashed when loaded from the disk cache (Numba 0.68).
    los = np.empty(130, np.int64)  # pending ranges: a stack 2 per level of 64 levels deep
    ns = np.empty(130, np.int64)
    split = np.zeros(130, np.bool_)  # its halves pushed: add their sums when it comes back
    sums = np.empty(66, np.float64)  # finished sums, left before right
    top, done = 0, 0
    los[0], ns[0] = lo, n
    while top >= 0:
        lo_, n_ = los[top], ns[top]
        if split[top]:  # both halves summed: left + right, as NumPy's recursion adds them
            sums[done - 2] = sums[done - 2] + sums[done - 1]
            done -= 1
            top -= 1
        elif n_ < 8:
            s = np.float64(0.0)
            for i in range(lo_, lo_ + n_):
                s += np.float64(a[i])
            sums[done] = s
            done += 1
            top -= 1
        elif n_ <= 128:
            r0 = np.float64(a[lo_])
            r1 = np.float64(a[lo_ + 1])
            r2 = np.float64(a[lo_ + 2])
            r3 = np.float64(a[lo_ + 3])
            r4 = np.float64(a[lo_ + 4])
            r5 = np.float64(a[lo_ + 5])
            r6 = np.float64(a[lo_ + 6])
            r7 = np.float64(a[lo_ + 7])
            i = 8
            while i < n_ - n_ % 8:
                r0 += a[lo_ + i]
                r1 += a[lo_ + i + 1]
                r2 += a[lo_ + i + 2]
                r3 += a[lo_ + i + 3]
                r4 += a[lo_ + i + 4]
                r5 += a[lo_ + i + 5]
                r6 += a[lo_ + i + 6]
                r7 += a[lo_ + i + 7]
                i += 8
            s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
            for j in range(n_ - n_ % 8, n_):
                s += a[lo_ + j]
            sums[done] = s
            done += 1
            top -= 1
        else:
            n2 = n_ // 2
            n2 -= n2 % 8
            split[top] = True
            los[top + 1], ns[top + 1] = lo_ + n2, n_ - n2  # the right half, summed second
            los[top + 2], ns[top + 2] = lo_, n2
            split[top + 1] = split[top + 2] = False
            top += 2
    return sums[0]


def pairwise():
    """``_pairwise_py`` compiled (disk-cached, as a global of a cached driver must be)."""
    global _pairwise
    if _pairwise is None:
        from devnet.kernels.cpu.build import jit
        _pairwise = jit(_pairwise_py, nogil=True, error_model="numpy")
    return _pairwise


_pairwise = None


def deep_kernel(name: str, char: str, act: str = "", keep_z: bool = False, drop: bool = False,
                resid: bool = False, inplace: bool = False):
    """The serial kernel of ``devnet.kernels.cpu.deep`` that the CPU backend's call ``name``
    picks for dtype char ``char`` (the same specialisation and dispatcher): its flags as that
    call derives them (Z kept, dropout, residual add; dL/dZ written over G)."""
    from devnet.kernels.cpu import deep

    if name == "bias_act_drop_fwd":
        kernels = deep._deep(deep._bias_act_drop_fwd,
                             f"bias_act_drop_fwd_{act}_{int(keep_z)}{int(drop)}{int(resid)}",
                             char, value=act, KEEP_Z=keep_z, DROP=drop, RESID=resid)
    elif name == "act_drop_bwd":
        kernels = deep._deep(deep._act_drop_bwd, f"act_drop_bwd_{act}_{int(inplace)}", char,
                             grad=f"{act}_grad", INPLACE=inplace)
    elif name == "layernorm_fwd":
        kernels = deep._deep(deep._layernorm_fwd, "layernorm_fwd", char)
    else:
        kernels = deep._deep(deep._layernorm_bwd, f"layernorm_bwd_{int(resid)}", char,
                             RESID=resid)
    return kernels[0]


_M1, _M2, _M3 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _dropout_words_py(seed, step, layer):
    # ``scalar.dropout_key(seed, step, layer)`` in uint64 arithmetic (wrapping as the
    # reference's & 2**64 - 1 does), split as ``checks.dropout_args`` splits it: (low, high)
    z = seed
    for r in range(3):
        if r == 1:
            z = z ^ np.uint64(step)
        elif r == 2:
            z = z ^ np.uint64(layer)
        z = z + np.uint64(_M1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M2)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M3)
        z = z ^ (z >> np.uint64(31))
    return z & np.uint64(0xFFFFFFFF), z >> np.uint64(32)


def dropout_words():
    """``_dropout_words_py`` compiled (disk-cached, as a global of a cached driver must be)."""
    global _dropout_words
    if _dropout_words is None:
        from devnet.kernels.cpu.build import jit
        _dropout_words = jit(_dropout_words_py, nogil=True)
    return _dropout_words


_dropout_words = None

# The driver module's imports: the names its kernel expressions use (``_Emitter.kernel``).
_HEADER = ("# devnet's compiled epoch: one step plan's driver (generated, cached; see\n"
           "# devnet/train/codegen.py)\n"
           "import numpy as np\n"
           "from devnet.kernels.cpu import elementwise as _e, optim as _o\n"
           "from devnet.train import blas as _b, codegen as _c\n")


def source(plan) -> tuple[str, list, np.ndarray]:
    """The driver module's source, its argument names (the plan's buffers) and its constants
    (``_Emitter.const``)."""
    names = sorted(plan.buffers)
    args = {n: f"b_{n}" for n in (*names, "order")}
    char = "f" if plan.buffers["p"].dtype.char == "f" else "d"
    em = _Emitter(char)
    em.ndim = {n: plan.buffers[n].ndim for n in names}
    em.dtype = {n: plan.buffers[n].dtype.name for n in names}
    for op in plan.ops:
        EMITTERS[op.kind](em, op, args)
    head = ", ".join(args[n] for n in names)
    text = (_HEADER + "".join(f"{k} = {expr}\n" for k, expr in em.globals.items()) +
            f"\n\ndef driver(row0, count, weight, table, b_order, consts, {head}):\n"
            f"    for s in range(count):\n"
            f"        lo = row0 + s * b_x.shape[0]\n" + "\n".join(em.lines) + "\n")
    return text, names, np.array(em.consts + [0.0])
