"""Checkpoints are read only when whole and sound, and written where and how the user expects.

Extra metadata round-trips; hand-made checkpoints with a recomputed checksum but malformed
metadata are refused before any model is built; FIFOs and other non-files are refused (no
hang); bad path arguments are clear errors; files follow the umask; stale temp files of a
killed save are cleaned up; format version 1 files still load.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import struct
import time

import numpy as np
import pytest

import devnet as dn
from devnet import io
from devnet.io import verify as io_verify

# --- extra metadata ------------------------------------------------------------------------------

def test_save_extra_metadata_round_trip(rng, tmp_path):
    model = dn.MLP([3, 2], backend="cpu")
    extra = {"task": "regression", "columns": ["a", "b", "c"], "nested": {"k": 1.5}}
    path = dn.save(model, tmp_path / "m.safetensors", extra=extra)
    assert io.read_metadata(path)["extra"] == extra
    assert io.load_checkpoint(path, backend="cpu").meta["extra"] == extra
    dn.save(model, path)
    assert io.read_metadata(path)["extra"] == {}


@pytest.mark.parametrize("kwargs,match", [
    ({"extra": [1, 2]}, "extra must be a dict"),
    ({"extra": {"s": {1, 2}}}, "not JSON-serialisable"),
    ({"train_state": [1]}, "train_state must be a dict"),
])
def test_save_bad_extra_is_a_config_error(tmp_path, kwargs, match):
    with pytest.raises(dn.ConfigError, match=match):
        dn.save(dn.MLP([3, 2], backend="cpu"), tmp_path / "m.safetensors", **kwargs)
    assert list(tmp_path.iterdir()) == []


# --- hand-made checkpoints -----------------------------------------------------------------------

def _write_checkpoint(path, meta: dict, tensors: dict):
    """A checkpoint with the given metadata, digests and checksum recomputed (a forger's file)."""
    from safetensors.numpy import save as st_save

    meta = dict(meta)
    meta["tensors"] = {k: io_verify.tensor_digest(a) for k, a in tensors.items()}
    text = json.dumps(meta)
    path.write_bytes(st_save(tensors, metadata={"devnet": text,
                                                "devnet_sha256": io_verify.sha256(text.encode())}))
    return path


@pytest.fixture
def trained(rng, tmp_path):
    X = rng.standard_normal((32, 5)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = dn.MLP([5, 7, 3], backend="cpu", seed=int(rng.integers(1 << 30)))
    opt = dn.optim.Adam(model.parameters(), lr=1e-2)
    ck = tmp_path / "ck.safetensors"
    hist = dn.fit(model, X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=8,
                  progress=False, checkpoint=ck)
    meta = io.read_metadata(ck)
    _, tensors = io_verify.read(ck)
    return model, meta, tensors, hist


def test_format_version_1_checkpoint_still_loads(trained, tmp_path, rng):
    """A file written the old way: version 1, no input_scaling flag, no extra."""
    model, meta, tensors, hist = trained
    old = {k: v for k, v in meta.items() if k not in ("input_scaling", "extra", "tensors")}
    old["format_version"] = 1
    path = _write_checkpoint(tmp_path / "v1.safetensors", old, tensors)
    ck = io.load_checkpoint(path, backend="cpu")
    assert ck.model.input_scaling is None and ck.meta["extra"] == {}
    assert ck.optimizer.t == meta["optimizer"]["t"] and ck.history.epoch == hist.epoch
    X = rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_array_equal(ck.model.predict(X), model.predict(X))
    assert io.read_metadata(path)["extra"] == {}


def _set(path_keys, value):
    def mutate(meta):
        node = meta
        for key in path_keys[:-1]:
            node = node[key]
        node[path_keys[-1]] = value
    return mutate


def _drop(key):
    return lambda meta: meta.pop(key)


MALFORMED = {
    "history_not_a_dict": (_set(["history"], 5), "history"),
    "history_list": (_set(["history"], [1, 2]), "history"),
    "history_values_string": (_set(["history", "history", "loss"], "abc"), "history.history"),
    "history_values_mixed": (_set(["history", "history", "loss"], [1.0, "x"]),
                             "history.history"),
    "history_records_list": (_set(["history", "history"], [1]), "history.history"),
    "history_epoch_strings": (_set(["history", "epoch"], ["a"]), "history.epoch"),
    "history_params_list": (_set(["history", "params"], [1]), "history.params"),
    "train_state_list": (_set(["train_state"], [1]), "train_state"),
    "train_state_epoch_string": (_set(["train_state", "epoch"], "x"), "train_state.epoch"),
    "train_state_step_negative": (_set(["train_state", "step"], -1), "train_state.step"),
    "train_state_rng_int": (_set(["train_state", "rng"], 5), "train_state.rng"),
    "train_state_rng_overflow": (_set(["train_state", "rng", "state", "inc"], -1),
                                 "train_state.rng"),
    "train_state_rng_unknown_kind": (_set(["train_state", "rng", "bit_generator"], "Nope"),
                                     "train_state.rng"),
    "train_state_loss_string": (_set(["train_state", "loss"], "mse"), "train_state.loss"),
    "train_state_shuffle_string": (_set(["train_state", "shuffle"], "no"),
                                   "train_state.shuffle"),
    "model_not_a_dict": (_set(["model"], [5, 3]), "model"),
    "model_unknown_key": (_set(["model", "bogus"], 1), "model config"),
    "model_sizes_string": (_set(["model", "layer_sizes"], "5-7-3"), "layer_sizes"),
    "model_sizes_negative": (_set(["model", "layer_sizes"], [5, -7, 3]), "layer_sizes"),
    "model_sizes_bool": (_set(["model", "layer_sizes"], [5, True, 3]), "layer_sizes"),
    "model_sizes_float": (_set(["model", "layer_sizes"], [5, 7.0, 3]), "layer_sizes"),
    "model_sizes_absurd": (_set(["model", "layer_sizes"], [5, 10**12, 3]),
                           "layer_sizes|do not match"),
    "model_sizes_other": (_set(["model", "layer_sizes"], [5, 8, 3]), "do not match"),
    "model_activation_int": (_set(["model", "activation"], 5), "activation"),
    "model_activation_unknown": (_set(["model", "activation"], "swish"),
                                 "valid activations"),
    "model_seed_negative": (_set(["model", "seed"], -1), "seed"),
    "model_seed_string": (_set(["model", "seed"], "a"), "seed"),
    "model_alpha_string": (_set(["model", "alpha"], "x"), "alpha"),
    "model_dtype_int": (_set(["model", "dtype"], 5), "dtype"),
    "model_dtype_other": (_set(["model", "dtype"], "float64"), "do not match"),
    "optimizer_int": (_set(["optimizer"], 5), "optimizer"),
    "optimizer_name_int": (_set(["optimizer", "name"], 5), "optimizer"),
    "optimizer_t_string": (_set(["optimizer", "t"], "x"), "optimizer"),
    "optimizer_unknown_name": (_set(["optimizer", "name"], "lbfgs"), "optimizer"),
    "optimizer_bad_schedule": (_set(["optimizer", "lr"], {"kind": "bogus"}), "optimizer"),
    "optimizer_bad_hyper": (_set(["optimizer", "hyperparameters"], {"nope": 1}), "optimizer"),
    "optimizer_dropped": (_set(["optimizer"], None), "optimizer"),
    "extra_list": (_set(["extra"], [1]), "extra"),
    "input_scaling_string": (_set(["input_scaling"], "yes"), "input_scaling"),
    "input_scaling_without_tensors": (_set(["input_scaling"], True), "input_scaling"),
    "format_version_bool": (_set(["format_version"], True), "format version"),
    "model_missing": (_drop("model"), "model"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_metadata_with_recomputed_checksum_is_a_checkpoint_error(case, trained,
                                                                           tmp_path):
    _, meta, tensors, _ = trained
    mutate, match = MALFORMED[case]
    meta = json.loads(json.dumps(meta))
    mutate(meta)
    path = _write_checkpoint(tmp_path / "forged.safetensors", meta, tensors)
    with pytest.raises(dn.CheckpointError, match=match):
        io.load_checkpoint(path, backend="cpu")


def test_parameter_count_is_checked_before_any_model_is_built(trained, tmp_path, monkeypatch):
    _, meta, tensors, _ = trained
    meta = json.loads(json.dumps(meta))
    meta["model"]["layer_sizes"] = [5, 2**40, 3]

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built from an unchecked config")

    monkeypatch.setattr(dn.nn, "MLP", no_build)
    path = _write_checkpoint(tmp_path / "huge.safetensors", meta, tensors)
    with pytest.raises(dn.CheckpointError, match="need .* parameters"):
        io.load_checkpoint(path, backend="cpu")


def test_tensor_shape_overflowing_int64_is_a_checkpoint_error(trained, tmp_path):
    """Shape [2**32, 2**32] wrapped to 0 bytes with np.prod; the file then crashed in reshape."""
    _, meta, _, _ = trained
    text = json.dumps({**meta, "tensors": {"params": {"dtype": "float32",
                                                      "shape": [2**32, 2**32],
                                                      "sha256": io_verify.sha256(b"")}}})
    header = json.dumps({"params": {"dtype": "F32", "shape": [2**32, 2**32],
                                    "data_offsets": [0, 0]},
                         "__metadata__": {
                             "devnet": text,
                             "devnet_sha256": io_verify.sha256(text.encode())}}).encode()
    path = tmp_path / "overflow.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(dn.CheckpointError):
        dn.load(path, backend="cpu")


# --- what is read and where it is written --------------------------------------------------------

class _Hang(Exception):
    pass


@pytest.fixture
def alarm():
    """Turn a hang into a failure: SIGALRM interrupts a blocking open() after 5 s."""
    def ring(signum, frame):
        raise _Hang("dn.load blocked")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_load_on_a_fifo_hangs(tmp_path, alarm):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    for read in (dn.load, io.read_metadata, io.load_checkpoint):
        with pytest.raises(dn.CheckpointError, match="FIFO.*not a regular file"):
            read(fifo)


def test_load_a_directory_or_device_is_a_checkpoint_error(tmp_path, alarm):
    with pytest.raises(dn.CheckpointError, match="directory.*not a regular file"):
        dn.load(tmp_path, backend="cpu")
    if os.path.exists("/dev/zero"):  # a device that would stream zeros forever
        with pytest.raises(dn.CheckpointError, match="character device"):
            dn.load("/dev/zero", backend="cpu")


def test_save_onto_a_directory_is_a_checkpoint_error(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    with pytest.raises(dn.CheckpointError, match="directory.*not a regular file"):
        dn.save(dn.MLP([3, 2], backend="cpu"), target)
    assert target.is_dir() and list(target.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp file left


@pytest.mark.parametrize("path", [None, 5, 3.5, ["m.safetensors"], ""])
def test_save_and_load_with_a_non_path_is_a_config_error(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(dn.ConfigError, match="path must be a non-empty str or os.PathLike"):
        dn.save(dn.MLP([3, 2], backend="cpu"), path)
    with pytest.raises(dn.ConfigError, match="path must be a non-empty str or os.PathLike"):
        dn.load(path, backend="cpu")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def umask():
    def set_umask(mask):
        os.umask(mask)

    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_checkpoint_written_0600_instead_of_following_umask(mask, umask, tmp_path):
    umask(mask)
    path = dn.save(dn.MLP([3, 2], backend="cpu"), tmp_path / "m.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    dn.save(dn.MLP([3, 2], backend="cpu"), path)  # replacing keeps following it
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_stale_tmp_files_of_a_killed_save_are_cleaned_up(tmp_path):
    path = tmp_path / "m.safetensors"
    old = time.time() - 3600
    stale = [tmp_path / ".m.safetensors.abcd1234.tmp", tmp_path / ".m.safetensors.x_9k2mq0.tmp"]
    keep = [tmp_path / ".other.safetensors.abcd1234.tmp",   # another checkpoint's
            tmp_path / ".m.safetensors.abcd1234.tmp.keep",  # not our pattern
            tmp_path / ".m.safetensors.toolongname.tmp",
            tmp_path / "m.safetensors.abcd1234.tmp"]
    for p in stale + keep:
        p.write_bytes(b"half a checkpoint")
        os.utime(p, (old, old))
    newer = tmp_path / ".m.safetensors.zzzz9999.tmp"  # a save that started after ours
    newer.write_bytes(b"in progress")
    future = time.time() + 3600
    os.utime(newer, (future, future))
    dn.save(dn.MLP([3, 2], backend="cpu"), path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {path.name, newer.name, *(p.name for p in keep)}
    dn.load(path, backend="cpu")
