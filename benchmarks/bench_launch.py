"""Launch-cost suite: host time of devnet's CUDA launch path, launches and allocations per step.

``python -m benchmarks launch --device cuda`` (on a GPU), or with ``DEVNET_CUDA_SIMULATOR=1``
on any machine. Only the final driver call is replaced by a no-op, so the host time measured is
everything devnet and numba-cuda do per launch (device scope, argument checks and views,
numba-cuda's marshalling) and nothing the GPU does:

- on a GPU, cuda.core's ``launch`` (numba-cuda's last Python call before ``cuLaunchKernelEx``,
  which devnet's launch path calls directly with its own marshalled parameters) is stubbed;
- under the simulator, the simulated kernel's execution is stubbed (the stand-in's host path is
  not CuPy's: the host times there say little, the counts say all).

Per step (784-128-128-10, batch 256, Adam, cross-entropy: the issue's reference step) it counts
Numba launches by kernel and device allocations (CuPy's memory hooks; the stand-in's counter),
after a warm-up step, so the counts are those of every later step.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections import Counter
from contextlib import contextmanager

import numpy as np

REFERENCE_STEP = ((784, 128, 128, 10), 256)
QUICK_STEP = ((32, 16, 16, 10), 32)
TARGETS = {"host_us_per_launch": 5.0, "launches_per_step": 9, "allocations_per_step": 0}


def _is_cuda(backend) -> bool:
    return getattr(backend, "name", "") == "cuda" and backend.kernels.source.endswith(".cuda")


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
    from devnet.kernels import cuda as kcuda
    from numba.cuda import dispatcher

    def no_op(*args, **kwargs):
        return None

    saved = dispatcher.launch, kcuda._Driver.launch
    dispatcher.launch = no_op
    if kcuda._Driver.launch is not None:  # devnet's own path calls cuda.core's launch
        kcuda._Driver.launch = staticmethod(no_op)
    try:
        yield "cuda.core's launch (-> cuLaunchKernelEx), numba-cuda's final call"
    finally:
        dispatcher.launch, kcuda._Driver.launch = saved[0], staticmethod(saved[1]) \
            if saved[1] is not None else None


@contextmanager
def count_launches():
    """Count ``devnet.kernels.cuda`` launches by kernel name."""
    from devnet.kernels import cuda as kcuda

    counts: Counter = Counter()
    saved = kcuda._Kernel.__call__

    def counted(self, *args):
        counts[self.name] += 1
        return saved(self, *args)

    kcuda._Kernel.__call__ = counted
    try:
        yield counts
    finally:
        kcuda._Kernel.__call__ = saved


@contextmanager
def count_allocations(backend):
    """Count device allocations: CuPy's memory hook, or the stand-in's counter."""
    box = {"n": 0}
    if getattr(backend, "simulated", False):
        from devnet.backend import cupy_sim

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
    return {
        "bias_act_fwd": lambda: k.bias_act_fwd("relu", A, b),
        "act_bwd": lambda: k.act_bwd("relu", G, A, None, dZ, db),
        "softmax_xent": lambda: k.softmax_xent(L, labels, g, None, 1.0 / 256),
        "adam_step": lambda: k.adam_step(p, pg, m, v, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.1,
                                         0.001, False),
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
