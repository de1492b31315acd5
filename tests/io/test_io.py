"""Checkpoints: round trip, corruption of every kind is a CheckpointError, atomic writes."""

from __future__ import annotations

import errno
import json
import os
import pickle
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import devnet as dn
from devnet import io
from devnet.io import checkpoint as io_checkpoint
from devnet.io import files as io_files
from devnet.io import verify as io_verify


def _trained(rng, backend="cpu", optimizer="adam", epochs=2):
    X = rng.standard_normal((48, 6)).astype(np.float32)
    y = rng.integers(0, 4, 48)
    model = dn.MLP([6, 10, 4], backend=backend, seed=int(rng.integers(1 << 30)))
    opt = dn.optim.get(optimizer, model, lr=dn.optim.schedules.warmup_cosine(1e-2, 3, 20))
    hist = dn.fit(model, X, y, loss="cross_entropy", optimizer=opt, epochs=epochs,
                  batch_size=16, progress=False)
    return model, opt, hist


def _header_len(raw: bytes) -> int:
    return 8 + struct.unpack("<Q", raw[:8])[0]


def test_round_trip_with_optimizer_state(rng, tmp_path, backend):
    model, opt, hist = _trained(rng, backend)
    path = dn.save(model, tmp_path / "m.safetensors", optimizer=opt, history=hist)
    loaded, lopt = dn.load(path, backend=backend)
    assert loaded.config() == model.config()
    np.testing.assert_array_equal(backend.to_numpy(loaded.params), backend.to_numpy(model.params))
    assert lopt.name == "adam" and lopt.t == opt.t and lopt.lr == opt.lr
    assert lopt.schedule.config() == opt.schedule.config()
    for k in opt.state:
        np.testing.assert_array_equal(backend.to_numpy(lopt.state[k]),
                                      backend.to_numpy(opt.state[k]))
    ck = dn.load_checkpoint(path, backend=backend)
    assert ck.history.history == hist.history and ck.history.epoch == hist.epoch
    # the restored optimizer continues exactly like the original
    g = rng.standard_normal(model.n_params).astype(np.float32)
    for m, o in ((model, opt), (loaded, lopt)):
        m.grads[...] = backend.asarray(g)
        o.step()
    np.testing.assert_array_equal(backend.to_numpy(loaded.params), backend.to_numpy(model.params))


def test_model_only_round_trip_has_no_optimizer(rng, tmp_path):
    model, _, _ = _trained(rng, optimizer="sgd", epochs=1)
    dn.save(model, tmp_path / "m.safetensors")
    loaded, opt = dn.load(tmp_path / "m.safetensors", backend="cpu")
    assert opt is None
    X = rng.standard_normal((5, 6)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_saved_on_one_kernel_set_loads_on_another(rng, tmp_path):
    """CPU reference and fused backends share the file format (as CPU and CUDA do)."""
    ref = dn.get_backend("cpu", kernels="reference")
    model, opt, _ = _trained(rng, ref)
    dn.save(model, tmp_path / "m.safetensors", optimizer=opt)
    loaded, lopt = dn.load(tmp_path / "m.safetensors", backend="cpu")
    assert loaded.backend is dn.get_backend("cpu")
    np.testing.assert_array_equal(loaded.params, model.params)
    np.testing.assert_array_equal(lopt.state["exp_avg"], opt.state["exp_avg"])


@pytest.mark.gpu
def test_saved_on_cpu_loads_on_cuda_and_back(rng, tmp_path):
    model, opt, _ = _trained(rng, "cpu")
    dn.save(model, tmp_path / "c.safetensors", optimizer=opt)
    gpu, gopt = dn.load(tmp_path / "c.safetensors", backend="cuda")
    np.testing.assert_array_equal(gpu.backend.to_numpy(gpu.params), model.params)
    dn.save(gpu, tmp_path / "g.safetensors", optimizer=gopt)
    back, _ = dn.load(tmp_path / "g.safetensors", backend="cpu")
    np.testing.assert_array_equal(back.params, model.params)


@pytest.fixture
def saved(rng, tmp_path):
    model, opt, hist = _trained(rng, epochs=1)
    path = tmp_path / "m.safetensors"
    dn.save(model, path, optimizer=opt, history=hist)
    return path, path.read_bytes(), model


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("keep", [0, 5, 8, 100, "header", "half", -1])
def test_truncated_file(saved, keep):
    path, raw, _ = saved
    n = {"header": _header_len(raw) - 3, "half": len(raw) // 2}.get(keep, keep)
    n = len(raw) - 1 if n == -1 else n
    with pytest.raises(dn.CheckpointError, match="truncated|too short|not a"):
        dn.load(_write(path, raw[:n]), backend="cpu")


def test_every_flipped_header_byte_is_detected(saved):
    path, raw, _ = saved
    hl = _header_len(raw)
    undetected = []
    for i in range(hl):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        _write(path, bytes(bad))
        try:
            dn.load(path, backend="cpu")
        except dn.CheckpointError:
            continue
        undetected.append(i)
    assert not undetected, f"flips at header bytes {undetected[:10]} loaded silently"


def test_flipped_data_byte_is_detected(saved, rng):
    path, raw, _ = saved
    hl = _header_len(raw)
    for i in rng.choice(np.arange(hl, len(raw)), size=20, replace=False):
        bad = bytearray(raw)
        bad[int(i)] ^= 1 << int(rng.integers(8))
        with pytest.raises(dn.CheckpointError, match="sha256|corrupt"):
            dn.load(_write(path, bytes(bad)), backend="cpu")


@pytest.mark.parametrize("content", [
    b"", b"hello, I am a text file\n" * 10, pickle.dumps({"params": [1, 2, 3]}),
    struct.pack("<Q", 2) + b"[]", struct.pack("<Q", 4) + b"\xff\xfe\x00\x01",
])
def test_not_a_safetensors_file(tmp_path, content):
    with pytest.raises(dn.CheckpointError, match="safetensors|too short"):
        dn.load(_write(tmp_path / "x.safetensors", content), backend="cpu")


def test_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = _write(tmp_path / "evil.safetensors", pickle.dumps(Evil()))
    with pytest.raises(dn.CheckpointError):
        dn.load(path, backend="cpu")
    assert not marker.exists()


def test_safetensors_file_from_elsewhere(tmp_path, rng):
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weight": rng.standard_normal(4).astype(np.float32)}, str(path))
    with pytest.raises(dn.CheckpointError, match="not a devnet checkpoint"):
        dn.load(path, backend="cpu")


def test_future_format_version(saved, monkeypatch):
    path, _, model = saved
    monkeypatch.setattr(io_checkpoint, "FORMAT_VERSION", io.FORMAT_VERSION + 1)
    dn.save(model, path)
    monkeypatch.undo()
    future = io.FORMAT_VERSION + 1
    with pytest.raises(dn.CheckpointError, match=rf"format version {future}.*upgrade devnet"):
        dn.load(path, backend="cpu")


def test_metadata_rewritten_with_valid_checksum_but_wrong_sizes(saved, tmp_path):
    """A consistent-looking header whose tensors disagree with the model config."""
    from safetensors.numpy import save as st_save

    path, raw, _ = saved
    meta = io.read_metadata(path)
    meta["model"]["layer_sizes"] = [6, 11, 4]
    params = np.frombuffer(raw[_header_len(raw):], np.float32)[:meta["tensors"]["params"]
                                                                 ["shape"][0]]
    meta["tensors"] = {"params": io_verify.tensor_digest(params)}
    text = json.dumps(meta)
    data = st_save({"params": params},
                   metadata={"devnet": text, "devnet_sha256": io_verify.sha256(text.encode())})
    with pytest.raises(dn.CheckpointError, match=r"params .*do not match the model config"):
        dn.load(_write(tmp_path / "y.safetensors", data), backend="cpu")


def test_resume_into_different_architecture(saved, rng):
    path, _, _ = saved
    other = dn.MLP([6, 12, 4], backend="cpu")
    X = rng.standard_normal((16, 6)).astype(np.float32)
    with pytest.raises(dn.CheckpointError, match=r"different architecture.*layer_sizes"):
        dn.fit(other, X, rng.integers(0, 4, 16), loss="cross_entropy", epochs=2,
               resume_from=path, progress=False)


def test_missing_file(tmp_path):
    with pytest.raises(dn.CheckpointError, match="not found"):
        dn.load(tmp_path / "nope.safetensors", backend="cpu")


def test_save_into_missing_folder(rng, tmp_path):
    model = dn.MLP([3, 2], backend="cpu")
    with pytest.raises(dn.CheckpointError, match="does not exist"):
        dn.save(model, tmp_path / "no" / "m.safetensors")


def test_fault_between_write_and_rename_keeps_old_checkpoint(saved, monkeypatch, rng):
    path, raw, model = saved

    def boom(src, dst):
        assert os.path.getsize(src) > 0  # the new file was fully written and fsynced
        raise OSError("injected fault before rename")

    model.params[...] = rng.standard_normal(model.n_params).astype(np.float32)
    monkeypatch.setattr(io_files, "_replace", boom)
    with pytest.raises(dn.CheckpointError, match=f"{path.name}.*injected fault"):
        dn.save(model, path)
    assert path.read_bytes() == raw
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # temp file removed
    loaded, opt = dn.load(path, backend="cpu")
    assert opt is not None and not np.array_equal(loaded.params, model.params)


# --- concurrent writers, full disks, file-size limits, long names -------------------------------

def test_a_save_finishing_first_leaves_the_other_writers_temp_file(tmp_path, monkeypatch):
    # the second save of the path runs start to finish while the first is between its write
    # and its rename: its clean-up of temporary files must not take the first one's
    path = tmp_path / "m.safetensors"
    first, second = (dn.MLP([3, 5, 2], backend="cpu", seed=s) for s in (1, 2))
    real = io_files._replace
    nested = []

    def replace(src, dst):
        if not nested:
            nested.append(src)
            time.sleep(0.02)  # the first temp file is now older than the second save's start
            dn.save(second, path)
        real(src, dst)

    monkeypatch.setattr(io_files, "_replace", replace)
    dn.save(first, path)
    np.testing.assert_array_equal(dn.load(path, backend="cpu")[0].params, first.params)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_two_threads_saving_to_one_path_always_land_whole(tmp_path):
    path = tmp_path / "m.safetensors"
    models = [dn.MLP([4, 8, 2], backend="cpu", seed=s) for s in (1, 2)]
    errors = []

    def saver(model):
        try:
            for _ in range(60):
                dn.save(model, path)
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    loaded = dn.load(path, backend="cpu")[0].params
    assert any(np.array_equal(loaded, m.params) for m in models)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def _no_space(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_is_a_checkpoint_error_naming_the_path(saved, monkeypatch, rng):
    path, raw, model = saved
    model.params[...] = rng.standard_normal(model.n_params).astype(np.float32)
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(dn.CheckpointError, match=f"{path.name}.*No space left on device"):
        dn.save(model, path)
    monkeypatch.undo()
    assert path.read_bytes() == raw
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_full_disk_during_fit_checkpoint_is_a_checkpoint_error(tmp_path, monkeypatch, rng):
    X = rng.standard_normal((16, 3)).astype(np.float32)
    path = tmp_path / "ck.safetensors"
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(dn.CheckpointError, match=f"{path.name}.*No space left on device"):
        dn.fit(dn.MLP([3, 1], backend="cpu"), X, X[:, 0], epochs=1, checkpoint=path,
               progress=False)


FILE_SIZE_LIMIT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    import devnet as dn

    path = sys.argv[1]
    model = dn.MLP([64, 128, 10], backend="cpu", seed=0)  # ~36 KiB of parameters
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, resource.getrlimit(
        resource.RLIMIT_FSIZE)[1]))
    for what in ("save", "fit"):
        try:
            if what == "save":
                dn.save(model, path)
            else:
                X = np.ones((8, 64), np.float32)
                dn.fit(model, X, np.zeros(8, np.int64) + np.arange(8) % 10, epochs=1,
                       loss="cross_entropy", checkpoint=path, progress=False)
        except dn.CheckpointError as exc:
            print(what, "CheckpointError", exc)
        except BaseException as exc:
            print(what, "raw", type(exc).__name__, exc)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
def test_file_size_limit_is_a_checkpoint_error_naming_the_path(tmp_path):
    path = tmp_path / "big.safetensors"
    old = dn.save(dn.MLP([3, 2], backend="cpu"), path).read_bytes()
    proc = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(path)],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["save", "CheckpointError"],
                                                    ["fit", "CheckpointError"]], \
        proc.stdout + proc.stderr
    for line in lines:
        assert str(path) in line and "File too large" in line
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_file_name_too_long_is_refused_before_training(tmp_path, rng):
    path = tmp_path / ("m" * 300 + ".safetensors")
    model = dn.MLP([3, 1], backend="cpu")
    with pytest.raises(dn.CheckpointError, match="file name is 312 bytes.*shorter name"):
        dn.save(model, path)
    epochs = []

    class Count(dn.Callback):
        def on_epoch_end(self, epoch, logs):
            epochs.append(epoch)

    X = rng.standard_normal((16, 3)).astype(np.float32)
    with pytest.raises(dn.CheckpointError, match="file name is 312 bytes"):
        dn.fit(model, X, X[:, 0], epochs=2, checkpoint=path, callbacks=[Count()],
               progress=False)
    assert epochs == []
    assert list(tmp_path.iterdir()) == []


def test_longest_file_name_the_folder_allows_is_saved(tmp_path):
    # the temporary file's name is longer than the target's: it must be shortened, not refused
    longest = os.pathconf(tmp_path, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    path = tmp_path / ("m" * (longest - len(".safetensors")) + ".safetensors")
    model = dn.MLP([3, 2], backend="cpu", seed=4)
    dn.save(model, path)
    dn.save(model, path)
    np.testing.assert_array_equal(dn.load(path, backend="cpu")[0].params, model.params)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_save_to_a_path_ending_in_a_separator_wrote_a_file_named_like_the_folder(tmp_path):
    model = dn.MLP([3, 4, 2], seed=0, backend="cpu")
    with pytest.raises(dn.CheckpointError, match="names a folder"):
        dn.save(model, f"{tmp_path}/run/")
    assert not (tmp_path / "run").exists()


def test_save_over_a_symlink_replaced_the_link_not_the_file_it_points_to(tmp_path):
    model = dn.MLP([3, 4, 2], seed=1, backend="cpu")
    target, link = tmp_path / "run3.safetensors", tmp_path / "latest.safetensors"
    dn.save(dn.MLP([3, 4, 2], seed=0, backend="cpu"), target)
    link.symlink_to(target)
    dn.save(model, link)
    assert link.is_symlink()
    np.testing.assert_array_equal(dn.load(target, backend="cpu")[0].params, model.params)


def test_save_silently_replaced_a_read_only_checkpoint(tmp_path):
    path = tmp_path / "keep.safetensors"
    old = dn.MLP([3, 4, 2], seed=0, backend="cpu")
    dn.save(old, path)
    os.chmod(path, stat.S_IRUSR | stat.S_IRGRP)
    try:
        with pytest.raises(dn.CheckpointError, match="read-only"):
            dn.save(dn.MLP([3, 4, 2], seed=1, backend="cpu"), path)
    finally:
        os.chmod(path, 0o644)
    np.testing.assert_array_equal(dn.load(path, backend="cpu")[0].params, old.params)


def test_save_with_metadata_over_the_header_limit_was_a_raw_safetensors_error(tmp_path):
    path = tmp_path / "m.safetensors"
    model = dn.MLP([3, 4, 2], seed=0, backend="cpu")
    dn.save(model, path)
    before = path.read_bytes()
    with pytest.raises(dn.ConfigError, match="MiB a safetensors header holds"):
        dn.save(model, path, extra={"blob": "x" * (101 * 2**20)})
    assert path.read_bytes() == before
