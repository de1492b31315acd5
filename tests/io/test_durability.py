"""Checkpoint durability: ``dn.save`` writes, fsyncs the file, renames, then fsyncs the folder.

The OS calls are intercepted (``os.open``, ``os.write``, ``os.fsync``, ``os.replace`` and
``devnet.io.files._replace``) and logged in order; a crash between any two of them must leave
either the old checkpoint or the complete new one. The order check itself is tested: without the
folder fsync (the rename is then not durable) or the file fsync it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import devnet as dn
from devnet.io import files as dio


class OsLog:
    """Records the file-system calls of a save, in order, with the path each fd stands for."""

    def __init__(self, monkeypatch):
        self.events: list[tuple] = []
        self.fd_path: dict[int, str] = {}
        real_open, real_write, real_fsync = os.open, os.write, os.fsync
        real_replace, io_replace = os.replace, dio._replace

        def open_(path, flags, mode=0o777, *args, **kwargs):
            fd = real_open(path, flags, mode, *args, **kwargs)
            self.fd_path[fd] = os.path.abspath(os.fspath(path))
            self.events.append(("open", self.fd_path[fd]))
            return fd

        def write(fd, data):
            n = real_write(fd, data)
            self.events.append(("write", self.fd_path.get(fd), n))
            return n

        def fsync(fd):
            path = self.fd_path.get(fd)
            if path is None:  # an fd opened another way (os.fdopen of a mkstemp fd, ...)
                path = os.path.realpath(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").is_dir() \
                    else None
            real_fsync(fd)
            content = Path(path).read_bytes() if path and os.path.isfile(path) else None
            self.events.append(("fsync", path, content))

        def logged_replace(real):
            def replace(src, dst, *args, **kwargs):
                real(src, dst, *args, **kwargs)
                self.events.append(("rename", os.path.abspath(os.fspath(src)),
                                    os.path.abspath(os.fspath(dst))))
            return replace

        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)
        # io binds os.replace at import as _replace (tests patch it to simulate crashes): log
        # both names, and one rename is logged once whichever the code calls
        monkeypatch.setattr(os, "replace", logged_replace(real_replace))
        monkeypatch.setattr(dio, "_replace", logged_replace(io_replace))


def check_durable_order(events: list[tuple], target: Path) -> None:
    """write -> fsync(file, complete) -> rename(file -> target) -> fsync(target's folder)."""
    target = os.path.abspath(target)
    final = Path(target).read_bytes()
    renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == target]
    assert len(renames) == 1, f"expected one rename onto {target}, got {events}"
    r = renames[0]
    tmp = events[r][1]
    assert os.path.dirname(tmp) == os.path.dirname(target), \
        "the temporary file must be in the target's folder (a rename across folders is a copy)"
    file_syncs = [i for i, e in enumerate(events[:r]) if e[0] == "fsync" and e[1] == tmp]
    assert file_syncs, f"the file {tmp} was not fsynced before the rename: {_show(events)}"
    assert events[file_syncs[-1]][2] == final, \
        "the file was fsynced before all of its bytes were written"
    folder = os.path.dirname(target)
    dir_syncs = [i for i, e in enumerate(events) if e[0] == "fsync" and e[1] == folder]
    assert any(i > r for i in dir_syncs), \
        f"the folder {folder} was not fsynced after the rename: {_show(events)}"


def _show(events):
    return [e[:2] for e in events]


def _model():
    return dn.MLP([3, 5, 2], backend="cpu", seed=0)


def test_save_writes_fsyncs_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    model = _model()
    opt = dn.optim.Adam(model.parameters(), lr=1e-3)
    log = OsLog(monkeypatch)
    target = tmp_path / "m.safetensors"
    dn.save(model, target, optimizer=opt)
    monkeypatch.undo()
    check_durable_order(log.events, target)
    loaded, _ = dn.load(target, backend="cpu")
    np.testing.assert_array_equal(loaded.params, model.params)


def test_overwrite_is_durable_too(tmp_path, monkeypatch):
    target = tmp_path / "m.safetensors"
    dn.save(_model(), target)
    model = dn.MLP([3, 5, 2], backend="cpu", seed=1)
    log = OsLog(monkeypatch)
    dn.save(model, target)
    monkeypatch.undo()
    check_durable_order(log.events, target)
    np.testing.assert_array_equal(dn.load(target, backend="cpu")[0].params, model.params)


def test_missing_folder_fsync_is_caught(tmp_path, monkeypatch):
    """The defect the audit found uncaught: no fsync of the folder after the rename."""
    log = OsLog(monkeypatch)
    monkeypatch.setattr(dio, "_fsync_dir", lambda folder: None)
    target = tmp_path / "m.safetensors"
    dn.save(_model(), target)
    events = list(log.events)
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="folder .* not fsynced after the rename"):
        check_durable_order(events, target)


def test_order_check_rejects_each_wrong_order(tmp_path):
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"complete")
    tmp, folder, t = str(tmp_path / ".m.safetensors.0000.tmp"), str(tmp_path), str(target)
    good = [("open", tmp), ("fsync", tmp, b"complete"), ("rename", tmp, t),
            ("open", folder), ("fsync", folder, None)]
    check_durable_order(good, target)
    no_file_sync = [e for e in good if e[:2] != ("fsync", tmp)]
    folder_sync_first = [good[0], good[1], good[3], good[4], good[2]]
    partial = [good[0], ("fsync", tmp, b"comp"), *good[2:]]
    for bad, msg in ((no_file_sync, "not fsynced before the rename"),
                     (folder_sync_first, "not fsynced after the rename"),
                     (partial, "before all of its bytes")):
        with pytest.raises(AssertionError, match=msg):
            check_durable_order(bad, target)
