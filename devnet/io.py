"""Checkpoints: safetensors tensors + one JSON metadata entry; atomic writes, verified reads.

File layout (a plain safetensors file, readable by any safetensors reader):

- tensors ``params`` (the model's flat parameter buffer) and ``optimizer.<name>`` (each
  optimizer state buffer), all 1-D in the model's dtype;
- ``__metadata__`` with two string entries: ``devnet`` (JSON: format name and version, the
  model's config, the optimizer's kind, hyper-parameters, schedule and step count, the History,
  the training state for exact resume: epoch, global step, shuffle RNG state, and the sha256 of
  every tensor's bytes) and ``devnet_sha256`` (the sha256 of that JSON text).

Reading parses the header ourselves (JSON only: nothing is ever executed, never pickle), then
checks the format, version, sizes and both checksums, so a truncated, bit-flipped, foreign or
future file raises a CheckpointError saying what is wrong.

Writing is atomic: the bytes go to a temporary file in the same folder, flushed and fsynced,
then ``os.replace``-d over the target and the folder is fsynced. A crash at any point leaves
the old checkpoint or the new one, never a broken one (a stray ``.<name>.*.tmp`` may remain).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from devnet.errors import CheckpointError, DeviceUnavailableError, DevnetError

FORMAT = "devnet-checkpoint"
FORMAT_VERSION = 1
_ST_DTYPES = {"F32": np.float32, "F64": np.float64}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header

# Indirection so tests can inject a fault between the write and the rename.
_replace = os.replace


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, loaded: ``model``, ``optimizer`` (or None), the History
    (or None), ``train_state`` (epoch, step, rng, ... for resume; {} if absent), ``meta``.
    """

    model: object
    optimizer: object | None
    history: object | None
    train_state: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


# --- writing --------------------------------------------------------------------------------

def save(model, path: str | os.PathLike, optimizer=None, history=None,
         train_state: dict | None = None) -> Path:
    """Write ``model`` (and optionally its optimizer, History, resume state) to ``path``.

    The write is atomic (see the module docstring). Returns the path.
    """
    from safetensors.numpy import save as st_save

    path = Path(path)
    tensors = {"params": np.ascontiguousarray(model.backend.to_numpy(model.params))}
    meta: dict = {"format": FORMAT, "format_version": FORMAT_VERSION,
                  "devnet_version": _version(), "model": model.config(), "optimizer": None,
                  "history": None, "train_state": train_state or {}}
    if optimizer is not None:
        state = optimizer.state_dict()
        for name, buf in state.pop("state").items():
            tensors[f"optimizer.{name}"] = np.ascontiguousarray(buf)
        meta["optimizer"] = state
    if history is not None:
        meta["history"] = {"history": history.history, "epoch": list(history.epoch),
                           "params": history.params}
    meta["tensors"] = {name: _tensor_digest(a) for name, a in tensors.items()}
    text = json.dumps(meta, sort_keys=True, default=_json_default)
    data = st_save(tensors, metadata={"devnet": text, "devnet_sha256": _sha(text.encode())})
    atomic_write(path, data)
    return path


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CheckpointError(f"cannot save checkpoint to {str(path)!r}: folder "
                              f"{str(folder)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not possible on every platform (Windows)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tensor_digest(a: np.ndarray) -> dict:
    return {"dtype": a.dtype.name, "shape": list(a.shape), "sha256": _sha(a.tobytes())}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _version() -> str:
    try:
        from devnet import __version__

        return __version__
    except ImportError:  # pragma: no cover - during devnet's own import
        return "unknown"


# --- reading --------------------------------------------------------------------------------

def read_metadata(path: str | os.PathLike) -> dict:
    """The verified JSON metadata of a checkpoint (no tensors are materialised)."""
    return _read(path)[0]


def load(path: str | os.PathLike, backend="auto"):
    """Load a checkpoint: returns ``(model, optimizer)``, the optimizer None if none was saved.

    ``backend`` is any device spec; a checkpoint saved on one device loads on any other.
    """
    ck = load_checkpoint(path, backend)
    return ck.model, ck.optimizer


def load_checkpoint(path: str | os.PathLike, backend="auto") -> Checkpoint:
    """Load everything in a checkpoint (model, optimizer, History, resume state)."""
    from devnet import optim
    from devnet.nn import MLP

    meta, tensors = _read(path)
    name = str(path)
    try:
        model = MLP(**meta["model"], backend=backend)
    except DeviceUnavailableError:
        raise
    except DevnetError as exc:
        raise CheckpointError(f"checkpoint {name!r}: cannot rebuild the model from its "
                              f"config {meta['model']!r}: {exc}") from None
    set_params_(model, tensors["params"], name)
    opt = None
    if meta.get("optimizer") is not None:
        state = dict(meta["optimizer"])
        prefix = "optimizer."
        state["state"] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            opt = optim.from_state_dict(model.parameters(), state)
        except (DevnetError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {name!r}: bad optimizer state: {exc}") from None
    return Checkpoint(model, opt, history_from(meta.get("history")),
                      dict(meta.get("train_state") or {}), meta)


def set_params_(model, flat: np.ndarray, name: str = "checkpoint") -> None:
    """Copy a host flat parameter vector into ``model.params`` (in place), checking its size."""
    if flat.shape != tuple(model.params.shape) or flat.dtype != model.dtype:
        raise CheckpointError(f"{name}: params have shape {flat.shape} dtype {flat.dtype}, the "
                              f"model needs {tuple(model.params.shape)} {model.dtype}")
    model.params[...] = model.backend.asarray(flat, dtype=model.dtype)


def history_from(data: dict | None):
    """A History rebuilt from the checkpoint's ``history`` entry (None stays None)."""
    if not data:
        return None
    from devnet.train import History

    h = History()
    h.history = {k: list(v) for k, v in data.get("history", {}).items()}
    h.epoch = [int(e) for e in data.get("epoch", [])]
    h.params = dict(data.get("params", {}))
    return h


def _read(path) -> tuple[dict, dict]:
    name = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {name!r}: file not found") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {name!r}: {exc}") from None
    header, data = _parse_header(raw, name)
    meta_entry = header.pop("__metadata__", None)
    if not isinstance(meta_entry, dict) or "devnet" not in meta_entry:
        raise CheckpointError(f"{name!r} is a safetensors file but not a devnet checkpoint "
                              "(no 'devnet' metadata)")
    text = meta_entry["devnet"]
    if not isinstance(text, str) or meta_entry.get("devnet_sha256") != _sha(text.encode()):
        raise CheckpointError(f"checkpoint {name!r} is corrupt: the metadata checksum does not "
                              "match (header bytes changed)")
    try:
        meta = json.loads(text)
    except ValueError as exc:  # pragma: no cover - caught by the checksum first
        raise CheckpointError(f"checkpoint {name!r}: metadata is not JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{name!r} is not a devnet checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(f"checkpoint {name!r} has format version {version!r}; this devnet "
                              f"reads versions 1 to {FORMAT_VERSION} (upgrade devnet to read "
                              "newer checkpoints)")
    for key in ("model", "tensors"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"checkpoint {name!r}: metadata lacks {key!r}")
    tensors = _tensors(header, data, meta["tensors"], name)
    return meta, tensors


def _parse_header(raw: bytes, name: str) -> tuple[dict, bytes]:
    if len(raw) < 8:
        raise CheckpointError(f"{name!r} is not a safetensors checkpoint: {len(raw)} bytes, "
                              "too short for a header (truncated or empty file)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER or 8 + n > len(raw):
        what = "truncated" if n <= _MAX_HEADER else "not a safetensors file"
        raise CheckpointError(f"{name!r} is {what}: header length {n} does not fit in "
                              f"{len(raw)} bytes")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{name!r} is not a valid safetensors checkpoint: its header is "
                              f"not JSON ({exc}); wrong format or corrupt header") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name!r} is not a valid safetensors checkpoint: header is not "
                              "a JSON object")
    return header, raw[8 + n:]


def _tensors(header: dict, data: bytes, digests: dict, name: str) -> dict:
    if set(header) != set(digests) or "params" not in header:
        raise CheckpointError(f"checkpoint {name!r} is corrupt: tensors {sorted(header)} do not "
                              f"match the metadata {sorted(digests)}")
    out = {}
    end_max = 0
    for key, info in header.items():
        try:
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"checkpoint {name!r} is corrupt: bad header entry for "
                                  f"tensor {key!r}: {info!r}") from None
        end_max = max(end_max, end)
        if end > len(data):
            raise CheckpointError(f"checkpoint {name!r} is truncated: tensor {key!r} ends at "
                                  f"byte {end} of the data section, which has {len(data)}")
        if start < 0 or end - start != dtype.itemsize * int(np.prod(shape)):
            raise CheckpointError(f"checkpoint {name!r} is corrupt: tensor {key!r} offsets "
                                  f"{start}..{end} do not match shape {shape} {dtype}")
        buf = data[start:end]
        want = digests[key]
        if want.get("dtype") != dtype.name or list(shape) != want.get("shape") \
                or want.get("sha256") != _sha(buf):
            raise CheckpointError(f"checkpoint {name!r} is corrupt: tensor {key!r} fails its "
                                  "sha256 / shape check (data bytes changed)")
        out[key] = np.frombuffer(buf, dtype=dtype).reshape(shape).copy()
    if end_max != len(data):
        raise CheckpointError(f"checkpoint {name!r} is corrupt: {len(data) - end_max} unexpected "
                              "bytes after the tensor data")
    return out


def check_architecture(meta_model: dict, model, name: str) -> None:
    """CheckpointError unless the checkpoint's model config matches ``model``'s architecture."""
    mine = model.config()
    keys = ("layer_sizes", "activation", "output_activation", "dtype", "alpha")
    diff = [f"{k}: checkpoint {meta_model.get(k)!r}, model {mine[k]!r}" for k in keys
            if meta_model.get(k) != mine[k]]
    if diff:
        raise CheckpointError(f"checkpoint {name!r} is for a different architecture ("
                              + "; ".join(diff) + ")")
