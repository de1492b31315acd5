"""Checkpoints: safetensors tensors + one JSON metadata entry; atomic writes, verified reads.

Over 400 lines: most of it is the verification of every metadata field a hand-made file could
forge (each a CheckpointError naming the field), kept next to the format it checks.

File layout (a plain safetensors file, readable by any safetensors reader):

- tensors ``params`` (the model's flat parameter buffer) and ``optimizer.<name>`` (each
  optimizer state buffer), all 1-D in the model's dtype; ``input.mean`` and ``input.scale``
  (float64, (n_in,)) when the model standardizes its inputs (format version 2 on);
- ``__metadata__`` with two string entries: ``devnet`` (JSON: format name and version, the
  model's config, the optimizer's kind, hyper-parameters, schedule and step count, the History,
  the training state for exact resume: epoch, global step, shuffle RNG state, and the sha256 of
  every tensor's bytes, ``extra``: the caller's JSON dict) and ``devnet_sha256`` (the sha256
  of that JSON text).

Reading parses the header ourselves (JSON only: nothing is ever executed, never pickle), then
checks the format, version, sizes and both checksums, then the type and structure of every
metadata field it uses (before any model is built), so a truncated, bit-flipped, foreign,
hand-edited or future file raises a CheckpointError saying what is wrong. Only regular files
are read (a FIFO would block forever).

Writing is atomic: the bytes go to a temporary file ``.<name>.<8 random chars>.tmp`` in the
same folder (created with mode 0666 less the umask, like any other file; ``<name>`` shortened
when the folder's name limit needs it), fsynced, then ``os.replace``-d over the target, and the
folder is fsynced. A crash at any point leaves the old checkpoint or the new one, never a broken
one. A save holds an exclusive ``flock`` on its temporary file until the rename, so the next
successful save of the same path removes only the temporary files whose writer is gone (a
killed save's), never those of a save still running in another thread or process: concurrent
saves to one path each land whole, the last rename wins. Every failure to write (a full disk,
a file-size limit, a name too long) is a CheckpointError naming the path and the reason.

Format versions: 1 (devnet <= 0.1: no input scaling, no ``extra``), 2 (no deep-network
options) and 3 (current: the model config records ``block``, ``norm``, ``dropout`` and, with
dropout, ``dropout_seed``; LayerNorm's gamma and beta are in ``params``) are read; a config
without those keys is a plain MLP.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import numbers
import os
import re
import secrets
import stat
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock; a save never removes another file there
    fcntl = None

from devnet._version import __version__
from devnet.errors import CheckpointError, ConfigError, DeviceUnavailableError, DevnetError

FORMAT = "devnet-checkpoint"
FORMAT_VERSION = 3  # 2: input scaling tensors and ``extra``; 3: block, norm, dropout
_ST_DTYPES = {"F32": np.float32, "F64": np.float64}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
_SCALING_TENSORS = ("input.mean", "input.scale")
# the random middle of a temporary name (ours, and tempfile.mkstemp's in older versions)
_TMP_MIDDLE = r"[a-z0-9_]{8}"
_TMP_EXTRA = len(". .12345678.tmp") - 1  # bytes a temporary name adds to the target's
_NAME_MAX = 255  # where the file system does not say (os.pathconf)
# what to do about a failed write, by errno; the default covers permissions and the rest
_WRITE_REMEDY = {
    errno.ENOSPC: "free disk space or save elsewhere",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or save to a file system that "
                 "takes files this large",
    errno.ENAMETOOLONG: "use a shorter path",
}
if hasattr(errno, "EDQUOT"):
    _WRITE_REMEDY[errno.EDQUOT] = "free space within your disk quota or save elsewhere"

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
         train_state: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``model`` (and optionally its optimizer, History, resume state) to ``path``.

    ``extra``: a JSON-serialisable dict kept as ``meta["extra"]`` (``read_metadata(path)``).
    The model's input scaling, if set, is saved too. The write is atomic (see the module
    docstring). Returns the path.
    """
    from safetensors.numpy import save as st_save

    path = _save_path(path)
    check_save_path(path)  # before the work of serialising: nothing could be written
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise ConfigError(f"extra must be a dict (JSON-serialisable), got "
                          f"{type(extra).__name__}")
    if train_state is not None and not isinstance(train_state, dict):
        raise ConfigError(f"train_state must be a dict or None, got {type(train_state).__name__}")
    check_saveable(model, optimizer, history)
    tensors = {"params": np.ascontiguousarray(model.backend.to_numpy(model.params))}
    scaling = model.input_scaling
    if scaling is not None:
        for name, vec in zip(_SCALING_TENSORS, scaling):
            tensors[name] = np.ascontiguousarray(vec, dtype=np.float64)
    meta: dict = {"format": FORMAT, "format_version": FORMAT_VERSION,
                  "devnet_version": _version(), "model": model.config(), "optimizer": None,
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
    meta["tensors"] = {name: _tensor_digest(a) for name, a in tensors.items()}
    try:
        text = json.dumps(meta, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot save checkpoint {str(path)!r}: its metadata (extra, "
                          f"train_state or history) is not JSON-serialisable: {exc}") from None
    if len(text.encode()) > _MAX_HEADER - 2**16:  # safetensors' header limit, less the index
        raise ConfigError(f"cannot save checkpoint {str(path)!r}: its metadata is "
                          f"{len(text.encode())} bytes, over the {_MAX_HEADER >> 20} MiB a "
                          "safetensors header holds; keep big data out of extra / train_state")
    data = st_save(tensors, metadata={"devnet": text, "devnet_sha256": _sha(text.encode())})
    atomic_write(path, data)
    return path


def check_saveable(model, optimizer=None, history=None) -> None:
    """ConfigError unless ``save`` can write these and ``load`` rebuild them.

    Checked before anything is written, so that a save never replaces the user's previous
    file with one that cannot be loaded: an optimizer over another model's parameters (its
    state would not fit), one whose fields were set to bad values, or a schedule
    ``from_config`` cannot rebuild (a custom Schedule subclass).
    """
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
            schedules.from_config(json.loads(json.dumps(config, default=_json_default)))
        except (DevnetError, TypeError, ValueError) as exc:
            raise ConfigError(f"the optimizer's schedule {optimizer.schedule!r} cannot be "
                              f"saved: a checkpoint could not rebuild it from its config "
                              f"{config!r} ({exc}); use one of devnet.optim.schedules' "
                              "schedules, or save without optimizer=") from None


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    In that order: write the temp file, fsync it, ``os.replace`` it over ``path``, fsync the
    folder. The file gets mode 0666 less the umask. The temp file is locked (``flock``) until
    the rename; afterwards, stale temp files of ``path`` (``.<name>.<8 chars>.tmp``, older than
    this write and locked by no one: their writer was killed) are removed. Any failure is a
    CheckpointError naming ``path``; the file that was there stays as it was.
    """
    path = check_save_path(path)
    folder = path.parent if str(path.parent) else Path(".")
    started = time.time()
    fd, tmp = _create_temp(folder, path.name)
    renamed = False
    try:
        with os.fdopen(fd, "wb") as f:  # closing it releases the lock, after the rename
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            _replace(tmp, path)
            renamed = True
    except OSError as exc:
        _unlink_quietly(tmp, renamed)
        raise CheckpointError(_write_failed(path, exc, len(data))) from None
    except BaseException:
        _unlink_quietly(tmp, renamed)
        raise
    _fsync_dir(folder)
    _remove_stale_temps(folder, path.name, started)


def check_save_path(path: str | os.PathLike) -> Path:
    """The file ``save`` would write for ``path`` (a symlink's target), or a CheckpointError
    for what can be known before writing: a missing folder, a file name longer than the
    folder allows, a path that is a folder or another non-file, a read-only file.

    ``fit(checkpoint=...)`` and ModelCheckpoint call it before the first epoch, so that a
    path no save could write costs no training.
    """
    path = _save_path(path)
    shown = str(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        is_dir = stat.S_ISDIR(os.stat(folder).st_mode)
    except FileNotFoundError:
        is_dir = False
    except OSError as exc:  # a folder name too long, a loop of links, no permission
        raise CheckpointError(_write_failed(path, exc)) from None
    if not is_dir:
        raise CheckpointError(f"cannot save checkpoint to {shown!r}: folder "
                              f"{str(folder)!r} does not exist")
    limit = _name_max(folder)
    size = len(os.fsencode(path.name))
    if size > limit:
        raise CheckpointError(f"cannot save checkpoint to {shown!r}: its file name is {size} "
                              f"bytes, over the {limit} the file system allows; use a shorter "
                              "name")
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            # replace the file the link points to, not the link (which may be the user's
            # "latest" pointer): the temporary file goes beside the target
            path = Path(os.path.realpath(path))
            mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise CheckpointError(_write_failed(path, exc)) from None
    if mode is not None and not stat.S_ISREG(mode):
        raise CheckpointError(f"cannot save checkpoint to {shown!r}: it is "
                              f"{_file_kind(mode)}, not a regular file; give a file name")
    if mode is not None and not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        # the rename would replace it whatever its mode: honour the user's protection
        raise CheckpointError(f"cannot save checkpoint to {shown!r}: the file is "
                              "read-only (no write permission); make it writable or save "
                              "elsewhere")
    return path


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or not said
        return _NAME_MAX


def _write_failed(path: Path, exc: OSError, size: int | None = None) -> str:
    reason = exc.strerror or str(exc)
    remedy = _WRITE_REMEDY.get(exc.errno, "check the folder's permissions and free space, "
                                          "or save elsewhere")
    if exc.errno == errno.EFBIG and size is not None:
        reason += f" (the checkpoint is {size} bytes)"
    return (f"cannot save checkpoint to {str(path)!r}: {reason}; {remedy} (a file already "
            "there is unchanged)")


def _unlink_quietly(tmp: str, renamed: bool) -> None:
    if renamed:  # the temporary name is the checkpoint now
        return
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _save_path(path) -> Path:
    """``path`` as a Path to write to; a ConfigError / CheckpointError if it cannot be one."""
    raw = os.fspath(path) if isinstance(path, os.PathLike) else path
    path = _as_path(path, "save a checkpoint to")
    if isinstance(raw, str) and raw.endswith(("/", os.sep)):
        # Path("run/") is Path("run"): the checkpoint would become a file named like the folder
        raise CheckpointError(f"cannot save checkpoint to {raw!r}: the path ends with a "
                              "separator, so it names a folder; give a file name")
    return path


def _temp_prefix(folder: Path, name: str) -> str:
    """``.<name>.``, ``name`` shortened so that the whole temporary name fits the folder's
    limit (a target name the folder takes must not fail for its temporary file)."""
    raw = os.fsencode(name)
    room = _name_max(folder) - _TMP_EXTRA
    return f".{os.fsdecode(raw[:room]) if len(raw) > room else name}."


def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new temporary file for ``name`` in ``folder``: (fd, path), the fd holding the file's
    exclusive lock (so that ``_remove_stale_temps`` of another save leaves it alone)."""
    # os.open with 0o666 lets the kernel apply the umask, as for any file the user writes
    # (tempfile.mkstemp would force 0600).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    prefix = _temp_prefix(folder, name)
    for _ in range(100):
        tmp = str(folder / f"{prefix}{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise CheckpointError(f"cannot save checkpoint {str(folder / name)!r}: cannot "
                                  f"create a temporary file in {str(folder)!r}: {exc}") from None
        if _lock_own(fd, tmp):
            return fd, tmp
        os.close(fd)  # another save removed it between our create and our lock: a new name
    raise CheckpointError(f"cannot save checkpoint {str(folder / name)!r}: no free temporary "
                          f"file name in {str(folder)!r}")  # pragma: no cover


def _lock_own(fd: int, tmp: str) -> bool:
    """Lock the new file ``tmp`` (open as ``fd``); False if it is no longer at ``tmp``."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a cleaner holds it only while it checks and unlinks
    except OSError:  # a file system without locks: no cleaner can lock it to remove it either
        return True
    try:
        return os.stat(tmp).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _remove_stale_temps(folder: Path, name: str, before: float) -> None:
    """Remove ``.<name>.<8 chars>.tmp`` regular files last written before ``before`` whose
    writer is gone: their lock is free (a running save holds its own until the rename).
    Without flock (Windows) none is removed: a running save's file looks the same."""
    if fcntl is None:
        return
    pattern = re.compile(re.escape(_temp_prefix(folder, name)) + _TMP_MIDDLE
                         + re.escape(".tmp"))
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and \
                    entry.stat(follow_symlinks=False).st_mtime < before:
                _remove_if_abandoned(entry.path)
        except OSError:
            pass  # gone already, or not ours to remove


def _remove_if_abandoned(tmp: str) -> None:
    fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_NONBLOCK", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a save is writing it
        # still the file we locked (not renamed away and replaced under the same name)
        if os.stat(tmp, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
            os.unlink(tmp)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def _as_path(path, what: str) -> Path:
    if isinstance(path, (bytes, bytearray)):
        path = os.fsdecode(bytes(path))
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ConfigError(f"cannot {what} {path!r}: the path must be a non-empty str or "
                          f"os.PathLike, got {type(path).__name__}")
    return Path(path)


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
    return __version__


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
    """Load everything in a checkpoint (model, optimizer, History, resume state).

    The model gets the saved input scaling back, so it predicts on raw data.
    """
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
    if meta["input_scaling"]:
        try:
            model.set_input_scaling(*(tensors[k] for k in _SCALING_TENSORS))
        except DevnetError as exc:
            raise CheckpointError(f"checkpoint {name!r}: bad input scaling: {exc}") from None
    opt = None
    if meta["optimizer"] is not None:
        state = dict(meta["optimizer"])
        prefix = "optimizer."
        state["state"] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            opt = optim.from_state_dict(model.parameters(), state)
        except (DevnetError, KeyError, TypeError, ValueError, AttributeError,
                OverflowError) as exc:
            raise CheckpointError(f"checkpoint {name!r}: bad optimizer state: {exc}") from None
    return Checkpoint(model, opt, history_from(meta["history"]), dict(meta["train_state"]),
                      meta)


def set_params_(model, flat: np.ndarray, name: str = "checkpoint") -> None:
    """Copy a host flat parameter vector into ``model.params`` (in place), checking its size."""
    if flat.shape != tuple(model.params.shape) or flat.dtype != model.dtype:
        raise CheckpointError(f"{name}: params have shape {flat.shape} dtype {flat.dtype}, the "
                              f"model needs {tuple(model.params.shape)} {model.dtype}")
    model.backend.assign(model.params, flat)


def history_from(data: dict | None):
    """A History rebuilt from the checkpoint's ``history`` entry (None stays None)."""
    if not data:
        return None
    from devnet.train.history import History

    h = History()
    h.history = {k: list(v) for k, v in data.get("history", {}).items()}
    h.epoch = [int(e) for e in data.get("epoch", [])]
    h.params = dict(data.get("params", {}))
    return h


def _read(path) -> tuple[dict, dict]:
    path = _as_path(path, "load a checkpoint from")
    name = str(path)
    raw = _read_regular_file(path, name)
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
    if not _is_int(version) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(f"checkpoint {name!r} has format version {version!r}; this devnet "
                              f"reads versions 1 to {FORMAT_VERSION} (upgrade devnet to read "
                              "newer checkpoints)")
    _check_meta(meta, name)
    tensors = _tensors(header, data, meta["tensors"], name)
    return meta, tensors


def _read_regular_file(path: Path, name: str) -> bytes:
    # A FIFO would block open() / read() forever and a device could stream without end:
    # refuse anything but a regular file, both before opening and on the opened descriptor
    # (O_NONBLOCK so that a FIFO swapped in between cannot block the open either).
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {name!r}: file not found") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {name!r}: {exc}") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"cannot read checkpoint {name!r}: it is {_file_kind(mode)}, "
                              "not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {name!r}: file not found") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {name!r}: {exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"cannot read checkpoint {name!r}: it is "
                                  f"{_file_kind(mode)}, not a regular file")
        with os.fdopen(fd, "rb") as f:
            fd = None
            return f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {name!r}: {exc}") from None
    finally:
        if fd is not None:
            os.close(fd)


# --- metadata validation: a hand-made file with a recomputed checksum gets here ----------------

_MODEL_KEYS = {"layer_sizes", "activation", "output_activation", "init", "dtype", "seed", "alpha",
               "block", "norm", "dropout", "dropout_seed"}
# the architecture a config without the deep-network keys (format versions 1, 2) describes
_DEEP_DEFAULTS = {"block": "plain", "norm": None, "dropout": 0.0}
_MAX_LAYER_SIZE = 2**40  # far past any real layer; keeps products exact and messages sane


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_meta(meta: dict, name: str) -> None:
    """CheckpointError unless every metadata field devnet reads has the right type and shape.

    Fills the defaults of older format versions (``extra``: {}, ``input_scaling``: False).
    """
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
    act = model.get("activation", "relu")
    if not (isinstance(act, str) or (isinstance(act, list)
                                     and all(isinstance(a, str) for a in act))):
        bad("model.activation", f"must be a name or a list of names, got {act!r}")
    for key in ("output_activation", "init", "dtype"):
        if key in model and not isinstance(model[key], str):
            bad(f"model.{key}", f"must be a string, got {model[key]!r}")
    if model.get("seed") is not None and not (_is_int(model["seed"]) and model["seed"] >= 0):
        bad("model.seed", f"must be a non-negative integer or null, got {model['seed']!r}")
    if "alpha" in model and not _is_number(model["alpha"]):
        bad("model.alpha", f"must be a number, got {model['alpha']!r}")
    if "block" in model and not isinstance(model["block"], str):
        bad("model.block", f"must be a string, got {model['block']!r}")
    if model.get("norm") is not None and not isinstance(model["norm"], str):
        bad("model.norm", f"must be a string or null, got {model['norm']!r}")
    if "dropout" in model and not _is_number(model["dropout"]):
        bad("model.dropout", f"must be a number, got {model['dropout']!r}")
    if model.get("dropout_seed") is not None and not (_is_int(model["dropout_seed"])
                                                      and model["dropout_seed"] >= 0):
        bad("model.dropout_seed", f"must be a non-negative integer or null, got "
                                  f"{model['dropout_seed']!r}")

    digests = meta["tensors"]
    for key, digest in digests.items():
        if not (isinstance(digest, dict) and isinstance(digest.get("dtype"), str)
                and isinstance(digest.get("sha256"), str)
                and isinstance(digest.get("shape"), list)
                and all(_is_int(d) and d >= 0 for d in digest["shape"])):
            bad(f"tensors[{key!r}]", f"must give dtype, shape and sha256, got {digest!r}")
        if not (key == "params" or key.startswith("optimizer.") or key in _SCALING_TENSORS):
            bad("tensors", f"lists an unknown tensor {key!r}")
    # the parameter count follows from the layer sizes: check it before building anything
    n_params = n_parameters(sizes, model.get("norm"))
    dtype = model.get("dtype", "float32")
    params = digests.get("params")
    if params is None or params["shape"] != [n_params] or params["dtype"] != dtype:
        got = None if params is None else f"shape {params['shape']} {params['dtype']}"
        bad("params", f"({got}) do not match the model config: layer_sizes {sizes} need "
                      f"{n_params} {dtype} parameters")

    if meta["format_version"] < 2:  # written before input scaling and extra existed
        meta.setdefault("input_scaling", False)
        meta.setdefault("extra", {})
    scaling = meta.get("input_scaling")
    if not isinstance(scaling, bool):
        bad("input_scaling", f"must be true or false, got {scaling!r}")
    for key in _SCALING_TENSORS:
        if (key in digests) != scaling:
            bad("input_scaling", f"is {scaling} but tensor {key!r} is "
                                 f"{'present' if key in digests else 'absent'}")
        if scaling and (digests[key]["shape"] != [sizes[0]] or digests[key]["dtype"] != "float64"):
            bad(f"tensors[{key!r}]", f"must be float64 of shape [{sizes[0]}] (n_in)")
    if not isinstance(meta.get("extra"), dict):
        bad("extra", f"must be a JSON object, got {meta.get('extra')!r}")

    opt = meta.get("optimizer")
    if opt is not None:
        if not (isinstance(opt, dict) and isinstance(opt.get("name"), str)
                and _is_int(opt.get("t")) and opt["t"] >= 0
                and (_is_number(opt.get("lr")) or isinstance(opt.get("lr"), dict))
                and isinstance(opt.get("hyperparameters", {}), dict)):
            bad("optimizer", "must be null or {name: str, lr: number or schedule, "
                             f"hyperparameters: dict, t: int >= 0}}, got {opt!r}")
    elif any(k.startswith("optimizer.") for k in digests):
        bad("optimizer", "is null but optimizer state tensors are present")
    meta["optimizer"] = opt

    _check_history(meta.get("history"), bad)
    meta["history"] = meta.get("history")
    state = meta.get("train_state")
    if state is None:
        state = meta["train_state"] = {}
    _check_train_state(state, bad)


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


# train_state keys devnet itself writes (Trainer.resume_state) and the types they must have;
# other keys pass through for their readers to check
_STATE_TYPES = {
    "epoch": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "step": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "seed": ("an integer >= 0 or null", lambda v: v is None or (_is_int(v) and v >= 0)),
    "batch_size": ("an integer > 0", lambda v: _is_int(v) and v > 0),
    "epochs": ("an integer > 0", lambda v: _is_int(v) and v > 0),
    "total_steps": ("an integer > 0", lambda v: _is_int(v) and v > 0),
    "n_samples": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "shuffle": ("true or false", lambda v: isinstance(v, bool)),
    "rng": ("a NumPy bit generator state {bit_generator: str, state: {...}, ...}",
            lambda v: _valid_rng_state(v)),
    "loss": ("a loss config {name: str, ...}",
             lambda v: isinstance(v, dict) and isinstance(v.get("name"), str)),
}


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
    keys = ("layer_sizes", "activation", "output_activation", "dtype", "alpha", "block", "norm",
            "dropout")
    theirs = {**_DEEP_DEFAULTS, **meta_model}
    diff = [f"{k}: checkpoint {theirs.get(k)!r}, model {mine[k]!r}" for k in keys
            if theirs.get(k) != mine[k]]
    if diff:
        raise CheckpointError(f"checkpoint {name!r} is for a different architecture ("
                              + "; ".join(diff) + ")")


def check_loss(saved: dict | None, loss, name: str) -> None:
    """CheckpointError unless the loss a checkpoint was trained with (its train state's
    ``loss`` config: name and hyper-parameters) is ``loss``: resuming with another loss, or
    the same one with another hyper-parameter (huber's delta), would train another objective.

    A hyper-parameter the checkpoint does not record (written before it existed) is not
    compared.
    """
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
