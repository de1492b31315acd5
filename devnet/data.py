"""Datasets: the bundled ones, CSV / NPZ files, splitting, standardization, label encoding.

The loaders return ``(X, y)`` with X float64 (n, d) and y whose dtype says the task: int64
class labels for classification, float64 for regression (``devnet.task`` decides which). The
command line and the Python API share them, so a file means the same in both.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from devnet.errors import ConfigError, DataError, MissingDependencyError, lookup

#: what ``pip install`` adds scikit-learn for the bundled datasets
SKLEARN_HINT = "pip install scikit-learn (or pip install 'devnet-mlp[sklearn]')"


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError as exc:
        raise MissingDependencyError(
            f"the bundled datasets come from scikit-learn, which is not installed: "
            f"{SKLEARN_HINT} ({exc})") from None
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

#: file formats ``load_dataset`` reads, by suffix
FORMATS = (".csv", ".npz")


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled dataset by name (``DATASETS``)."""
    return lookup(DATASETS, name, "dataset")()


def fit_standardization(X) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ``(mean, scale)`` of X (n, d), float64 (d,) each; constant columns get scale 1.

    Pass only the training rows: statistics of the test rows would leak into the model.
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.dtype.kind not in "biuf":
        raise DataError(f"fit_standardization needs a numeric 2-D array (n, d) with n >= 1, got "
                        f"{X.dtype} {X.shape}")
    X = X.astype(np.float64, copy=False)
    if not np.all(np.isfinite(X)):
        raise DataError("fit_standardization: X holds NaN or Inf")
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def standardize(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (constant columns left at zero), float64; a 1-D
    array is one column."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        return standardize(a[:, None])[:, 0]
    mean, scale = fit_standardization(a)
    return (a - mean) / scale


def train_test_split(X, y, test_size: float = 0.25, seed: int | None = 0):
    """Shuffle and split; returns X_train, X_test, y_train, y_test."""
    if not 0 < test_size < 1:
        raise ConfigError(f"test_size must be in (0, 1), got {test_size!r}")
    n = len(X)
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_size)))
    test, train = order[:n_test], order[n_test:]
    return X[train], X[test], y[train], y[test]


def encode_labels(y) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, codes)``: the sorted distinct labels and y as int64 indices 0..K-1 into them.

    ``classes[codes]`` gives y back; predictions (indices) map to labels the same way.
    """
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    return classes, codes.reshape(-1).astype(np.int64)


# --- files ----------------------------------------------------------------------------------

def load_dataset(spec, target_column: int = -1, task: str = "auto", with_target: bool = True):
    """``(X, y)`` from a bundled dataset name, a ``.csv`` or a ``.npz`` file.

    X: float64 (n, d). y: int64 class labels when the task (given, or ``devnet.task.infer_task``
    for ``"auto"``) is classification, float64 for regression; None when ``with_target`` is
    False. ``target_column`` applies to CSV files only.
    """
    if isinstance(spec, str) and spec in DATASETS:
        X, y = load(spec)
        return np.asarray(X, dtype=np.float64), (_target(y, task, spec) if with_target else None)
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"dataset {spec!r}: expected a bundled name or a file path")
    path = Path(spec)
    if path.suffix not in FORMATS:
        raise ConfigError(f"dataset {str(spec)!r}: not a bundled dataset "
                          f"({', '.join(sorted(DATASETS))}) and not a {' / '.join(FORMATS)} file")
    if path.suffix == ".csv":
        return load_csv(path, target_column, task=task, with_target=with_target)
    return load_npz(path, task=task, with_target=with_target)


def _open_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} is not a regular file")
    return path


def load_csv(path, target_column: int = -1, task: str = "auto", with_target: bool = True):
    """``(X, y)`` from a numeric CSV file (comma-separated, an optional header row).

    The target is column ``target_column`` (negative counts from the end); X is the other
    columns, float64 (n, d). y as in ``load_dataset``; with ``with_target=False`` X is every
    column and y is None.
    """
    path = _open_file(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte "
                        f"{exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    header = None
    if rows and not all(_is_number(v) for v in rows[0]):
        header, rows = rows[0], rows[1:]
    if not rows:
        raise DataError(f"{path}: no data rows")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{path}: data row {i + 1} has {len(row)} values, the first has "
                            f"{width}; every row needs the same number of columns")
    if with_target:
        if width < 2:
            raise DataError(f"{path}: has {width} column; needs at least 2 (features and the "
                            "target)")
        if not isinstance(target_column, (int, np.integer)) or isinstance(target_column, bool) \
                or not -width <= target_column < width:
            raise ConfigError(f"target_column = {target_column!r} is out of range for {path}, "
                              f"which has {width} columns: valid {-width}..{width - 1}")
        col = int(target_column) % width
    else:
        col = None
    table = np.empty((len(rows), width), dtype=np.float64)
    for j in range(width):
        values = [row[j] for row in rows]
        try:
            table[:, j] = np.asarray(values, dtype=np.float64)
        except ValueError:
            bad = next(v for v in values if not _is_number(v))
            name = f" ({header[j]!r})" if header and j < len(header) else ""
            if j == col:
                raise DataError(f"{path}: the target column {j}{name} holds text labels such as "
                                f"{bad!r}; encode the labels as numbers (class labels as "
                                "integers 0..K-1)") from None
            raise DataError(f"{path}: column {j}{name} holds a non-numeric value {bad!r}; "
                            "every feature must be a number") from None
    if col is None:
        return table, None
    return np.delete(table, col, axis=1), _target(table[:, col], task, path)


def load_npz(path, task: str = "auto", with_target: bool = True):
    """``(X, y)`` from an ``.npz`` file with arrays ``X`` (n, d) and ``y`` (n,) or (n, k).

    y as in ``load_dataset`` (None when ``with_target`` is False). Never unpickles.
    """
    path = _open_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = list(z.files)
            X = z["X"] if "X" in files else None
            y = z["y"] if with_target and "y" in files else None
    except Exception as exc:  # zipfile / format / pickle errors: all mean "not a usable npz"
        raise DataError(f"{path}: not a readable .npz file of numeric arrays "
                        f"({type(exc).__name__}: {exc})") from None
    if X is None:
        raise DataError(f"{path}: an .npz needs an array named 'X' (and 'y'); it has "
                        f"{', '.join(files) or 'none'}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: X must be numeric, got dtype {X.dtype}")
    if X.ndim != 2:
        raise DataError(f"{path}: X must be 2-D (n_samples, n_features), got shape {X.shape}"
                        + ("; use X.reshape(-1, 1) for one feature" if X.ndim == 1 else ""))
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{path}: X is empty (shape {X.shape})")
    X = X.astype(np.float64)
    if not with_target:
        return X, None
    if y is None:
        raise DataError(f"{path}: no array named 'y' for the targets (it has "
                        f"{', '.join(files)})")
    if y.ndim not in (1, 2) or len(y) != len(X):
        raise DataError(f"{path}: y must have shape ({len(X)},) or ({len(X)}, k) to match X "
                        f"{X.shape}, got {y.shape}")
    return X, _target(y, task, path)


def _target(y, task: str, where) -> np.ndarray:
    """y as int64 labels (classification) or float64 (regression), the task resolved."""
    from devnet.task import infer_task

    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise DataError(f"{where}: the targets y must be numbers, got dtype {y.dtype} "
                        "(encode class labels as integers 0..K-1)")
    if y.size == 0:
        raise DataError(f"{where}: the targets y are empty")
    if not np.all(np.isfinite(y)):
        raise DataError(f"{where}: the targets y hold NaN or Inf")
    if y.ndim == 2 and y.shape[1] == 1 and task == "classification":
        y = y.reshape(-1)
    if infer_task(y, task) == "regression":
        return y.astype(np.float64)
    if y.ndim != 1 or np.any(y != np.round(y)):
        raise DataError(f"{where}: task = 'classification' needs one integer class label per "
                        f"sample, got {y.dtype} {y.shape}"
                        + ("" if y.ndim != 1 else " with fractional values"))
    return y.astype(np.int64)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
