"""Weight initialisers, seeded, drawn on the host so every device starts from the same weights."""

from __future__ import annotations

import numpy as np

from devnet.errors import lookup


def he_normal(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """He / Kaiming normal: N(0, 2 / n_in). Returns float64 (n_in, n_out)."""
    return rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_in, n_out))


def he_uniform(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """He uniform: U(-sqrt(6 / n_in), +sqrt(6 / n_in))."""
    limit = np.sqrt(6.0 / n_in)
    return rng.uniform(-limit, limit, size=(n_in, n_out))


def xavier_normal(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """Glorot / Xavier normal: N(0, 2 / (n_in + n_out))."""
    return rng.normal(0.0, np.sqrt(2.0 / (n_in + n_out)), size=(n_in, n_out))


def xavier_uniform(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """Glorot / Xavier uniform: U(-sqrt(6 / (n_in + n_out)), +...)."""
    limit = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, size=(n_in, n_out))


INITIALIZERS = {
    "he": he_normal,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "xavier": xavier_normal,
    "xavier_normal": xavier_normal,
    "xavier_uniform": xavier_uniform,
    "glorot": xavier_normal,
    "glorot_normal": xavier_normal,
    "glorot_uniform": xavier_uniform,
}


def get(name: str):
    """The initialiser called ``name`` (see ``INITIALIZERS``)."""
    return lookup(INITIALIZERS, name, "initializer")
