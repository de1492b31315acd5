"""Files written whole or not at all (``atomic_write``), and read only when regular.

The bytes go to a temporary file ``.<name>.<8 random chars>.tmp`` in the same folder (created
with mode 0666 less the umask; ``<name>`` shortened when the folder's name limit needs it),
fsynced, then ``os.replace``-d over the target, and the folder is fsynced. The temporary file
holds an exclusive ``flock`` until the rename, so a later write removes only the temporary
files whose writer is gone. Every failure is a CheckpointError naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; a save never removes another file there
    fcntl = None

from devnet.errors import CheckpointError, ConfigError

# the random middle of a temporary name (ours, and tempfile.mkstemp's)
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


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring), then remove the stale
    temporary files of ``path``. A failure is a CheckpointError and leaves ``path`` untouched.
    """
    path = check_save_path(path)
    folder, started, renamed = path.parent, time.time(), False
    fd, tmp = _create_temp(folder, path.name)
    try:
        with os.fdopen(fd, "wb") as f:  # closing it releases the lock, after the rename
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            _replace(tmp, path)
            renamed = True
    except BaseException as exc:
        if not renamed:  # else the temporary name is the checkpoint now
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CheckpointError(_write_failed(path, exc, len(data))) from None
        raise
    _fsync_dir(folder)
    _remove_stale_temps(folder, path.name, started)


def check_save_path(path: str | os.PathLike) -> Path:
    """The file ``save`` would write for ``path`` (a symlink's target), or a CheckpointError for
    what is known before writing: a missing folder, a name too long, a non-file, a read-only
    file (checked before training, so that an unwritable path costs no epoch).
    """
    path = save_path(path)
    shown, folder = str(path), path.parent
    try:
        is_dir = stat.S_ISDIR(os.stat(folder).st_mode)
    except FileNotFoundError:
        is_dir = False
    except OSError as exc:  # a folder name too long, a loop of links, no permission
        raise CheckpointError(_write_failed(path, exc)) from None
    if not is_dir:
        raise CheckpointError(f"cannot save checkpoint to {shown!r}: folder "
                              f"{str(folder)!r} does not exist")
    limit = name_max(folder)
    size = len(os.fsencode(path.name))
    if size > limit:
        raise CheckpointError(f"cannot save checkpoint to {shown!r}: its file name is {size} "
                              f"bytes, over the {limit} the file system allows; use a shorter "
                              "name")
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):  # replace the link's target, not the link (a "latest" pointer)
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


def name_max(path: Path) -> int:
    """The longest file name, in bytes, on the file system of ``path`` (or its nearest existing
    folder); 255 where it cannot be asked."""
    for folder in (path, *path.parents):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no pathconf: Windows
            if folder.is_dir():
                return os.pathconf(folder, "PC_NAME_MAX")
    return _NAME_MAX


def _write_failed(path: Path, exc: OSError, size: int | None = None) -> str:
    reason = exc.strerror or str(exc)
    remedy = _WRITE_REMEDY.get(exc.errno, "check the folder's permissions and free space, "
                                          "or save elsewhere")
    if exc.errno == errno.EFBIG and size is not None:
        reason += f" (the checkpoint is {size} bytes)"
    return (f"cannot save checkpoint to {str(path)!r}: {reason}; {remedy} (a file already "
            "there is unchanged)")


def save_path(path) -> Path:
    """``path`` as a Path to write to; a ConfigError / CheckpointError if it cannot be one."""
    raw = os.fspath(path) if isinstance(path, os.PathLike) else path
    path = as_path(path, "save a checkpoint to")
    if isinstance(raw, str) and raw.endswith(("/", os.sep)):  # Path("run/") is Path("run")
        raise CheckpointError(f"cannot save checkpoint to {raw!r}: the path ends with a "
                              "separator, so it names a folder; give a file name")
    return path


def _temp_prefix(folder: Path, name: str) -> str:
    """``.<name>.``, ``name`` shortened so that the temporary name fits the folder's limit."""
    room = name_max(folder) - _TMP_EXTRA
    return f".{os.fsdecode(os.fsencode(name)[:room])}."


def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new temporary file for ``name`` in ``folder``: (fd, path), the fd holding its
    exclusive lock. Mode 0o666 less the umask, as for any file the user writes (not mkstemp's
    0600)."""
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
    """Remove ``.<name>.<8 chars>.tmp`` files last written before ``before`` whose lock is free
    (their writer is gone). Without flock none is removed."""
    if fcntl is None:
        return
    pattern = re.compile(re.escape(_temp_prefix(folder, name)) + _TMP_MIDDLE
                         + re.escape(".tmp"))
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False) \
                    and entry.stat(follow_symlinks=False).st_mtime < before:
                _remove_if_abandoned(entry.path)


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


def as_path(path, what: str) -> Path:
    if isinstance(path, (bytes, bytearray)):
        path = os.fsdecode(bytes(path))
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ConfigError(f"cannot {what} {path!r}: the path must be a non-empty str or "
                          f"os.PathLike, got {type(path).__name__}")
    return Path(path)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (where the platform can: not Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_regular_file(path: Path, name: str) -> bytes:
    # A FIFO would block forever, a device stream without end: only a regular file, checked
    # before opening and on the descriptor (O_NONBLOCK: a FIFO swapped in cannot block open).
    def check_regular(mode: int) -> None:
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"cannot read checkpoint {name!r}: it is {_file_kind(mode)}, "
                                  "not a regular file")

    try:
        check_regular(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            check_regular(os.fstat(fd).st_mode)
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {name!r}: file not found") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {name!r}: {exc}") from None
