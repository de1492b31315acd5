"""A small float64 model, its classification data, and a user's schedule."""

from __future__ import annotations

import devnet as dn
from devnet.optim import schedules


def small_model(rng, sizes=(4, 6, 3), dtype="float64"):
    """An MLP of ``sizes`` on the CPU, seeded from ``rng``."""
    return dn.MLP(list(sizes), backend="cpu", dtype=dtype, seed=int(rng.integers(1 << 30)))


def class_data(rng, n=24, n_in=4, k=3):
    """``n`` random rows of ``n_in`` features and labels in ``[0, k)``."""
    return rng.standard_normal((n, n_in)), rng.integers(0, k, n)


class Curve(schedules.Schedule):
    """A user's schedule: whatever ``fn`` returns."""

    name = "curve"

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, step):
        return self.fn(step)
