"""How the command reads a run's data: a CSV's header and column names, the loaders' notes,
and the fingerprint of the file a train/test split is drawn from."""

from __future__ import annotations

import contextlib
import hashlib
import sys
import warnings

import numpy as np

from devnet import data as data_mod
from devnet.data import DataWarning


def csv_header(data_cfg: dict):
    """data.header as ``load_csv`` takes it: None ("auto"), True or False."""
    header = data_cfg.get("header", "auto")
    return None if header == "auto" else header


@contextlib.contextmanager
def data_notes(show: bool = True):
    """Shows the loaders' ``DataWarning``s as ``devnet: note:`` lines on stderr, each once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        yield
    seen = set()
    for w in caught:
        if not issubclass(w.category, DataWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif show and str(w.message) not in seen:
            seen.add(str(w.message))
            print(f"devnet: note: {w.message}", file=sys.stderr)


def column_names(spec: str, target_column, header) -> tuple[list[str] | None, str | None]:
    """``(feature_names, target_name)`` of a CSV with a header row, else ``(None, None)``;
    feature names None when some repeat (eval / predict then match by position)."""
    if not str(spec).lower().endswith(".csv"):
        return None, None
    names = data_mod.csv_columns(spec, header=header)
    if names is None:
        return None, None
    col = data_mod.column_index(target_column, names, len(names), spec)
    features = names[:col] + names[col + 1:]
    return (features if len(set(features)) == len(features) else None), names[col]


def shown_names(names: list[str], limit: int = 6, head: int = 3) -> str:
    """``names`` joined by commas; past ``limit`` of them, the first ``head`` and the count."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:head]) + f", ... ({len(names)})"


def split_source(spec: str, X: np.ndarray) -> dict:
    """The row count and a sha256 of the data file's bytes (of a bundled dataset's features):
    whether the run's split still picks the rows it held out."""
    digest = hashlib.sha256()
    if spec in data_mod.DATASETS:  # float64 for every dtype (float32 values: exact)
        X = np.ascontiguousarray(X, dtype=np.float64)
        digest.update(f"{X.dtype.str} {X.shape}".encode())
        digest.update(X.tobytes())
    else:
        with open(spec, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return {"rows": len(X), "sha256": digest.hexdigest()}
