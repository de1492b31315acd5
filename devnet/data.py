"""Bundled datasets and splitting helpers."""

from __future__ import annotations

import numpy as np

from devnet.errors import ConfigError, DeviceUnavailableError, lookup


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError as exc:
        raise DeviceUnavailableError(
            "the bundled datasets come from scikit-learn: pip install 'devnet[sklearn]' "
            f"({exc})") from None
    return datasets


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """8x8 handwritten digits (1797 samples): X float32 (n, 64) scaled to [0, 1], y int64."""
    d = _sklearn_datasets().load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def load_breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """Wisconsin breast cancer (569 samples, 30 features standardised), y int64 in {0, 1}."""
    d = _sklearn_datasets().load_breast_cancer()
    return standardize(d.data).astype(np.float32), d.target.astype(np.int64)


def load_diabetes() -> tuple[np.ndarray, np.ndarray]:
    """Diabetes regression (442 samples, 10 features), y float32 standardised."""
    d = _sklearn_datasets().load_diabetes()
    return standardize(d.data).astype(np.float32), standardize(d.target).astype(np.float32)


def make_xor() -> tuple[np.ndarray, np.ndarray]:
    """The four XOR points: X float32 (4, 2), y float32 (4, 1)."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    return X, np.array([[0], [1], [1], [0]], dtype=np.float32)


DATASETS = {"digits": load_digits, "breast_cancer": load_breast_cancer,
            "diabetes": load_diabetes, "xor": make_xor}


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled dataset by name (``DATASETS``)."""
    return lookup(DATASETS, name, "dataset")()


def standardize(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (constant columns left at zero)."""
    a = np.asarray(a, dtype=np.float64)
    std = a.std(axis=0)
    return (a - a.mean(axis=0)) / np.where(std > 0, std, 1.0)


def train_test_split(X, y, test_size: float = 0.25, seed: int | None = 0):
    """Shuffle and split; returns X_train, X_test, y_train, y_test."""
    if not 0 < test_size < 1:
        raise ConfigError(f"test_size must be in (0, 1), got {test_size!r}")
    n = len(X)
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_size)))
    test, train = order[:n_test], order[n_test:]
    return X[train], X[test], y[train], y[test]
