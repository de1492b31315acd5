"""Saving and loading checkpoints: the model, its optimizer, History and resume state."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from devnet._version import __version__
from devnet.errors import CheckpointError, ConfigError, DeviceUnavailableError, DevnetError
from devnet.io.files import atomic_write, check_save_path, save_path
from devnet.io.verify import (
    FORMAT,
    FORMAT_VERSION,
    MAX_HEADER,
    SCALING_TENSORS,
    json_default,
    read,
    sha256,
    tensor_digest,
)


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``model``, ``optimizer`` and ``history`` (or None), ``train_state``
    (for resume; {} if absent), ``meta``."""

    model: object
    optimizer: object | None
    history: object | None
    train_state: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def save(model, path: str | os.PathLike, optimizer=None, history=None,
         train_state: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``model`` (its input scaling too; optionally its optimizer, History and resume
    state) atomically to ``path``; returns the path. ``extra``: a JSON-serialisable dict kept
    as ``read_metadata(path)["extra"]``."""
    from safetensors.numpy import save as st_save

    path = save_path(path)
    check_save_path(path)  # before the work of serialising
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise ConfigError(f"extra must be a dict (JSON-serialisable), got "
                          f"{type(extra).__name__}")
    if train_state is not None and not isinstance(train_state, dict):
        raise ConfigError(f"train_state must be a dict or None, got {type(train_state).__name__}")
    check_saveable(model, optimizer, history)
    tensors = {"params": np.ascontiguousarray(model.backend.to_numpy(model.params))}
    scaling = model.input_scaling
    for name, vec in zip(SCALING_TENSORS, scaling or ()):
        tensors[name] = np.ascontiguousarray(vec, dtype=np.float64)
    meta: dict = {"format": FORMAT, "format_version": FORMAT_VERSION,
                  "devnet_version": __version__, "model": model.config(), "optimizer": None,
                  "history": None, "train_state": train_state or {},
                  "input_scaling": scaling is not None, "extra": extra}
    if optimizer is not None:
        state = optimizer.state_dict()
        for name, buf in state.pop("state").items():
            tensors[f"optimizer.{name}"] = np.ascontiguousarray(buf)
        meta["optimizer"] = state
    if history is not None:
        meta["history"] = {"history": history.history, "epoch": list(history.epoch),
                           "params": history.params}
    meta["tensors"] = {name: tensor_digest(a) for name, a in tensors.items()}
    try:
        text = json.dumps(meta, sort_keys=True, default=json_default)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot save checkpoint {str(path)!r}: its metadata (extra, "
                          f"train_state or history) is not JSON-serialisable: {exc}") from None
    size = len(text.encode())
    if size > MAX_HEADER - 2**16:  # safetensors' header limit, less the index
        raise ConfigError(f"cannot save checkpoint {str(path)!r}: its metadata is {size} bytes, "
                          f"over the {MAX_HEADER >> 20} MiB a safetensors header holds; keep "
                          "big data out of extra / train_state")
    data = st_save(tensors, metadata={"devnet": text, "devnet_sha256": sha256(text.encode())})
    atomic_write(path, data)
    return path


def check_saveable(model, optimizer=None, history=None) -> None:
    """ConfigError unless ``save`` can write these and ``load`` rebuild them (checked before
    writing: a save never replaces the previous file with one that cannot be loaded)."""
    from devnet.optim import Optimizer, schedules
    from devnet.train.history import History

    if not all(hasattr(model, a) for a in ("config", "params", "backend", "input_scaling")):
        raise ConfigError(f"save takes a devnet.MLP as model, got {type(model).__name__}")
    if history is not None and not isinstance(history, History):
        raise ConfigError(f"history must be the devnet History fit returns, or None, got "
                          f"{type(history).__name__}")
    if optimizer is None:
        return
    if not isinstance(optimizer, Optimizer):
        raise ConfigError(f"optimizer must be a devnet.optim.Optimizer or None, got "
                          f"{type(optimizer).__name__}")
    data = optimizer.params.data
    if tuple(data.shape) != tuple(model.params.shape) or data.dtype != model.params.dtype:
        raise ConfigError(f"the optimizer was built over {data.dtype} parameters of shape "
                          f"{tuple(data.shape)}, but the model's are {model.params.dtype} "
                          f"{tuple(model.params.shape)}: it belongs to another model")
    if data is not model.params:  # the same shape, but another buffer: as Step refuses it
        raise ConfigError("the optimizer was built over other parameters (another model of "
                          "the same shape, or this one before model.to(...)): its state is "
                          "not this model's; save the optimizer that trains this model")
    optimizer.validate()
    if optimizer.schedule is not None:
        config = optimizer.schedule.config()
        try:
            schedules.from_config(json.loads(json.dumps(config, default=json_default)))
        except (DevnetError, TypeError, ValueError) as exc:
            raise ConfigError(f"the optimizer's schedule {optimizer.schedule!r} cannot be "
                              f"saved: a checkpoint could not rebuild it from its config "
                              f"{config!r} ({exc}); use one of devnet.optim.schedules' "
                              "schedules, or save without optimizer=") from None


def read_metadata(path: str | os.PathLike) -> dict:
    """The verified JSON metadata of a checkpoint (no tensors are materialised)."""
    return read(path)[0]


def load(path: str | os.PathLike, backend="auto"):
    """``(model, optimizer)`` of a checkpoint (optimizer None if none was saved), on
    ``backend`` (any device spec, whatever device saved it)."""
    ck = load_checkpoint(path, backend)
    return ck.model, ck.optimizer


def load_checkpoint(path: str | os.PathLike, backend="auto") -> Checkpoint:
    """Everything in a checkpoint (model with its input scaling, optimizer, History, resume
    state)."""
    from devnet import optim
    from devnet.nn import MLP

    (meta, tensors), name = read(path), str(path)
    try:
        model = MLP(**meta["model"], backend=backend)
    except DeviceUnavailableError:
        raise
    except DevnetError as exc:
        raise CheckpointError(f"checkpoint {name!r}: cannot rebuild the model from its "
                              f"config {meta['model']!r}: {exc}") from None
    flat = tensors["params"]
    if flat.shape != tuple(model.params.shape) or flat.dtype != model.dtype:
        raise CheckpointError(f"{name}: params have shape {flat.shape} dtype {flat.dtype}, the "
                              f"model needs {tuple(model.params.shape)} {model.dtype}")
    model.backend.assign(model.params, flat)
    if meta["input_scaling"]:
        try:
            model.set_input_scaling(*(tensors[k] for k in SCALING_TENSORS))
        except DevnetError as exc:
            raise CheckpointError(f"checkpoint {name!r}: bad input scaling: {exc}") from None
    opt = None
    if meta["optimizer"] is not None:
        state = dict(meta["optimizer"])
        state["state"] = {k.removeprefix("optimizer."): v for k, v in tensors.items()
                          if k.startswith("optimizer.")}
        try:
            opt = optim.from_state_dict(model.parameters(), state)
        except (DevnetError, KeyError, TypeError, ValueError, AttributeError,
                OverflowError) as exc:
            raise CheckpointError(f"checkpoint {name!r}: bad optimizer state: {exc}") from None
    return Checkpoint(model, opt, _history_from(meta["history"]), dict(meta["train_state"]),
                      meta)


def _history_from(data: dict | None):
    """A History rebuilt from the checkpoint's ``history`` entry, or None."""
    if not data:
        return None
    from devnet.train.history import History

    h = History()
    h.history = {k: list(v) for k, v in data.get("history", {}).items()}
    h.epoch = [int(e) for e in data.get("epoch", [])]
    h.params = dict(data.get("params", {}))
    h.reorder = True
    return h
