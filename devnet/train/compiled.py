"""The compiled CPU epoch: a Numba function generated from a step plan that runs a block of
training steps -- row gather, forward, loss, backward, optimizer, running loss -- in one call.

The driver calls the very kernels the Python executor launches (the serial Numba clones of
``devnet.kernels.cpu``; every CPU kernel runs serially unless ``set_parallel_min`` says
otherwise, and inside the driver always) and NumPy's own BLAS with the calls NumPy's matmul
makes (``devnet.train.blas``), into the same preallocated outputs: a compiled epoch is the
Python one bit for bit, and BLAS keeps one thread pool. Where NumPy's BLAS library cannot be
found the products are Numba's ``np.dot`` (SciPy's BLAS: equal within rounding); without
either the engine is not eligible.

The source comes from ``devnet.train.codegen`` (one template per op kind); a driver is
compiled once per plan structure (ops, buffer dtypes and ranks), whatever the batch size: the
full batches and the partial last one share it. Its module is a file in a cache directory
and Numba caches its machine code there, so later processes load it instead of compiling it
again (``cache_dir``, ``cache_info``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading

import numpy as np

from devnet.train import blas, codegen
from devnet.train import plan as plan_mod

_LOCK = threading.Lock()
_DRIVERS: dict = {}


def unavailable(backend) -> str | None:
    """Why the compiled epoch cannot run on ``backend``, or None when it can."""
    if backend.xp is not np or getattr(backend, "kernel_set", None) != "fused":
        return (f"the compiled epoch runs the fused CPU kernels; this model is on "
                f"{backend.device} with the {getattr(backend, 'kernel_set', '?')} kernels")
    if blas.functions() is None and importlib.util.find_spec("scipy") is None:
        return ("NumPy's BLAS library was not found and SciPy is not installed: Numba's "
                "np.dot needs SciPy's BLAS (pip install scipy)")
    return None


def parallel_reason(step, batch_size: int) -> str | None:
    """Why the compiled epoch would not give ``step``'s results: its driver runs the serial
    kernels, while the Python step takes the parallel ones (whose sums are split in chunks,
    so they round otherwise) for operands of ``PARALLEL_MIN`` elements and more
    (``devnet.kernels.cpu.set_parallel_min``); None where no operand reaches it."""
    from devnet.kernels.cpu import build

    model = step.model
    largest = max(batch_size * max(model.layer_sizes), model.params.size)
    if build.PARALLEL_MIN <= largest:
        return (f"kernels go parallel from {build.PARALLEL_MIN} elements (set_parallel_min) "
                f"and this step has operands of {largest}; the compiled epoch runs serial "
                "kernels, whose sums round otherwise")
    return None


# --- the drivers' disk cache -----------------------------------------------------------------
# A driver takes seconds of Numba per plan structure. Its module is written to a file named by
# the hash of its text, of the sources of everything it inlines (the kernels, this module, the
# BLAS bindings) and of the versions of devnet, NumPy, Numba and Python, and compiled with
# Numba's cache=True: a later process loads the machine code. Where the directory cannot be
# written the driver is compiled in memory, as before, for this process only.

_CACHE = {"dir": None, "reason": None, "tag": None}


def cache_dir() -> str | None:
    """The directory of the drivers' modules (created), or None where none can be written:
    ``$DEVNET_PLAN_CACHE``, else ``$NUMBA_CACHE_DIR/devnet_plans``, else
    ``$XDG_CACHE_HOME/devnet/plans`` (``~/.cache/devnet/plans``)."""
    path = os.environ.get("DEVNET_PLAN_CACHE")
    if not path and os.environ.get("NUMBA_CACHE_DIR"):
        path = os.path.join(os.environ["NUMBA_CACHE_DIR"], "devnet_plans")
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                 ".cache")
        path = os.path.join(base, "devnet", "plans")
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()
    except OSError as exc:
        _CACHE["reason"] = f"{path} cannot be written ({exc.__class__.__name__}: {exc})"
        return None
    _CACHE["reason"] = None
    return path


def _tag() -> str:
    """What a cached driver depends on besides its own text, hashed (once per process)."""
    if _CACHE["tag"] is None:
        import platform

        import numba

        from devnet._version import __version__
        from devnet.kernels import cpu

        h = hashlib.sha256()
        h.update(repr((__version__, np.__version__, numba.__version__,
                       sys.version, platform.machine())).encode())
        kernels = os.path.dirname(os.path.dirname(os.path.abspath(cpu.__file__)))
        files = sorted(glob.glob(os.path.join(kernels, "*.py")) +  # the CUDA ones: no
                       glob.glob(os.path.join(kernels, "cpu", "*.py")))
        files += [os.path.abspath(m.__file__) for m in (sys.modules[__name__], codegen, blas)]
        for f in files:
            with open(f, "rb") as fh:
                h.update(os.path.relpath(f, kernels).encode() + b"\0" + fh.read())
        _CACHE["tag"] = h.hexdigest()
    return _CACHE["tag"]


def _module(text: str):
    """The driver module of ``text``: imported from its file in the cache directory (written
    once, atomically: processes run side by side; a new one prunes the directory), or
    executed in memory where there is no cache directory. (module namespace, its directory or
    None)."""
    where = cache_dir()
    digest = hashlib.sha256((_tag() + "\0" + text).encode()).hexdigest()[:24]
    name = f"devnet_plan_{digest}"
    if where is not None:
        path = os.path.join(where, name + ".py")
        try:
            _used(where, name)
            if _read(path) != text:  # absent (or not this text: written anew)
                prune(where, MAX_DRIVERS - 1)
                fd, tmp = tempfile.mkstemp(dir=where, prefix=f".{name}-", suffix=".tmp")
                try:
                    with os.fdopen(fd, "w") as fh:
                        fh.write(text)
                    # one modification time for every writer: Numba's cache index is
                    # stamped with the file's, so a concurrent rewrite keeps it valid
                    os.chmod(tmp, 0o644)
                    os.utime(tmp, (_STAMP, _STAMP))
                    os.replace(tmp, path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            mod = sys.modules.get(name)
            if mod is None:
                spec = importlib.util.spec_from_file_location(name, path)
                mod = importlib.util.module_from_spec(spec)
                # registered: Numba names the driver's module to find it, and a cached
                # driver's environment imports it by that name
                sys.modules[name] = mod
                try:
                    spec.loader.exec_module(mod)
                except BaseException:
                    del sys.modules[name]
                    raise
            return vars(mod), where
        except OSError as exc:
            _CACHE["reason"] = f"{where}: {exc.__class__.__name__}: {exc}"
    ns: dict = {"__name__": name}
    exec(compile(text, f"<devnet step plan {digest}>", "exec"), ns)
    return ns, None


_STAMP = 1_000_000_000.0  # the driver modules' modification time (2001-09-09)

MAX_DRIVERS = 256
"""Driver modules the disk cache keeps (with Numba's files, about 0.4 MB each): a new one
removes the least recently used beyond it. A driver is marked used when a process first
loads it (its ``.used`` file's time: the modules' own times are fixed, see ``_STAMP``)."""


def _used(where: str, name: str) -> None:
    with contextlib.suppress(OSError):
        path = os.path.join(where, name + ".used")
        with open(path, "a"):
            pass
        os.utime(path)


def prune(where: str, keep: int = MAX_DRIVERS) -> list[str]:
    """Remove the least recently used driver modules of the cache directory ``where`` beyond
    ``keep``, with their Numba files; returns the names removed. Another process may be
    loading one meanwhile: it then compiles it again, and nothing fails."""
    def last_used(name):
        try:
            return os.stat(os.path.join(where, name + ".used")).st_mtime
        except OSError:
            return 0.0

    names = sorted((os.path.basename(p)[:-3]
                    for p in glob.glob(os.path.join(where, "devnet_plan_*.py"))),
                   key=last_used, reverse=True)
    gone = names[max(keep, 0):]
    for name in gone:
        for f in [os.path.join(where, name + ".py"), os.path.join(where, name + ".used"),
                  *glob.glob(os.path.join(where, "__pycache__", name + ".*"))]:
            with contextlib.suppress(OSError):
                os.unlink(f)
    return gone


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def cache_info() -> dict:
    """The compiled drivers of this process and the disk cache: ``dir`` (None where it cannot
    be written, ``reason`` says why), ``drivers`` (how many), ``hits`` (loaded from the disk
    cache), ``misses`` (compiled here; a driver compiled in memory counts as one)."""
    hits = misses = 0
    for fn, _, _ in _DRIVERS.values():
        st = fn.stats
        hits += sum(st.cache_hits.values())
        misses += sum(st.cache_misses.values()) if st.cache_path else len(fn.signatures)
    return {"dir": _CACHE["dir"], "reason": _CACHE["reason"], "drivers": len(_DRIVERS),
            "hits": hits, "misses": misses}


def driver(plan):
    """The compiled driver of ``plan``'s structure (built on first use, or loaded from the disk
    cache; one per process)."""
    key = (plan.structure, blas.functions() is not None)
    with _LOCK:
        fn = _DRIVERS.get(key)
        if fn is None:
            from numba import njit

            from devnet.kernels.cpu.build import jit
            text, names, consts = codegen.source(plan)
            ns, where = _module(text)
            try:
                fn = (jit if where is not None else njit)(ns["driver"], nogil=True,
                                                          error_model="numpy")
            except RuntimeError as exc:  # Numba found no cache directory it can write
                _CACHE["reason"], where = f"Numba cannot cache there: {exc}", None
                fn = njit(ns["driver"], nogil=True, error_model="numpy")
            _CACHE["dir"] = where
            fn = _DRIVERS[key] = (fn, names, consts)
    return fn


_AGREE = None


def products_agree() -> bool:
    """Whether the driver's products (Numba's ``np.dot``: SciPy's BLAS) have NumPy's
    ``matmul``'s bits on this machine, over the three forms a step uses; checked once.

    True where the driver calls NumPy's own BLAS (``devnet.train.blas``); else the driver's
    ``np.dot`` calls SciPy's, and where the two builds differ the results differ by rounding
    only (a probe can show a difference, never prove there is none)."""
    global _AGREE
    if blas.functions() is not None:
        return True
    if _AGREE is None:
        from numba import njit

        @njit
        def products(a, b, g, o1, o2, o3):
            np.dot(a, b, o1)
            np.dot(a.T, g, o2)
            np.dot(g, b.T, o3)

        rng = np.random.default_rng(0)
        agree = True
        for dt in (np.float32, np.float64):
            for n, k, m in ((4, 2, 8), (33, 70, 17), (64, 128, 10)):
                a, b = rng.normal(size=(n, k)).astype(dt), rng.normal(size=(k, m)).astype(dt)
                g = rng.normal(size=(n, m)).astype(dt)
                got = (np.empty((n, m), dt), np.empty((k, m), dt), np.empty((n, k), dt))
                products(a, b, g, *got)
                agree &= all(np.array_equal(x, y) for x, y in zip(got, (a @ b, a.T @ g,
                                                                          g @ b.T)))
        _AGREE = bool(agree)
    return _AGREE


def run_compiled(plan, order, row0: int, count: int, weight: float = 1.0,
                 index: int = 0) -> None:
    """``plan_mod.run_python``'s contract, as one call of the compiled driver."""
    fn, names, consts = driver(plan)
    opt = plan.optimizer
    buffers = plan.buffers
    order = plan_mod.order_array(order, len(buffers["X"]))
    plan_mod.set_index(plan, index)
    fn(row0, count, float(weight), opt._table, order, consts,
       *(buffers[n] for n in names))
    opt._t += count
