"""Datasets: the bundled ones, CSV / NPZ files, splitting, standardization, label encoding.

The loaders return ``(X, y)``: X float32 (n, d) (``dtype="float64"`` keeps every digit), y
int64 class labels for classification or X's dtype for regression (``devnet.task`` decides).
Files are parsed in float64 and cast once. The CLI and the Python API share them.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from devnet import validation
from devnet.errors import ConfigError, DataError, MissingDependencyError, lookup, warn
from devnet.task import infer_task


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError as exc:
        raise MissingDependencyError(
            "the bundled datasets come from scikit-learn, which is not installed: pip install "
            f"scikit-learn (or pip install 'devnet-mlp[sklearn]') ({exc})") from None
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
    """Per-column ``(mean, scale)`` of X (n, d), float64 (d,) each (a constant column's scale
    is 1). Pass only the training rows: the test rows' statistics would leak into the model."""
    X = _array("fit_standardization: X", X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise DataError(f"fit_standardization needs a numeric 2-D array (n, d) with n >= 1, got "
                        f"{X.dtype} {X.shape}")
    X = X.astype(np.float64, copy=False)
    if not np.all(np.isfinite(X)):
        raise DataError("fit_standardization: X holds NaN or Inf")
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = X.mean(axis=0), X.std(axis=0)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        # values near float64's limit overflow the sums: the same statistics of X / peak
        peak = np.abs(X).max(axis=0)
        peak = np.where(peak > 0, peak, 1.0)
        mean, std = (X / peak).mean(axis=0) * peak, (X / peak).std(axis=0) * peak
    return mean, np.where(std > 0, std, 1.0)


def standardize(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (constant columns left at zero), float64; a 1-D
    array is one column."""
    a = _array("standardize: a", a).astype(np.float64)
    if a.ndim == 1:
        return standardize(a[:, None])[:, 0]
    mean, scale = fit_standardization(a)
    with np.errstate(over="ignore", invalid="ignore"):
        out = (a - mean) / scale
        if not np.all(np.isfinite(out)):  # a - mean overflowed: scale first
            out = a / scale - mean / scale
    if not np.all(np.isfinite(out)):
        raise DataError("standardize: the values are too large to standardize in float64")
    return out


def _array(name: str, a) -> np.ndarray:
    """``a`` as a numeric NumPy array, or a DataError (strings, ragged lists, None)."""
    try:
        arr = np.asarray(a)
    except ValueError as exc:
        raise DataError(f"{name} could not be read as a numeric array (ragged rows?): "
                        f"{exc}") from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name} must be numeric, got {arr.dtype} {arr.shape}")
    return arr


def train_test_split(X, y, test_size: float = 0.25, seed: int | None = 0):
    """Shuffle and split X and y (same number of rows, at least two); returns X_train, X_test,
    y_train, y_test. ``round(n * test_size)`` rows go to the test part; each part gets >= 1."""
    test_size = validation.fraction("test_size", test_size)
    seed = validation.seed("seed", seed)
    X, y = (np.asarray(a) if not hasattr(a, "shape") and a is not None else a for a in (X, y))
    for name, a in (("X", X), ("y", y)):
        if a is None or a.ndim == 0:
            raise DataError(f"train_test_split: {name} must be an array with one row per "
                            f"sample, got {a if a is None else 'a scalar'}")
    n = len(X)
    if n == 0:
        raise DataError("train_test_split: X has no samples")
    if len(y) != n:
        raise DataError(f"train_test_split: X has {n} rows but y has {len(y)}; they must match")
    n_test = max(1, int(round(n * test_size)))
    if n_test >= n:
        raise DataError(f"train_test_split: test_size = {test_size} of {n} sample(s) leaves "
                        f"{n - n_test} for training; each part needs at least one (use a "
                        "smaller test_size, or no split)")
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return X[train], X[test], y[train], y[test]


def encode_labels(y) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, codes)``: the sorted distinct labels and y as int64 indices 0..K-1 into them
    (``classes[codes]`` gives y back)."""
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.dtype.kind not in "biufUS":
        raise DataError(f"encode_labels needs a 1-D array of labels (numbers or strings), got "
                        f"{arr.dtype} {arr.shape}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise DataError("encode_labels: the labels hold NaN or Inf, which is no class")
    classes, codes = np.unique(arr, return_inverse=True)
    return classes, codes.reshape(-1).astype(np.int64)


# --- files ----------------------------------------------------------------------------------

class DataWarning(UserWarning):
    """A data file was read with a change worth knowing (a pandas index column dropped)."""


def _cast(a: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """Float64 ``a`` as ``dtype``, or a DataError where a value lies beyond its range."""
    if dtype == a.dtype:
        return a
    big = np.abs(a) > np.finfo(dtype).max
    if big.any():
        at = tuple(int(i) for i in np.argwhere(big)[0])
        raise DataError(f"{what} holds {a[at]:g}, beyond the range of {dtype.name} (up to "
                        f"{np.finfo(dtype).max:.3g}); pass dtype='float64' (model.dtype = "
                        "\"float64\" in run.toml) or scale the values")
    return a.astype(dtype)


def load_dataset(spec, target_column: int | str = -1, task: str = "auto",
                 with_target: bool = True, header: bool | None = None, dtype="float32",
                 columns=None):
    """``(X, y)`` from a bundled dataset name, a ``.csv`` or a ``.npz`` file.

    X: (n, d) of ``dtype`` (float32 or float64). y: int64 class labels when the task (given, or
    ``devnet.task.infer_task``) is classification, ``dtype`` for regression; None when
    ``with_target`` is False. ``target_column``, ``header`` and ``columns``: see ``load_csv``.
    """
    dtype = validation.float_dtype("dtype", dtype)
    if columns is not None and not str(spec).lower().endswith(".csv"):
        raise ConfigError(f"columns = {columns!r} selects CSV columns by name; {str(spec)!r} "
                          "is no .csv file (leave columns out)")
    if isinstance(spec, str) and spec in DATASETS:
        X, y = load(spec)
        X = _cast(np.asarray(X, dtype=np.float64), dtype, f"dataset {spec!r}: X")
        return X, (_target(y, task, spec, dtype) if with_target else None)
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"dataset {spec!r}: expected a bundled name or a file path")
    path = Path(spec)
    if path.suffix not in FORMATS:
        raise ConfigError(f"dataset {str(spec)!r}: not a bundled dataset "
                          f"({', '.join(sorted(DATASETS))}) and not a {' / '.join(FORMATS)} file")
    if path.suffix == ".csv":
        return load_csv(path, target_column, task=task, with_target=with_target,
                        header=header, dtype=dtype, columns=columns)
    return load_npz(path, task=task, with_target=with_target, dtype=dtype)


def _open_file(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"data file path must be a str or os.PathLike, got {path!r} "
                          f"({type(path).__name__})")
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} is not a regular file")
    return path


def _cell_kind(text: str) -> str:
    """"number" (finite), "nonfinite" (nan, inf, 1e400) or "text"."""
    try:
        value = float(text)
    except ValueError:
        return "text"
    return "number" if np.isfinite(value) else "nonfinite"


def _read_rows(path: Path) -> tuple[list[list[str]], list[int]]:
    """The non-blank rows of a CSV file and the line each ends on; a BOM is dropped."""
    rows, lines = [], []
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first cell
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            for row in reader:
                if row and not (len(row) == 1 and not row[0].strip()):  # blank line
                    rows.append(row)
                    lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte "
                        f"{exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    return rows, lines


def _split_header(path: Path, rows: list, lines: list, header) -> list[str] | None:
    """The header names (removed from ``rows`` / ``lines``), or None when there is none.

    ``header=None`` decides by the first row: names only is a header, numbers only is data;
    both is refused (as a header it would silently drop a data row with one bad cell).
    """
    if header is not None and not isinstance(header, (bool, np.bool_)):
        raise ConfigError(f"header must be True, False or None (decide by the first row), "
                          f"got {header!r}")
    if not rows or header is False:
        return None
    if header is None:
        kinds = [_cell_kind(v) for v in rows[0]]
        if "text" not in kinds:
            return None
        if "number" in kinds:
            text = [j for j, k in enumerate(kinds) if k == "text"]
            if len(rows) > 1 and len(rows[1]) == len(kinds) and all(
                    _cell_kind(rows[1][j]) == "text" for j in text):
                return None  # a column of text (labels?) in every row: data, said later
            # pandas' to_csv() of unnamed columns (",0,1,2" above an index 0..n-1): a header
            if not (text == [0] and not rows[0][0].strip() and _is_range_index(rows[1:])):
                j = text[0]
                cell = "an empty cell" if not rows[0][j].strip() else repr(rows[0][j])
                raise DataError(f"{path}, line {lines[0]}: the first row mixes numbers and "
                                f"text ({cell} in column {j + 1}): a header row holds only "
                                "column names, a data row only numbers; fix the cell, or pass "
                                "header=True (data.header = true) if it is a header")
    names = [v.strip() for v in rows[0]]
    del rows[0], lines[0]
    return names


def _is_range_index(rows: list[list[str]]) -> bool:
    """Whether the first cells of ``rows`` read 0, 1, ..., len(rows) - 1 (pandas' index)."""
    return bool(rows) and all(row and row[0].strip() == str(i) for i, row in enumerate(rows))


def _read_table(path: Path, header) -> tuple[list, list, list[str] | None, int]:
    """``(rows, lines, names, skipped)``: a CSV file's data rows (all of one width), the line
    each ends on, the header names (or None) and the leading columns dropped (pandas' index)."""
    rows, lines = _read_rows(path)
    header_line = lines[0] if lines else 1
    names = _split_header(path, rows, lines, header)
    if not rows:
        raise DataError(f"{path}: no data rows" + (" (only a header)" if names else ""))
    width = len(rows[0])
    for i, (row, line) in enumerate(zip(rows, lines)):
        if len(row) != width:
            raise DataError(f"{path}, line {line}: data row {i + 1} has "
                            f"{len(row)} values, the first has {width}; every row needs the "
                            "same number of columns")
    if names is not None and len(names) != width:
        raise DataError(f"{path}: the header has {len(names)} names but the rows have {width} "
                        "values; every column needs one name")
    skipped = 0
    if names is not None and width > 1 and not names[0] and _is_range_index(rows):
        warn(f"{path}: dropped column 1, which has no name and holds 0..{len(rows) - 1}"
             ": the index pandas' to_csv() writes (to_csv(index=False) leaves it out)",
             DataWarning)
        rows = [row[1:] for row in rows]
        names, skipped = names[1:], 1
    if names is not None and "" in names:
        j = names.index("")
        hint = (": pandas writes its index this way; write the file with to_csv(index=False)"
                if j == 0 and not skipped else "")
        raise DataError(f"{path}, line {header_line}: column "
                        f"{j + 1 + skipped} of the header row has no name; every column needs "
                        f"one (columns are matched by name){hint}")
    return rows, lines, names, skipped


def csv_columns(path, header: bool | None = None) -> list[str] | None:
    """The column names of a CSV file as ``load_csv`` reads it (pandas' index column left
    out), or None when the file has no header row."""
    return _read_table(_open_file(path), header)[2]


def column_index(target_column, names: list[str] | None, width: int, where) -> int:
    """``target_column`` (an index, negative from the end, or a header name) as 0..width-1."""
    if validation.is_int(target_column):
        if not -width <= target_column < width:
            raise ConfigError(f"target_column = {target_column!r} is out of range for {where}, "
                              f"which has {width} columns: valid {-width}..{width - 1}"
                              + (f" or a column name ({_names(names)})" if names else ""))
        return int(target_column) % width
    if not isinstance(target_column, str):
        raise ConfigError(f"target_column must be a column index (int) or a header name (str), "
                          f"got {target_column!r} ({type(target_column).__name__})")
    if names is None:
        raise ConfigError(f"target_column = {target_column!r} names a column, but {where} has "
                          f"no header row; give an index {-width}..{width - 1}")
    found = [j for j, name in enumerate(names) if name == target_column.strip()]
    if not found:
        raise ConfigError(f"target_column = {target_column!r} is not a column of {where}; "
                          f"valid names: {_names(names)}")
    if len(found) > 1:
        raise ConfigError(f"target_column = {target_column!r} is ambiguous: {where} has "
                          f"{len(found)} columns of that name (columns "
                          f"{', '.join(str(j + 1) for j in found)}); give the column's index "
                          f"instead (target_column = {found[0]} for the first: indices count "
                          "from 0)")
    return found[0]


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")


def load_csv(path, target_column: int | str = -1, task: str = "auto", with_target: bool = True,
             header: bool | None = None, dtype="float32", columns=None):
    """``(X, y)`` from a numeric CSV file (comma-separated, an optional header row).

    The target is column ``target_column``: an index (negative counts from the end) or a
    header name. X is the other columns, (n, d) of ``dtype`` (float32 or float64; a value
    beyond its range is a DataError); y as in ``load_dataset``; with ``with_target=False`` X
    is every column and y is None. ``columns``: header names of the columns X takes, in that
    order. ``header``: None decides by the first row (all names: a header; all numbers: data;
    both: a DataError), True / False say.

    Every cell must be a finite number (else a DataError naming its line and column, from 1).
    A first column without a name holding exactly 0..n-1 (pandas' ``to_csv()`` index) is
    dropped with a ``DataWarning``; any other column without a name is a DataError.
    """
    dtype = validation.float_dtype("dtype", dtype)
    path = _open_file(path)
    rows, lines, names, skipped = _read_table(path, header)
    width = len(rows[0])
    col = None
    if with_target:
        if width < 2:
            hint = next((f"; the file looks {sep!r}-separated, devnet reads commas"
                         for sep in (";", "\t", "|") if sep in rows[0][0]), "")
            raise DataError(f"{path}: has {width} column; needs at least 2 (features and the "
                            f"target){hint}")
        col = column_index(target_column, names, width, path)
    picked = ([j for j in range(width) if j != col] if columns is None
              else _pick_columns(columns, names, col, path))

    def cell(j: int) -> str:  # a column as the file numbers it (from 1) and its name
        return f"column {j + 1 + skipped}" + (f" ({names[j]!r})" if names else "")

    table = np.empty((len(rows), width), dtype=np.float64)
    for j in range(width):
        values = [row[j] for row in rows]
        try:
            table[:, j] = np.asarray(values, dtype=np.float64)
        except ValueError:
            i = next(i for i, v in enumerate(values) if _cell_kind(v) == "text")
            where = f"{path}, line {lines[i]}"
            if not values[i].strip():
                raise DataError(f"{where}: {cell(j)} is empty; every cell must be a "
                                "number (devnet does not impute missing values)") from None
            if j == col:
                raise DataError(f"{where}: the target {cell(j)} holds text labels such "
                                f"as {values[i]!r}; encode the labels as numbers (class labels "
                                "as integers 0..K-1)") from None
            raise DataError(f"{where}: {cell(j)} holds a non-numeric value "
                            f"{values[i]!r}; every feature must be a number") from None
        bad = ~np.isfinite(table[:, j])
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}, line {lines[i]}: {cell(j)} holds {values[i]!r}, "
                            f"which is not a finite number ({int(bad.sum())} such cell(s) in the "
                            "column); drop or fill those rows (devnet does not impute missing "
                            "values)")
        big = np.abs(table[:, j]) > np.finfo(dtype).max  # would become inf in dtype
        if j != col and big.any():
            i = int(np.argmax(big))
            _cast(table[i:i + 1, j], dtype, f"{path}, line {lines[i]}: {cell(j)}")
    X = table[:, picked].astype(dtype)
    if col is None:
        return X, None
    return X, _target(table[:, col], task, path, dtype)


def _pick_columns(columns, names, col, path) -> list[int]:
    """The indices of the header names ``columns`` (in that order), or a ConfigError."""
    if isinstance(columns, str) or not isinstance(columns, (list, tuple)) or not all(
            isinstance(c, str) for c in columns):
        raise ConfigError(f"columns must be a list of column names (str), got {columns!r}")
    if names is None:
        raise ConfigError(f"columns = {_names(list(columns))} names columns, but {path} has no "
                          "header row")
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{path} has no column named {_names(missing)}; it has "
                        f"{_names(names)}")
    for c in columns:
        if names.count(c) > 1:
            raise DataError(f"{path}: {names.count(c)} columns are named {c!r}; a column "
                            "picked by name needs a name of its own")
        if col is not None and names.index(c) == col:
            raise ConfigError(f"columns: {c!r} is the target column; X cannot hold it")
    if len(set(columns)) != len(columns):
        raise ConfigError(f"columns = {_names(list(columns))} names a column twice")
    return [names.index(c) for c in columns]


def load_npz(path, task: str = "auto", with_target: bool = True, dtype="float32"):
    """``(X, y)`` from an ``.npz`` file with arrays ``X`` (n, d) and ``y`` (n,) or (n, k): X as
    ``dtype``, y as in ``load_dataset`` (None when ``with_target`` is False). Never unpickles."""
    dtype = validation.float_dtype("dtype", dtype)
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
    X = _exact_float64(X, f"{path}: X")
    bad = ~np.isfinite(X)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{path}: X holds {int(bad.sum())} NaN/Inf value(s), first at X{list(at)}"
                        "; drop or fill them (devnet does not impute missing values)")
    X = _cast(X, dtype, f"{path}: X")
    if not with_target:
        return X, None
    if y is None:
        raise DataError(f"{path}: no array named 'y' for the targets (it has "
                        f"{', '.join(files)})")
    if y.ndim not in (1, 2) or len(y) != len(X):
        raise DataError(f"{path}: y must have shape ({len(X)},) or ({len(X)}, k) to match X "
                        f"{X.shape}, got {y.shape}")
    return X, _target(y, task, path, dtype)


def _target(y, task: str, where, dtype: np.dtype) -> np.ndarray:
    """y as int64 labels (classification) or ``dtype`` (regression), the task resolved on the
    values as read (float64), before any cast."""
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
        return _cast(y.astype(np.float64), dtype, f"{where}: the target")
    if y.ndim != 1 or np.any(y != np.round(y)):
        raise DataError(f"{where}: task = 'classification' needs one integer class label per "
                        f"sample, got {y.dtype} {y.shape}"
                        + ("" if y.ndim != 1 else " with fractional values"))
    # int64 labels: from 2**53 on a float label may be a rounded neighbour of the one in the
    # file (...993 reads as ...992), and a cast would wrap 1e20 or a large uint64 to another
    # (negative) class
    limit = 2**53 - 1 if y.dtype.kind == "f" else np.iinfo(np.int64).max
    if y.dtype.kind in "fu" and float(np.abs(y.astype(np.float64)).max()) > limit:
        raise DataError(f"{where}: class label {y[np.argmax(np.abs(y))].item()!r} is too large; "
                        f"class labels must be integers of magnitude <= {limit} (encode them "
                        "as 0..K-1)")
    return y.astype(np.int64)


def _exact_float64(a: np.ndarray, name: str) -> np.ndarray:
    """Integer or bool ``a`` as float64, or a DataError if an integer is beyond 2**53."""
    peak = max(abs(int(a.min())), abs(int(a.max()))) if a.dtype.kind in "iu" and a.size else 0
    if peak > 2**53:
        raise DataError(f"{name} holds integers beyond 2**53 ({peak}), which "
                        "float64 cannot represent exactly; scale or convert them yourself")
    return a.astype(np.float64)
