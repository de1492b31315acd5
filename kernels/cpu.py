"""Numba CPU kernels built from ``scalar.py``: the CPU backend's kernel table.

Over 400 lines: one loop template per op family (activations, losses, steps, deep ops).

Same names and signatures as ``reference.py`` (read its docstrings for the contract). Each op is
compiled twice from one loop body: serial, and ``parallel=True`` over row / element chunks; a
Python wrapper picks one by size. Activations get one specialised kernel each (a closure over
the scalar function): an in-loop switch on an activation code blocks vectorisation (bias+relu on
1000x1000 float32: 1.97 ms with the switch, 0.14 ms specialised).

Each kernel is also specialised per dtype (``scalar.specialise``: the float literals of the loop
and of the scalar functions typed as the array's dtype, ``exp_f32`` for float32) and the wrappers
cast scalar arguments to it, so float32 kernels compute in float32: 8 lanes of AVX2 instead of 4,
float32 divides, square roots and exp. Only loss totals are summed in float64.

Thread pools (2-core machine, OpenBLAS with 2 threads, Numba's workqueue layer): see
``PARALLEL_MIN`` for the measured threshold; below it every kernel runs serially, so a small
MLP's step never enters a Numba parallel region and never fights OpenBLAS for the cores.
"""

from __future__ import annotations

import numpy as np
from devnet.kernels import checks, norms, scalar, table
from devnet.kernels import hyper as _hyper
from devnet.kernels.table import KERNEL_NAMES, NEEDS_PREACTIVATION  # noqa: F401
from numba import njit, prange

from devnet.errors import DataError, lookup

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
FASTMATH = frozenset({"reassoc", "contract", "arcp"})


def _build(template, tag, dtype, **funcs):
    """(serial, parallel) kernels for ``dtype`` from ``template`` with ``funcs`` as globals.

    A clone per (op, scalar function, dtype) rather than a closure: Numba never finds a closure
    over a dispatcher in its on-disk cache (the pickled dispatcher carries a per-process uuid).
    The cache name carries the dtype (the clones share their bytecode, which the cache index
    keys on) and ``scalar.SOURCE_TAG``, so editing scalar.py recompiles.
    """
    ns = scalar.typed_globals({**template.__globals__, **funcs, "real": dtype}, dtype)
    kernels = []
    for parallel in (False, True):
        fn = scalar.specialise(template, ns, dtype)
        fn.__qualname__ = (f"{tag}_{np.dtype(dtype).name}_{'par' if parallel else 'ser'}_"
                           f"{scalar.SOURCE_TAG}")
        kernels.append(njit(cache=True, parallel=parallel, nogil=True, error_model="numpy",
                            fastmath=set(FASTMATH))(fn))
    return tuple(kernels)


# --- kernel templates: plain functions, compiled by _build with their scalar functions bound --
# Globals bound per kernel: value / grad (an activation), loss (an element loss), update (an
# optimizer); the names in _COMMON are bound to all, and ``real``, the kernel's dtype.
# Scalar arguments come in as Python floats and are cast to ``real`` first thing: the
# dispatcher's fast path takes a Python float, while a NumPy float32 argument cost ~0.2 us to
# make and type, each (adam_step on 33 elements: 0.75 us with floats, 2.1 us with float32s).

def _bias_act_fwd(A, b, Z, keep_z, alpha):
    alpha = real(alpha)  # noqa: F821
    # Two loops, not one with `if keep_z: Z[i, j] = z` inside: without Z the wrapper passes A
    # as Z, the vectoriser's runtime overlap check on Z vs A then fails and every element ran
    # in the scalar remainder loop (bias+sigmoid 1000x1000 float32: 5.4-11 ms vs 0.87 ms), and
    # LLVM only unswitches small bodies (relu) itself.
    n, m = A.shape
    if keep_z:
        for i in prange(n):
            for j in range(m):
                z = A[i, j] + b[j]
                Z[i, j] = z
                A[i, j] = value(z, alpha)  # noqa: F821
    else:
        for i in prange(n):
            for j in range(m):
                A[i, j] = value(A[i, j] + b[j], alpha)  # noqa: F821


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


def _act_bwd(G, A, Z, dZ, db, alpha, nchunks, inplace):
    alpha = real(alpha)  # noqa: F821
    # Rows split in nchunks, each with its own contiguous partial column sums (the inner loop
    # over columns vectorises), added at the end. ``inplace`` (dZ is G): a loop that names only
    # G, since the vectoriser's runtime overlap check of dZ against G would send every element
    # to the scalar loop.
    n, m = G.shape
    part = np.zeros((nchunks, m), dtype=db.dtype)
    step = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        acc = part[c]
        for i in range(c * step, min(n, (c + 1) * step)):
            if inplace:
                for j in range(m):
                    d = G[i, j] * grad(A[i, j], Z[i, j], alpha)  # noqa: F821
                    G[i, j] = d
                    acc[j] += d
            else:
                for j in range(m):
                    d = G[i, j] * grad(A[i, j], Z[i, j], alpha)  # noqa: F821
                    dZ[i, j] = d
                    acc[j] += d
    col_sums(part, db)  # noqa: F821


def _softmax_fwd(A, b, Z, keep_z, alpha):
    # per row: bias, max, exp and sum, scale; the last two passes run on a row in L1
    n, m = A.shape
    for i in prange(n):
        for j in range(m):
            A[i, j] = A[i, j] + b[j]
        if keep_z:
            for j in range(m):
                Z[i, j] = A[i, j]
        mx = row_max(A[i])  # noqa: F821
        s = 0.0
        for j in range(m):
            e = softmax_term(A[i, j], mx)  # noqa: F821
            A[i, j] = e
            s += e
        r = 1.0 / s
        for j in range(m):
            A[i, j] = A[i, j] * r


def _softmax_bwd(G, A, Z, dZ, db, alpha, nchunks, inplace):
    n, m = G.shape
    part = np.zeros((nchunks, m), dtype=db.dtype)
    step = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        acc = part[c]
        for i in range(c * step, min(n, (c + 1) * step)):
            ga = 0.0
            for j in range(m):
                ga += G[i, j] * A[i, j]
            if inplace:  # see _act_bwd
                for j in range(m):
                    d = softmax_grad(A[i, j], G[i, j], ga)  # noqa: F821
                    G[i, j] = d
                    acc[j] += d
            else:
                for j in range(m):
                    d = softmax_grad(A[i, j], G[i, j], ga)  # noqa: F821
                    dZ[i, j] = d
                    acc[j] += d
    col_sums(part, db)  # noqa: F821


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


def _xent_label(Z, T, grad, w, has_w, scale, inplace):
    scale = real(scale)  # noqa: F821
    # Per row: max; exp (once per element) into grad with its sum; grad *= c / s, then the
    # one-hot subtracted at the label. 1000x1000 float32: 4.2 ms with exp twice per element.
    # A label outside [0, k) gives that row a NaN loss and a NaN gradient and is never used
    # as an index: Numba does not check bounds, and a label of k wrote past grad, 1e9
    # segfaulted, -1 read the last class. One compare per row, not measurable.
    n, k = Z.shape
    total = np.float64(0.0)  # float64 whatever the dtype: the sum over every row
    for i in prange(n):
        t = T[i]
        if t < 0 or t >= k:
            for j in range(k):
                grad[i, j] = np.nan
            total += np.nan
        else:
            mx = row_max(Z[i])  # noqa: F821
            zt = Z[i, t]
            s = softmax_exp_row(Z[i], grad[i], mx, inplace)  # noqa: F821
            c = scale * w[i] if has_w else scale
            r = c / s
            for j in range(k):
                grad[i, j] = grad[i, j] * r
            grad[i, t] = grad[i, t] - c
            total += c * xent_label_row(np.log(s), mx, zt)  # noqa: F821
    return total


def _xent_prob(Z, T, grad, w, has_w, scale, inplace):
    scale = real(scale)  # noqa: F821
    # as _xent_label; the row sums of t and t (mx - z) are taken before grad overwrites Z
    n, k = Z.shape
    total = np.float64(0.0)  # see _xent_label
    for i in prange(n):
        mx = row_max(Z[i])  # noqa: F821
        tsum = 0.0
        tz = 0.0
        for j in range(k):
            t = T[i, j]
            tsum += t
            tz += t * (mx - Z[i, j])
        s = softmax_exp_row(Z[i], grad[i], mx, inplace)  # noqa: F821
        c = scale * w[i] if has_w else scale
        r = c * tsum / s
        for j in range(k):
            grad[i, j] = grad[i, j] * r - c * T[i, j]
        total += c * xent_prob_row(np.log(s), tsum, tz)  # noqa: F821
    return total


def _elem_loss_kernel(P, T, grad, w, has_w, scale, delta):
    scale, delta = real(scale), real(delta)  # noqa: F821
    n, k = P.shape
    total = np.float64(0.0)  # see _xent_label
    for i in prange(n):
        c = scale * w[i] if has_w else scale
        row = 0.0
        for j in range(k):
            v, d = loss(P[i, j], T[i, j], delta)  # noqa: F821
            row += v
            grad[i, j] = c * d
        total += c * row
    return total


# The steps read g through ``grad_in(g[i], gs)``: ``norms.unscaled`` (g itself) in the
# by-value kernels, whose math stays as it was, ``norms.scaled`` (g * gs, the clip's scale from
# hyper) in the hyper ones; ``gs`` comes last (1.0, unused, from the by-value entries).

def _sgd(p, g, lr, wd, gs):
    lr, wd, gs = real(lr), real(wd), real(gs)  # noqa: F821
    for i in prange(p.size):
        p[i] = update(p[i], grad_in(g[i], gs), lr, wd)  # noqa: F821


def _heavy_ball(p, g, buf, lr, mu, wd, gs):
    lr, mu, wd, gs = real(lr), real(mu), real(wd), real(gs)  # noqa: F821
    for i in prange(p.size):
        p[i], buf[i] = update(p[i], grad_in(g[i], gs), buf[i], lr, mu, wd)  # noqa: F821


def _rmsprop(p, g, sq, mom, gavg, lr, rho, mu, eps, wd, centered, gs):
    lr, rho, mu, eps, wd = real(lr), real(rho), real(mu), real(eps), real(wd)  # noqa: F821
    gs = real(gs)  # noqa: F821
    use_mom = mu > 0
    for i in prange(p.size):
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
    lr, beta1, beta2, eps = real(lr), real(beta1), real(beta2), real(eps)  # noqa: F821
    wd, bc1, bc2, gs = real(wd), real(bc1), real(bc2), real(gs)  # noqa: F821
    for i in prange(p.size):
        pi, mi, vi, vm = update(  # noqa: F821
            p[i], grad_in(g[i], gs), m[i], v[i], vmax[i] if amsgrad else 0.0,  # noqa: F821
            lr, beta1, beta2, eps, wd, bc1, bc2, amsgrad)
        p[i] = pi
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vmax[i] = vm


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


_COMMON = {c: _common(c) for c in DTYPES}


def _k(template, tag, **names):
    """``{dtype char: (serial, parallel)}``; ``names``: global -> name of a scalar function."""
    return {c: _build(template, tag, dt, **_COMMON[c],
                      **{g: getattr(S[c], n) for g, n in names.items()})
            for c, dt in DTYPES.items()}


_FWD = {a: _k(_bias_act_fwd, f"bias_act_fwd_{a}", value=a) for a in scalar.ACTIVATIONS}
_FWD["softmax"] = _k(_softmax_fwd, "bias_act_fwd_softmax")
_BWD = {a: _k(_act_bwd, f"act_bwd_{a}", grad=f"{a}_grad") for a in scalar.ACTIVATIONS}
_BWD["softmax"] = _k(_softmax_bwd, "act_bwd_softmax")
_NCHUNKS = 2  # row chunks of a parallel act_bwd: one per core
_XENT_LABEL = _k(_xent_label, "softmax_xent_label")
_XENT_PROB = _k(_xent_prob, "softmax_xent_prob")
# the loss and optimizer kernels of every table row (table.LOSSES, table.STEPS)
_ELEM = {n: _k(_elem_loss_kernel, n, loss=row.scalar)
         for n, row in table.LOSSES.items() if row.scalar is not None}
_STEP_TEMPLATES = {"sgd": _sgd, "heavy_ball": _heavy_ball, "rmsprop": _rmsprop, "adam": _adam}


def _k_step(name, grad_in):
    """``_k`` for step ``name`` reading g through ``norms.<grad_in>``."""
    row = table.STEPS[name]
    tag = f"{name}_{grad_in}_{norms.SOURCE_TAG}"  # norms.py's hash: its edits recompile
    return {c: _build(_STEP_TEMPLATES[row.template], tag, dt, **_COMMON[c],
                      update=getattr(S[c], row.update), grad_in=getattr(N[c], grad_in))
            for c, dt in DTYPES.items()}


_STEPS = {n: _k_step(n, "unscaled") for n in table.STEPS}  # by value
_STEPS_SCALED = {n: _k_step(n, "scaled") for n in table.STEPS}  # the hyper entries'


def _pick(kernels, a):
    """The kernel of ``kernels`` (``{dtype char: (serial, parallel)}``) for array ``a``."""
    return kernels["f" if a.dtype.char == "f" else "d"][a.size >= PARALLEL_MIN]


# --- the kernel table: activations ---------------------------------------------------------------

def _same(out, a):
    """Whether ``out`` is ``a`` itself (an in-place call). Another view of the same memory
    is still correct, only slower: it takes the loop with the runtime overlap check."""
    return out is a


def _kernel(by_act, act, a):
    try:
        kernels = by_act[act]
    except KeyError:
        lookup(by_act, act, "activation")  # raises ConfigError listing the valid names
    return _pick(kernels, a)


def bias_act_fwd(act, A, b, Z=None, alpha=0.01):
    """In place: ``A <- act(A + b)``; ``Z <- A + b`` first when ``Z`` is given.

    A: (n, m) float32/float64 matmul output, overwritten. b: (m,). Z: (n, m) or None; pass it
    when ``act in NEEDS_PREACTIVATION``. ``softmax`` is applied row-wise.
    """
    kernel = _kernel(_FWD, act, A)
    checks.check("bias_act_fwd", (act, A, b, Z))
    kernel(A, b, A if Z is None else Z, Z is not None, float(alpha))


def act_bwd(act, G, A, Z, dZ, db, alpha=0.01):
    """``dZ <- G * act'(.)`` and ``db <- column sums of dZ`` in one pass over G.

    G, A: (n, m); Z: (n, m) pre-activation or None (required for ``NEEDS_PREACTIVATION``);
    dZ: (n, m) output, may be ``G``; db: (m,) output. Softmax applies the row Jacobian.
    """
    kernel = _kernel(_BWD, act, G)
    checks.check("act_bwd", (act, G, A, Z, dZ, db))
    if Z is None:
        if act in NEEDS_PREACTIVATION:
            raise DataError(f"act_bwd({act!r}) needs the pre-activation Z")
        Z = A
    kernel(G, A, Z, dZ, db, float(alpha), _NCHUNKS if G.size >= PARALLEL_MIN else 1,
           _same(dZ, G))


# --- losses -------------------------------------------------------------------------------------

def softmax_xent(logits, target, grad, weight, scale):
    """Softmax cross-entropy; returns ``scale * sum_i w_i l_i`` (float); writes ``grad``.

    logits: (n, k); target: (n,) integer labels or (n, k) probabilities; grad: (n, k), may be
    ``logits``; weight: (n,) or None; scale: float. A label outside [0, k) gives its row a
    NaN loss and NaN gradient (no out-of-bounds access).
    """
    labels, target, weight = checks.loss_args("softmax_xent", logits, target, grad, weight)
    kernel = _pick(_XENT_LABEL if labels else _XENT_PROB, logits)
    w = logits[:, 0] if weight is None else weight
    return kernel(logits, target, grad, w, weight is not None, float(scale), _same(grad, logits))


def _elem_launch(name):
    kernels = _ELEM[name]

    def launch(pred, target, grad, weight, scale, param):
        w = pred[:, 0] if weight is None else weight
        return _pick(kernels, pred)(pred, target, grad, w, weight is not None, scale, param)
    return launch


for _name in _ELEM:  # sigmoid_bce, mse, mae, huber, poisson, ...
    globals()[_name] = checks.make_loss(_name, _elem_launch(_name))


# --- optimizer steps: one pass over the flat buffers, all updated in place ---------------------

def _step_launch(name):
    kernels = _STEPS[name]

    def launch(arrays, floats, flags):
        _pick(kernels, arrays[0])(*arrays, *floats, *flags, 1.0)  # gs: unused (unscaled)
    return launch


for _name in table.STEPS:  # sgd_step, momentum_step, ..., adamw_step
    globals()[_name] = checks.make_step(_name, _step_launch(_name))


# The same steps with their scalars in a float64 array (``table.hyper_layout``): the CPU's
# "device" is host memory, so the entry reads them (Python floats, as the by-value entry's) and
# runs the very kernel the by-value entry runs, bit for bit the same update; when clipping
# scales g (gscale != 1) the same loop reading g times gscale (``_STEPS_SCALED``). Not one
# loop for both: under fastmath "reassoc" a multiply by a runtime 1.0 may still change how
# LLVM groups the update (AdamW's moved by an ulp).

def _step_hyper_launch(name):
    step_name = table.STEP_HYPER[name]
    plain, scaled = _STEPS[step_name], _STEPS_SCALED[step_name]
    slots = table.hyper_slots(step_name)
    zero_at = [table.STEPS[step_name].scalars.index(h)
               for _, h in table.gated_scalars(step_name)]

    def launch(arrays, hyper, flags, present):
        values = hyper.tolist()
        scalars = [values[s] for s in slots]
        for k, given in zip(zero_at, present):
            if not given:  # its buffer was None: the term is off (see table)
                scalars[k] = 0.0
        gscale = values[table.HYPER_GSCALE]
        _pick(plain if gscale == 1.0 else scaled, arrays[0])(*arrays, *scalars, *flags, gscale)
    return launch


for _name in table.STEP_HYPER:  # sgd_step_hyper, ..., adamw_step_hyper
    globals()[_name] = checks.make_step_hyper(_name, _step_hyper_launch(_name))

# one thread's work: the serial kernel, float64 whatever the model's dtype
def _advance_kernel():
    fn = scalar.specialise(_hyper.opt_advance, _hyper.opt_advance.__globals__, np.float64)
    fn.__qualname__ = f"opt_advance_{_hyper.LAYOUT_TAG}"  # the slots are in its cache name
    return njit(cache=True, nogil=True, error_model="numpy")(fn)


opt_advance = checks.make_advance(_advance_kernel())


# --- reductions over the flat buffers: the clip scale and scikit-learn's L2 term ---------------
# Serial loops (a few hundred thousand elements at most, memory bound): squares summed in
# float64, the rest in the kernel's dtype (norms.py).

def _opt_clip(g, hyper):
    sq = np.float64(0.0)
    for i in range(g.size):
        gi = np.float64(g[i])  # squared in float64: a float32 g of 2e19 squares past its range
        sq += gi * gi
    top = np.float64(1.0)
    if WIDE and sq == np.inf:  # noqa: F821  (only a float64 g: see norms.clip_scale)
        sq, top = unit_sq(g)  # noqa: F821
    hyper[GSCALE] = clip_scale(sq, hyper[CLIP], top)  # noqa: F821  (float64: norms.py)


def _l2_penalty(p, g, spans, alpha, w, has_w, count):
    alpha = real(alpha)  # noqa: F821
    sw = np.float64(count)
    if has_w:  # the batch's weight sum, here: no separate reduction, no host sync
        sw = np.float64(0.0)
        for i in range(w.size):
            sw += w[i]
    coef = l2_coef(alpha, real(sw))  # noqa: F821
    sq = np.float64(0.0)
    n = p.size
    prev = 0
    for s in range(spans.shape[0]):
        lo, hi = span_bounds(spans[s, 0], spans[s, 1], prev, n)  # noqa: F821
        prev = hi
        for i in range(lo, hi):
            pi = p[i]
            g[i] = l2_grad(pi, g[i], coef)  # noqa: F821
            sq += np.float64(pi * pi)
    return sq, sw


def _reduction(template, tag):
    """``{dtype char: kernel}``: ``template`` compiled serial, norms.py's functions bound."""
    out = {}
    for c, dt in DTYPES.items():
        funcs = {**vars(N[c]), "GSCALE": table.HYPER_GSCALE, "CLIP": table.HYPER_CLIP,
                 # float64 for every dtype, and the rescaled sum for float64 g: see norms.py
                 "clip_scale": N["d"].clip_scale, "unit_sq": N["d"].unit_sq,
                 "WIDE": c == "d"}
        ns = scalar.typed_globals({**template.__globals__, **funcs, "real": dt}, dt)
        fn = scalar.specialise(template, ns, dt)
        fn.__qualname__ = f"{tag}_{np.dtype(dt).name}_{_hyper.LAYOUT_TAG}_{norms.SOURCE_TAG}"
        out[c] = njit(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH))(fn)
    return out


_CLIP = _reduction(_opt_clip, table.CLIP_KERNEL)
_L2 = _reduction(_l2_penalty, table.L2_KERNEL)


def _char(a):
    return "f" if a.dtype.char == "f" else "d"


def _clip_launch(g, hyper):
    _CLIP[_char(g)](g, hyper)


def _l2_launch(p, g, spans, alpha, weight, count, value, value_scale):
    sq, sw = _L2[_char(p)](p, g, spans, alpha, p if weight is None else weight,
                           weight is not None, count)
    with np.errstate(divide="ignore", invalid="ignore"):  # a batch weighing 0: inf, as before
        return float(norms.l2_value(value, value_scale, alpha, np.float64(sq), np.float64(sw)))


opt_clip = checks.make_clip(_clip_launch)
l2_penalty = checks.make_l2(_l2_launch)


# --- deep networks (issue 14): LayerNorm rows, dropout, the residual add ----------------------
# Same contracts as reference.py's "deep networks" section. Flags that change a loop's body
# (keep Z, dropout, residual add) are compile-time globals of each specialisation, not runtime
# ifs: a branch per element blocks vectorisation, and an unused output aliased to A (as
# _bias_act_fwd's comment explains) must not even be named in the loop.

def _layernorm_fwd(X, gamma, beta, Y, mean, rstd, eps):
    eps = real(eps)  # noqa: F821
    n, m = X.shape
    mm = real(m)  # noqa: F821  (an int64 m would promote float32 math to float64)
    for i in prange(n):
        shift = X[i, 0]
        s1 = 0.0
        s2 = 0.0
        for j in range(m):  # one pass: shifted sum and sum of squares
            d = X[i, j] - shift
            s1 += d
            s2 += d * d
        mu, r = layernorm_stats(shift, s1, s2, mm, eps)  # noqa: F821
        mean[i] = mu
        rstd[i] = r
        for j in range(m):  # the row is in L1 now
            Y[i, j] = layernorm(X[i, j], mu, r, gamma[j], beta[j])  # noqa: F821


def _layernorm_bwd(G, X, mean, rstd, gamma, dX, dgamma, dbeta, R, nchunks):
    # per row: one pass for mean(g), mean(g xhat) and the dgamma / dbeta partials, then dX
    # from the row in L1; row chunks with their own partial column sums, as _act_bwd
    n, m = G.shape
    mm = real(m)  # noqa: F821
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
                d = layernorm_grad(G[i, j] * gamma[j], (X[i, j] - mu) * r,  # noqa: F821
                                   sg, sgx, r)
                if RESID:  # noqa: F821
                    d += R[i, j]
                dX[i, j] = d
    col_sums(pg, dgamma)  # noqa: F821
    col_sums(pb, dbeta)  # noqa: F821


def _bias_act_drop_fwd(A, b, Z, alpha, threshold, scale, k0, k1, R, out, row0):
    alpha, scale = real(alpha), real(scale)  # noqa: F821
    n, m = A.shape
    for i in prange(n):
        base = np.uint64((row0 + i) * m)  # the global flat index: masks of a shard's rows
        for j in range(m):
            z = A[i, j] + b[j]
            if KEEP_Z:  # noqa: F821
                Z[i, j] = z
            a = value(z, alpha)  # noqa: F821
            if DROP:  # noqa: F821
                a = dropout(a, dropout_keep(base + np.uint64(j), k0, k1, threshold),  # noqa: F821
                            scale)
            A[i, j] = a
            if RESID:  # noqa: F821
                out[i, j] = R[i, j] + a


def _act_drop_bwd(G, A, Z, dZ, db, alpha, threshold, scale, inv, k0, k1, nchunks, row0):
    alpha, scale, inv = real(alpha), real(scale), real(inv)  # noqa: F821
    # as _act_bwd; the activation's output is recovered as A (1 - p) where kept
    n, m = G.shape
    part = np.zeros((nchunks, m), dtype=db.dtype)
    step = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        acc = part[c]
        for i in range(c * step, min(n, (c + 1) * step)):
            base = np.uint64((row0 + i) * m)
            for j in range(m):
                keep = dropout_keep(base + np.uint64(j), k0, k1, threshold)  # noqa: F821
                d = dropout(G[i, j] * grad(A[i, j] * inv, Z[i, j], alpha), keep,  # noqa: F821
                            scale)
                if INPLACE:  # noqa: F821
                    G[i, j] = d
                else:
                    dZ[i, j] = d
                acc[j] += d
    col_sums(part, db)  # noqa: F821


def _dropout_fwd(A, threshold, scale, k0, k1, row0):
    scale = real(scale)  # noqa: F821
    n, m = A.shape
    for i in prange(n):
        base = np.uint64((row0 + i) * m)
        for j in range(m):
            A[i, j] = dropout(A[i, j], dropout_keep(base + np.uint64(j), k0, k1,  # noqa: F821
                                                    threshold), scale)


_DEEP: dict[tuple, dict] = {}


def _deep(template, tag, c, **funcs):
    """(serial, parallel) of ``template`` for dtype char ``c``, built on first use; ``funcs``:
    global -> a scalar function name (str) or a compile-time constant (bool)."""
    key = (tag, c)
    kernels = _DEEP.get(key)
    if kernels is None:
        bound = {g: getattr(S[c], v) if isinstance(v, str) else v for g, v in funcs.items()}
        kernels = _DEEP[key] = _build(
            template, tag, DTYPES[c], **_COMMON[c], layernorm_stats=S[c].layernorm_stats,
            layernorm=S[c].layernorm, layernorm_grad=S[c].layernorm_grad,
            dropout=S[c].dropout, dropout_keep=S[c].dropout_keep, **bound)
    return kernels


def _deep_pick(template, tag, a, **funcs):
    c = "f" if a.dtype.char == "f" else "d"
    return _deep(template, tag, c, **funcs)[a.size >= PARALLEL_MIN]


def _elementwise_act(act):
    if act not in scalar.ACTIVATIONS:  # softmax is row-wise: no hidden layer uses it
        lookup(scalar.ACTIVATIONS, act, "elementwise activation")


def _dropout_args(name, p, key, row0):
    """(threshold, 1/(1-p), 1-p, k0, k1, row0) for the kernels; ConfigError unless
    0 <= p < 1, DataError unless row0 is a non-negative integer."""
    from devnet.errors import ConfigError

    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout rate must be in [0, 1), got {p!r}")
    key = int(key) & 0xFFFFFFFFFFFFFFFF
    return (np.uint64(scalar.dropout_threshold(p)), 1.0 / (1.0 - p), 1.0 - p,
            np.uint64(key & 0xFFFFFFFF), np.uint64(key >> 32),
            checks.dropout_row0(name, row0))


def layernorm_fwd(X, gamma, beta, Y, mean, rstd, eps=1e-5):
    """Per row ``Y <- gamma (X - mean) / sqrt(var + eps) + beta``; see ``reference``."""
    checks.check("layernorm_fwd", (X, gamma, beta, Y, mean, rstd))
    kernel = _deep_pick(_layernorm_fwd, "layernorm_fwd", X)
    kernel(X, gamma, beta, Y, mean, rstd, float(eps))


def layernorm_bwd(G, X, mean, rstd, gamma, dX, dgamma, dbeta, R=None):
    """``dX <- dL/dX (+ R)``, ``dgamma``, ``dbeta``; see ``reference.layernorm_bwd``."""
    checks.check("layernorm_bwd", (G, X, mean, rstd, gamma, dX, dgamma, dbeta, R))
    resid = R is not None
    kernel = _deep_pick(_layernorm_bwd, f"layernorm_bwd_{int(resid)}", G, RESID=resid)
    kernel(G, X, mean, rstd, gamma, dX, dgamma, dbeta, R if resid else G,
           _NCHUNKS if G.size >= PARALLEL_MIN else 1)


def dropout_fwd(A, p, key, row0=0):
    """In place inverted dropout of A (n, m), rows from global row ``row0``; see
    ``reference.dropout_fwd``."""
    checks.check("dropout_fwd", (A,))
    threshold, scale, _, k0, k1, row0 = _dropout_args("dropout_fwd", p, key, row0)
    kernel = _deep_pick(_dropout_fwd, "dropout_fwd", A)
    kernel(A, threshold, scale, k0, k1, row0)


def bias_act_drop_fwd(act, A, b, Z, alpha, p, key, R=None, out=None, row0=0):
    """In place ``A <- dropout(act(A + b))``, then ``out <- R + A`` when R is given."""
    _elementwise_act(act)
    checks.check("bias_act_drop_fwd", (act, A, b, Z, alpha, p, key, R, out))
    checks.residual_out("bias_act_drop_fwd", R, out)
    threshold, scale, _, k0, k1, row0 = _dropout_args("bias_act_drop_fwd", p, key, row0)
    keep_z, drop, resid = Z is not None, p > 0, R is not None
    kernel = _deep_pick(_bias_act_drop_fwd,
                        f"bias_act_drop_fwd_{act}_{int(keep_z)}{int(drop)}{int(resid)}", A,
                        value=act, KEEP_Z=keep_z, DROP=drop, RESID=resid)
    kernel(A, b, Z if keep_z else A, float(alpha), threshold, scale, k0, k1,
           R if resid else A, out if resid else A, row0)


def act_drop_bwd(act, G, A, Z, dZ, db, alpha, p, key, row0=0):
    """``dZ <- G * mask / (1 - p) * act'``, ``db <- column sums``; see ``reference``."""
    _elementwise_act(act)
    checks.check("act_drop_bwd", (act, G, A, Z, dZ, db))
    if Z is None:
        if act in NEEDS_PREACTIVATION:
            raise DataError(f"act_drop_bwd({act!r}) needs the pre-activation Z")
        Z = A
    threshold, scale, inv, k0, k1, row0 = _dropout_args("act_drop_bwd", p, key, row0)
    inplace = _same(dZ, G)
    kernel = _deep_pick(_act_drop_bwd, f"act_drop_bwd_{act}_{int(inplace)}", G,
                        grad=f"{act}_grad", INPLACE=inplace)
    kernel(G, A, Z, dZ, db, float(alpha), threshold, scale, inv, k0, k1,
           _NCHUNKS if G.size >= PARALLEL_MIN else 1, row0)
