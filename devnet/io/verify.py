"""The checkpoint format (see ``devnet.io``), and reading it back verified: ``read`` parses the
header as JSON only, checks the format, version, sizes and both checksums, then every metadata
field a hand-made file with a recomputed checksum could forge (a CheckpointError naming it).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import struct

import numpy as np

from devnet.errors import CheckpointError
from devnet.io.files import as_path, read_regular_file
from devnet.validation import is_seed

FORMAT = "devnet-checkpoint"
FORMAT_VERSION = 3  # 2: input scaling tensors and ``extra``; 3: block, norm, dropout
_ST_DTYPES = {"F32": np.float32, "F64": np.float64}
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
SCALING_TENSORS = ("input.mean", "input.scale")


def tensor_digest(a: np.ndarray) -> dict:
    return {"dtype": a.dtype.name, "shape": list(a.shape), "sha256": sha256(a.tobytes())}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def read(path) -> tuple[dict, dict]:
    """The verified ``(metadata, tensors)`` of the checkpoint at ``path`` (host arrays)."""
    path = as_path(path, "load a checkpoint from")
    name = str(path)
    raw = read_regular_file(path, name)
    header, data = _parse_header(raw, name)
    meta_entry = header.pop("__metadata__", None)
    if not isinstance(meta_entry, dict) or "devnet" not in meta_entry:
        raise CheckpointError(f"{name!r} is a safetensors file but not a devnet checkpoint "
                              "(no 'devnet' metadata)")
    text = meta_entry["devnet"]
    if not isinstance(text, str) or meta_entry.get("devnet_sha256") != sha256(text.encode()):
        raise CheckpointError(f"checkpoint {name!r} is corrupt: the metadata checksum does not "
                              "match (header bytes changed)")
    try:
        meta = json.loads(text)
    except ValueError as exc:  # a hand-made file with a recomputed checksum
        raise CheckpointError(f"checkpoint {name!r}: metadata is not JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{name!r} is not a devnet checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("format_version")
    if not _is_int(version) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(f"checkpoint {name!r} has format version {version!r}; this devnet "
                              f"reads versions 1 to {FORMAT_VERSION} (upgrade devnet to read "
                              "newer checkpoints)")
    _check_meta(meta, name)
    tensors = _tensors(header, data, meta["tensors"], name)
    return meta, tensors


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_str(value) -> bool:
    return isinstance(value, str)


# the model config's fields besides layer_sizes, and what each must be when present
_MODEL_FIELDS = {
    "activation": ("a name or a list of names",
                   lambda v: _is_str(v) or (isinstance(v, list) and all(map(_is_str, v)))),
    "output_activation": ("a string", _is_str),
    "init": ("a string", _is_str),
    "dtype": ("a string", _is_str),
    "seed": ("a non-negative integer or null", is_seed),
    "alpha": ("a number", _is_number),
    "block": ("a string", _is_str),
    "norm": ("a string or null", lambda v: v is None or _is_str(v)),
    "dropout": ("a number", _is_number),
    "dropout_seed": ("a non-negative integer or null", is_seed),
}
_MODEL_KEYS = {"layer_sizes", *_MODEL_FIELDS}
# the architecture a config without the deep-network keys (format versions 1, 2) describes
_DEEP_DEFAULTS = {"block": "plain", "norm": None, "dropout": 0.0}
_MAX_LAYER_SIZE = 2**40  # far past any real layer; keeps products exact and messages sane


def _check_meta(meta: dict, name: str) -> None:
    """CheckpointError unless every metadata field devnet reads has the right type and shape;
    fills the defaults of older format versions."""
    from devnet.nn.mlp import n_parameters

    def bad(field_name: str, why: str):
        raise CheckpointError(f"checkpoint {name!r} is malformed: {field_name} {why}")

    for key in ("model", "tensors"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"checkpoint {name!r}: metadata lacks {key!r}")
    model = meta["model"]
    unknown = set(model) - _MODEL_KEYS
    if unknown or "layer_sizes" not in model:
        bad("model config", f"has keys {sorted(model)}; expected layer_sizes and some of "
                            f"{sorted(_MODEL_KEYS - {'layer_sizes'})}")
    sizes = model["layer_sizes"]
    if not (isinstance(sizes, list) and len(sizes) >= 2
            and all(_is_int(s) and 0 < s <= _MAX_LAYER_SIZE for s in sizes)):
        bad("model.layer_sizes", f"must list at least two positive integers, got {sizes!r}")
    for key, (what, ok) in _MODEL_FIELDS.items():
        if key in model and not ok(model[key]):
            bad(f"model.{key}", f"must be {what}, got {model[key]!r}")

    digests = meta["tensors"]
    for key, digest in digests.items():
        if not (isinstance(digest, dict) and isinstance(digest.get("dtype"), str)
                and isinstance(digest.get("sha256"), str)
                and isinstance(digest.get("shape"), list)
                and all(_is_int(d) and d >= 0 for d in digest["shape"])):
            bad(f"tensors[{key!r}]", f"must give dtype, shape and sha256, got {digest!r}")
        if not (key == "params" or key.startswith("optimizer.") or key in SCALING_TENSORS):
            bad("tensors", f"lists an unknown tensor {key!r}")
    # the parameter count follows from the layer sizes: check it before building anything
    n_params = n_parameters(sizes, model.get("norm"))
    dtype = model.get("dtype", "float32")
    params = digests.get("params")
    if params is None or params["shape"] != [n_params] or params["dtype"] != dtype:
        got = None if params is None else f"shape {params['shape']} {params['dtype']}"
        bad("params", f"({got}) do not match the model config: layer_sizes {sizes} need "
                      f"{n_params} {dtype} parameters")

    if meta["format_version"] < 2:
        meta.setdefault("input_scaling", False)
        meta.setdefault("extra", {})
    scaling = meta.get("input_scaling")
    if not isinstance(scaling, bool):
        bad("input_scaling", f"must be true or false, got {scaling!r}")
    for key in SCALING_TENSORS:
        if (key in digests) != scaling:
            bad("input_scaling", f"is {scaling} but tensor {key!r} is "
                                 f"{'present' if key in digests else 'absent'}")
        if scaling and (digests[key]["shape"] != [sizes[0]] or digests[key]["dtype"] != "float64"):
            bad(f"tensors[{key!r}]", f"must be float64 of shape [{sizes[0]}] (n_in)")
    if not isinstance(meta.get("extra"), dict):
        bad("extra", f"must be a JSON object, got {meta.get('extra')!r}")

    opt = meta.setdefault("optimizer", None)
    if opt is not None:
        if not (isinstance(opt, dict) and isinstance(opt.get("name"), str)
                and _is_int(opt.get("t")) and opt["t"] >= 0
                and (_is_number(opt.get("lr")) or isinstance(opt.get("lr"), dict))
                and isinstance(opt.get("hyperparameters", {}), dict)):
            bad("optimizer", "must be null or {name: str, lr: number or schedule, "
                             f"hyperparameters: dict, t: int >= 0}}, got {opt!r}")
    elif any(k.startswith("optimizer.") for k in digests):
        bad("optimizer", "is null but optimizer state tensors are present")

    _check_history(meta.setdefault("history", None), bad)
    if meta.get("train_state") is None:
        meta["train_state"] = {}
    _check_train_state(meta["train_state"], bad)


def _check_history(hist, bad) -> None:
    if hist is None:
        return
    if not isinstance(hist, dict) or set(hist) - {"history", "epoch", "params"}:
        bad("history", f"must be null or {{history, epoch, params}}, got {_short(hist)}")
    records = hist.get("history", {})
    if not (isinstance(records, dict) and all(
            isinstance(v, list) and all(x is None or _is_number(x) for x in v)
            for v in records.values())):
        bad("history.history", f"must map names to lists of numbers, got {_short(records)}")
    epochs = hist.get("epoch", [])
    if not (isinstance(epochs, list) and all(_is_int(e) and e >= 0 for e in epochs)):
        bad("history.epoch", f"must be a list of epoch numbers, got {_short(epochs)}")
    if not isinstance(hist.get("params", {}), dict):
        bad("history.params", f"must be a dict, got {_short(hist.get('params'))}")


def _valid_rng_state(value) -> bool:
    # the one full check is NumPy's own: set it on a fresh generator of that kind
    if not (isinstance(value, dict) and isinstance(value.get("bit_generator"), str)
            and isinstance(value.get("state"), dict)):
        return False
    kind = getattr(np.random, value["bit_generator"], None)
    if not (isinstance(kind, type) and issubclass(kind, np.random.BitGenerator)):
        return False
    try:
        kind().state = value
    except Exception:  # NumPy raises ValueError, TypeError, OverflowError, KeyError, ...
        return False
    return True


_COUNT = ("an integer >= 0", lambda v: _is_int(v) and v >= 0)
_POSITIVE = ("an integer > 0", lambda v: _is_int(v) and v > 0)
# train_state keys Trainer.resume_state writes, and their types; other keys pass through
_STATE_TYPES = {
    "epoch": _COUNT,
    "step": _COUNT,
    "seed": ("an integer >= 0 or null", is_seed),
    "batch_size": _POSITIVE,
    "epochs": _POSITIVE,
    "total_steps": _POSITIVE,
    "n_samples": _COUNT,
    "shuffle": ("true or false", lambda v: isinstance(v, bool)),
    "rng": ("a NumPy bit generator state {bit_generator: str, state: {...}, ...}",
            _valid_rng_state),
    "loss": ("a loss config {name: str, ...}",
             lambda v: isinstance(v, dict) and isinstance(v.get("name"), str)),
}


def _check_train_state(state, bad) -> None:
    if not isinstance(state, dict):
        bad("train_state", f"must be a JSON object, got {_short(state)}")
    for key, (what, ok) in _STATE_TYPES.items():
        if key in state and not ok(state[key]):
            bad(f"train_state.{key}", f"must be {what}, got {_short(state[key])}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _parse_header(raw: bytes, name: str) -> tuple[dict, bytes]:
    if len(raw) < 8:
        raise CheckpointError(f"{name!r} is not a safetensors checkpoint: {len(raw)} bytes, "
                              "too short for a header (truncated or empty file)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > MAX_HEADER or 8 + n > len(raw):
        what = "truncated" if n <= MAX_HEADER else "not a safetensors file"
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
            shape = tuple(info["shape"])
            start, end = info["data_offsets"]
            if not all(_is_int(d) and d >= 0 for d in (*shape, start, end)):
                raise ValueError("negative or non-integer size")
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"checkpoint {name!r} is corrupt: bad header entry for "
                                  f"tensor {key!r}: {_short(info)}") from None
        end_max = max(end_max, end)
        if end > len(data):
            raise CheckpointError(f"checkpoint {name!r} is truncated: tensor {key!r} ends at "
                                  f"byte {end} of the data section, which has {len(data)}")
        if end - start != dtype.itemsize * math.prod(shape):
            raise CheckpointError(f"checkpoint {name!r} is corrupt: tensor {key!r} offsets "
                                  f"{start}..{end} do not match shape {shape} {dtype}")
        buf = data[start:end]
        want = digests[key]
        if want.get("dtype") != dtype.name or list(shape) != want.get("shape") \
                or want.get("sha256") != sha256(buf):
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
    keys = ("layer_sizes", "activation", "output_activation", "dtype", "alpha", "block", "norm",
            "dropout")
    theirs = {**_DEEP_DEFAULTS, **meta_model}
    diff = [f"{k}: checkpoint {theirs.get(k)!r}, model {mine[k]!r}" for k in keys
            if theirs.get(k) != mine[k]]
    if diff:
        raise CheckpointError(f"checkpoint {name!r} is for a different architecture ("
                              + "; ".join(diff) + ")")


def check_loss(saved: dict | None, loss, name: str) -> None:
    """CheckpointError unless the checkpoint's train-state ``loss`` config is ``loss``, the
    hyper-parameters it records included (resuming with another trains another objective)."""
    if not saved:
        return
    mine = loss.config()
    if saved.get("name") != mine["name"]:
        raise CheckpointError(f"checkpoint {name!r} was trained with loss {saved.get('name')!r}, "
                              f"but fit got loss {mine['name']!r}; resume with the same loss")
    params = {key: saved[key] for key in sorted(saved) if key != "name"}
    diff = [f"{key}: checkpoint {value!r}, fit {mine.get(key)!r}"
            for key, value in params.items() if value != mine.get(key)]
    if diff:
        args = "".join(f", {key}={value!r}" for key, value in params.items())
        raise CheckpointError(f"checkpoint {name!r} was trained with loss {mine['name']!r} "
                              f"with other parameters ({'; '.join(diff)}); resume with the "
                              f"checkpoint's: loss=devnet.losses.get({mine['name']!r}{args})")
