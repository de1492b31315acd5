"""Launch-cost suite: host time of devnet's CUDA launch path, launches and allocations per step.

``python -m benchmarks launch --device cuda`` (on a GPU), or with ``DEVNET_CUDA_SIMULATOR=1``
on any machine. Only the final driver call is replaced by a no-op, so the host time measured is
everything devnet, numba-cuda and cuda.core do per launch (device scope, argument checks,
parameter marshalling, cuda.core's stream and parameter handling) and nothing the GPU does:

- on a GPU, the driver's ``cuLaunchKernelEx`` itself: cuda.bindings keeps one function pointer
  per driver entry point, and each slot holding the driver's ``cuLaunchKernelEx`` is pointed at
  a machine-code ``return CUDA_SUCCESS`` for the run (cuda.core calls it from C, so no Python
  name could stand in for it);
- under the simulator, the simulated kernel's execution is stubbed (the stand-in's host path is
  not CuPy's: the host times there say little, the counts say all).

Per step (784-128-128-10, batch 256, Adam, cross-entropy: the issue's reference step) it counts
Numba launches by kernel and device allocations (CuPy's memory hooks; the stand-in's counter),
after a warm-up step, so the counts are those of every later step.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import platform
import statistics
import time
from collections import Counter
from contextlib import contextmanager

import numpy as np
from devnet.kernels import table

REFERENCE_STEP = ((784, 128, 128, 10), 256)
QUICK_STEP = ((32, 16, 16, 10), 32)
TARGETS = {"host_us_per_launch": 5.0, "launches_per_step": 9, "allocations_per_step": 0}
DRIVER_CALL = "__cuLaunchKernelEx"  # cuda.bindings' slot name for the driver's entry point
# ``return 0`` (CUDA_SUCCESS) in machine code: a stub with no cost of its own
_RETURN_ZERO = {"x86_64": bytes.fromhex("31c0c3"),  # xor eax, eax; ret
                "aarch64": bytes.fromhex("00008052c0035fd6")}  # mov w0, #0; ret


def _is_cuda(backend) -> bool:
    return getattr(backend, "name", "") == "cuda" and backend.kernels.source.endswith(".cuda")


def _writable_ranges(path):
    """(start, end) of the writable memory of the loaded library ``path`` (its .data, and its
    .bss: the anonymous mapping right after the library's own)."""
    ranges, follows = [], False  # follows: the previous mapping was the library's, writable
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else ""
            ours = "rw" in fields[1] and (
                name == path or (not name and ranges and start == ranges[-1][1] and follows))
            if ours:
                ranges.append((start, end))
            follows = ours
    return ranges


def driver_slots(value, path):
    """Addresses in library ``path``'s writable memory that hold the pointer ``value``."""
    found = []
    for start, end in _writable_ranges(path):
        words = np.frombuffer(ctypes.string_at(start, end - start), np.uint64)
        found += [start + 8 * int(i) for i in np.flatnonzero(words == np.uint64(value))]
    return found


def _return_zero():
    """(address, keep-alive) of a function returning 0."""
    code = _RETURN_ZERO.get(platform.machine())
    if code is not None:
        try:
            page = mmap.mmap(-1, mmap.PAGESIZE,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            page.write(code)
            return ctypes.addressof(ctypes.c_char.from_buffer(page)), page
        except (OSError, AttributeError, ValueError):  # no executable mappings here
            pass
    stub = ctypes.CFUNCTYPE(ctypes.c_int, *[ctypes.c_void_p] * 4)(lambda *args: 0)
    return ctypes.cast(stub, ctypes.c_void_p).value, stub


@contextmanager
def stubbed_driver_call():
    """Point cuda.bindings' ``cuLaunchKernelEx`` slot(s) at a no-op; yields how many."""
    from cuda.bindings._internal import driver as internal

    real = internal._inspect_function_pointer(DRIVER_CALL)  # loads the driver if needed
    slots = driver_slots(real, internal.__file__) if real else []
    if not slots:
        raise RuntimeError(f"cuda.bindings' {DRIVER_CALL} pointer was not found")
    address, keep = _return_zero()
    for slot in slots:
        ctypes.c_void_p.from_address(slot).value = address
    try:
        yield len(slots)
    finally:
        for slot in slots:
            ctypes.c_void_p.from_address(slot).value = real
        del keep


@contextmanager
def stubbed_driver(backend):
    """Replace only the final driver launch by a no-op (see the module docstring)."""
    if getattr(backend, "simulated", False):
        from numba.cuda.simulator import kernel as simkernel

        saved = simkernel.FakeCUDAKernel.__call__

        def no_op(self, *args):
            if self._device:  # device functions still run (they are not launches)
                return saved(self, *args)
            return None

        simkernel.FakeCUDAKernel.__call__ = no_op
        try:
            yield "simulated kernel execution"
        finally:
            simkernel.FakeCUDAKernel.__call__ = saved
        return
    with stubbed_driver_call():
        yield "the driver's cuLaunchKernelEx (cuda.bindings' pointer to it)"


@contextmanager
def count_launches():
    """Count ``devnet.kernels.cuda`` launches by kernel name."""
    from devnet.kernels.cuda import launch as kcuda

    counts: Counter = Counter()
    saved = kcuda.Kernel.__call__

    def counted(self, *args):
        counts[self.name] += 1
        return saved(self, *args)

    kcuda.Kernel.__call__ = counted
    try:
        yield counts
    finally:
        kcuda.Kernel.__call__ = saved


@contextmanager
def count_allocations(backend):
    """Count device allocations: CuPy's memory hook, or the stand-in's counter."""
    box = {"n": 0}
    if getattr(backend, "simulated", False):
        from devnet.testing import cupy_sim

        start = cupy_sim.ALLOCATIONS[0]
        try:
            yield box
        finally:
            box["n"] = cupy_sim.ALLOCATIONS[0] - start
        return
    from cupy.cuda import memory_hook

    class _Hook(memory_hook.MemoryHook):
        name = "devnet-launch-bench"

        def malloc_preprocess(self, **kwargs):
            box["n"] += 1

    with _Hook():
        yield box


def _step_fn(backend, sizes, batch, seed=0):
    import devnet as dn

    rng = np.random.default_rng(seed)
    model = dn.MLP(list(sizes), backend=backend, seed=seed)
    opt = dn.optim.Adam(model.parameters(), lr=1e-3)
    loss = dn.losses.get("cross_entropy")
    X = backend.asarray(rng.standard_normal((batch, sizes[0])), dtype=model.dtype)
    y = backend.asarray(rng.integers(0, sizes[-1], batch))
    return functools.partial(dn.train.Step(model, loss, opt), X, y)  # the step fit runs


def _host_time(fn, repeats: int) -> float:
    """Median seconds of host time per call (the driver stubbed: nothing to wait for)."""
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def _kernel_calls(backend, seed=0):
    """One call per launch kind of the reference step, on its shapes."""
    xp, k = backend.xp, backend.kernels
    rng = np.random.default_rng(seed)

    def arr(*shape):
        return backend.asarray(rng.standard_normal(shape), dtype=np.float32)

    A, b, G, dZ, db = arr(256, 128), arr(128), arr(256, 128), arr(256, 128), arr(128)
    L, g = arr(256, 10), arr(256, 10)
    labels = backend.asarray(rng.integers(0, 10, 256))
    n = 784 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
    p, pg, m, v = arr(n), arr(n), xp.zeros(n, np.float32), xp.zeros(n, np.float32)
    hyper = backend.asarray(np.array(table.hyper_values("adam_step", dict(
        lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0, bc1=0.1, bc2=0.001))))
    return {
        "bias_act_fwd": lambda: k.bias_act_fwd("relu", A, b),
        "act_bwd": lambda: k.act_bwd("relu", G, A, None, dZ, db),
        "softmax_xent": lambda: k.softmax_xent(L, labels, g, None, 1.0 / 256),
        # as training runs it: in place, its scalars in hyper
        "adam_step": lambda: k.adam_step_hyper(p, pg, m, v, None, hyper, False),
    }


def run(backend, settings, quick: bool = False, log=print) -> dict:
    """The launch suite's results (``skipped`` with the reason off the CUDA backend)."""
    if not _is_cuda(backend):
        return {"skipped": "needs the CUDA backend with its fused kernels (a GPU, or "
                           "DEVNET_CUDA_SIMULATOR=1 --device cuda)"}
    sizes, batch = QUICK_STEP if quick else REFERENCE_STEP
    repeats = 20 if quick else 200
    out = {"device": backend.device, "simulated": bool(backend.simulated),
           "step": {"sizes": list(sizes), "batch": batch, "optimizer": "adam",
                    "loss": "cross_entropy"},
           "targets": TARGETS}
    with stubbed_driver(backend) as replaced:
        out["replaced"] = replaced
        per_kernel = {}
        for name, fn in _kernel_calls(backend).items():
            fn()  # compile and cache
            per_kernel[name] = _host_time(fn, repeats) * 1e6
            log(f"  {name}: {per_kernel[name]:.1f} us host time per call")
        out["host_us_per_call"] = per_kernel
        step = _step_fn(backend, sizes, batch)
        step()  # warm-up: work buffers, compiled kernels, cached views
        with count_launches() as launches, count_allocations(backend) as allocs:
            step()
        out["launches_per_step"] = dict(sorted(launches.items()))
        out["launches_total"] = sum(launches.values())
        out["allocations_per_step"] = allocs["n"]
        out["host_us_per_step"] = _host_time(step, max(5, repeats // 10)) * 1e6
        out["host_us_per_launch_in_step"] = out["host_us_per_step"] / max(1, out["launches_total"])
    log(f"  step: {out['launches_total']} launches, {out['allocations_per_step']} allocations, "
        f"{out['host_us_per_step']:.0f} us host time ({replaced} stubbed)")
    return out
