"""Clocks and the measuring loop every suite shares: warm-up, then the median of many samples.

Every sample reads the clock only after the device is synchronised: on the CPU with
``time.perf_counter`` (``backend.synchronize()`` is a no-op there but is still called), on a GPU
with CUDA events recorded on the stream the work runs on (CuPy's for devnet, PyTorch's for
PyTorch). Very short calls are repeated ``number`` times inside one sample so that a sample
lasts at least ``min_sample_s``; the reported time is per call.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class Timing:
    """Per-call seconds over ``repeats`` samples of ``number`` calls each."""

    median: float
    min: float
    max: float
    repeats: int
    number: int

    def to_dict(self) -> dict:
        return asdict(self)


class HostClock:
    """perf_counter after ``sync()``: the CPU clock (and the fallback anywhere)."""

    def __init__(self, sync: Callable[[], None] = lambda: None):
        self.sync = sync

    def start(self):
        self.sync()
        return time.perf_counter()

    def stop(self, token) -> float:
        self.sync()
        return time.perf_counter() - token


class CupyEventClock:
    """CUDA events on CuPy's current stream (devnet's CUDA backend runs there)."""

    def __init__(self, cupy):
        self.cupy = cupy

    def start(self):
        self.cupy.cuda.get_current_stream().synchronize()
        ev = self.cupy.cuda.Event()
        ev.record()
        return ev

    def stop(self, token) -> float:
        end = self.cupy.cuda.Event()
        end.record()
        end.synchronize()
        return self.cupy.cuda.get_elapsed_time(token, end) / 1e3


class TorchEventClock:
    """CUDA events on PyTorch's current stream (the PyTorch CUDA peer)."""

    def __init__(self, torch):
        self.torch = torch

    def start(self):
        self.torch.cuda.synchronize()
        ev = self.torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def stop(self, token) -> float:
        end = self.torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return token.elapsed_time(end) / 1e3


def is_gpu(backend) -> bool:
    """True when the backend's arrays live on a CUDA device (its xp offers CUDA events)."""
    return hasattr(getattr(backend.xp, "cuda", None), "Event")


def clock_for(backend):
    """The clock for work queued through ``backend``: CUDA events on a GPU, else perf_counter."""
    if is_gpu(backend):
        return CupyEventClock(backend.xp)
    return HostClock(backend.synchronize)


@dataclass
class Settings:
    """How hard to measure: warm-up calls, time budget per measurement, sample bounds."""

    warmup: int = 3
    budget_s: float = 0.6
    min_repeats: int = 7
    max_repeats: int = 200
    min_sample_s: float = 1e-3
    repetitions: int = 5  # interleaved repetitions behind every graded ratio (>= 5)
    # untimed calls of a competitor before each of its interleaved blocks where the competitors
    # use different thread pools, in seconds: longer than any pool's spin-wait (``interleaved``)
    settle_s: float = 0.25

    @classmethod
    def quick(cls) -> Settings:
        return cls(warmup=1, budget_s=0.02, min_repeats=2, max_repeats=5, min_sample_s=1e-4,
                   repetitions=5, settle_s=0.0)


def measure(fn: Callable[[], object], clock, settings: Settings) -> Timing:
    """Median per-call time of ``fn()`` after warm-up (see the module docstring)."""
    for _ in range(max(1, settings.warmup)):
        fn()
    token = clock.start()
    fn()
    first = max(clock.stop(token), 1e-9)
    number = max(1, math.ceil(settings.min_sample_s / first))
    repeats = int(settings.budget_s / (first * number))
    repeats = min(settings.max_repeats, max(settings.min_repeats, repeats))
    samples = []
    for _ in range(repeats):
        token = clock.start()
        for _ in range(number):
            fn()
        samples.append(clock.stop(token) / number)
    return Timing(statistics.median(samples), min(samples), max(samples), repeats, number)


@dataclass
class Repeated:
    """Per-call medians of ``fn`` over interleaved repetitions (one Timing each)."""

    reps: list[Timing]

    @property
    def medians(self) -> list[float]:
        return [t.median for t in self.reps]

    @property
    def median(self) -> float:
        return statistics.median(self.medians)


def interleaved(fns: dict[str, tuple[Callable[[], object], object]], settings: Settings,
                repetitions: int = 5, settle_pools: bool = False) -> dict[str, Repeated]:
    """Measure every ``name: (fn, clock)`` in turn, ``repetitions`` times round.

    Interleaving puts each competitor under the same background load within a repetition, so
    the ratio of two of them is taken per repetition and its spread says how much to trust
    it. Each repetition is a ``measure`` with the budget shared out; warm-up runs once, first.

    ``settle_pools``: the competitors run on different libraries' thread pools (devnet's
    OpenBLAS against PyTorch's), so each block starts with ``settings.settle_s`` of untimed
    calls of its own function, as the competitor before it may leave its pool spinning on the
    cores. NumPy's OpenBLAS workers spin for 2**28 cycles (~0.1 s) after a product, longer than
    a block; measured on
    the 2-core VM, a PyTorch M1 step took 2.83 ms right after NumPy products and 1.74 ms
    after 0.2 s without them: unsettled, PyTorch was timed while devnet's BLAS threads still
    spun, which flattered devnet.
    """
    per = Settings(warmup=0, budget_s=settings.budget_s / max(1, repetitions),
                   min_repeats=max(2, settings.min_repeats // 2),
                   max_repeats=settings.max_repeats, min_sample_s=settings.min_sample_s)
    for fn, _ in fns.values():
        for _ in range(max(1, settings.warmup)):
            fn()
    out = {name: Repeated([]) for name in fns}
    for _ in range(repetitions):
        for name, (fn, clock) in fns.items():
            if settle_pools:
                settle(fn, clock, settings.settle_s)
            out[name].reps.append(measure(fn, clock, per))
    return out


def settle(fn: Callable[[], object], clock, seconds: float) -> None:
    """Call ``fn`` untimed for at least ``seconds`` (nothing when 0), then wait for the device:
    the other competitors' thread pools go idle and ``fn``'s own are running when timing
    starts, as in a training loop that runs one library alone."""
    if seconds <= 0:
        return
    token = clock.start()
    end = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < end:
        fn()
    clock.stop(token)


def ratio_stats(num: Repeated, den: Repeated) -> dict:
    """Per-repetition ratios num/den: their median, min, max and the list."""
    ratios = [a / b for a, b in zip(num.medians, den.medians, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "reps": ratios}


class Rotation:
    """Cycle through several input sets so that caches do not flatter repeated calls."""

    def __init__(self, items: list):
        self.items = items
        self.i = 0

    def next(self):
        item = self.items[self.i]
        self.i = (self.i + 1) % len(self.items)
        return item


def n_rotations(bytes_per_set: int, gpu: bool, cache_bytes: int = 100 << 20, cap: int = 16) -> int:
    """How many input sets a GPU run rotates through (total > ``cache_bytes``); 1 on the CPU.

    On the CPU the step's own working set is what a training loop sees on every batch (the
    weights stay cache-resident there too), so inputs are not rotated.
    """
    if not gpu:
        return 1
    return max(2, min(cap, math.ceil(cache_bytes / max(1, bytes_per_set))))
