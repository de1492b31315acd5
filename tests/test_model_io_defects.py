"""Issue 10, model + checkpoint part: one regression test per defect, named after it.

Input scaling saved with the model, FIFOs and other non-files refused, clear errors for bad
constructor / path arguments, hand-made checkpoints with a recomputed checksum, stale temp
files, the umask, and format version 1 files still loading.
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
from devnet.nn import mlp as mlp_module

F64 = dict(rtol=1e-12, atol=1e-12)


def _numeric_grad(f, x, eps):
    """Central differences of scalar f w.r.t. every element of x (restored afterwards)."""
    g = np.empty_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def _rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-30)


def _scaled_model(rng, n_in=4, dtype="float64", backend="cpu"):
    model = dn.MLP([n_in, 6, 3], activation="tanh", dtype=dtype, backend=backend,
                   seed=int(rng.integers(1 << 30)))
    model.params[...] = model.backend.asarray(rng.normal(0, 0.7, model.n_params),
                                              dtype=model.dtype)
    mean = rng.normal(0, 50, n_in)
    scale = rng.uniform(0.5, 20, n_in)
    model.set_input_scaling(mean, scale)
    return model, mean, scale


def _raw_inputs(rng, mean, scale, n=7):
    return mean + scale * rng.standard_normal((n, mean.size))


# --- (A) input scaling ---------------------------------------------------------------------------

def test_input_scaling_forward_standardizes_and_leaves_X_alone(rng):
    model, mean, scale = _scaled_model(rng)
    X = _raw_inputs(rng, mean, scale)
    keep = X.copy()
    out = model.forward(X).copy()
    np.testing.assert_array_equal(X, keep)
    plain = dn.MLP([4, 6, 3], activation="tanh", dtype="float64", backend="cpu")
    plain.params[...] = model.params
    np.testing.assert_allclose(out, plain.forward((X - mean) / scale), **F64)
    np.testing.assert_allclose(model.predict(X, batch_size=3), out, **F64)


def test_input_scaling_gradient_matches_finite_differences_float64(rng):
    model, mean, scale = _scaled_model(rng)
    X = _raw_inputs(rng, mean, scale, n=5)
    target = rng.standard_normal((5, 3))
    loss = dn.losses.get("mse")

    def value():
        return loss(model.forward(X), target)[0]

    _, dpred = loss(model.forward(X), target)
    dX = model.backward(dpred).copy()
    analytic = model.grads.copy()
    # eps relative to the raw feature scale: X is O(50), the step must be too
    assert _rel_err(dX, _numeric_grad(value, X, eps=1e-5)) < 1e-6
    assert _rel_err(analytic, _numeric_grad(value, model.params, eps=1e-6)) < 1e-6


@pytest.mark.parametrize("mean,scale,match", [
    (np.zeros(3), np.ones(4), r"mean must have shape \(4,\)"),
    (np.zeros(4), np.ones((1, 4)), r"scale must have shape \(4,\)"),
    (np.zeros(4), np.array([1.0, 0.0, 1.0, 1.0]), r"scale must be > 0.*scale\[1\]"),
    (np.zeros(4), -np.ones(4), "scale must be > 0"),
    (np.array([0, np.nan, 0, 0]), np.ones(4), "mean contains NaN/Inf"),
    (np.zeros(4), np.array([1, 1, np.inf, 1]), "scale contains NaN/Inf"),
    (None, np.ones(4), "mean must be a numeric array"),
    (["a"] * 4, np.ones(4), "mean must be a numeric array"),
])
def test_input_scaling_rejects_bad_statistics(mean, scale, match):
    model = dn.MLP([4, 3], backend="cpu")
    with pytest.raises(dn.DataError, match=match):
        model.set_input_scaling(mean, scale)
    assert model.input_scaling is None


def test_input_scaling_property_returns_float64_copies_and_clears(rng):
    model = dn.MLP([3, 2], backend="cpu")
    assert model.input_scaling is None
    mean, scale = rng.standard_normal(3).astype(np.float32), rng.uniform(1, 2, 3)
    model.set_input_scaling(mean, scale)
    got_mean, got_scale = model.input_scaling
    assert got_mean.dtype == got_scale.dtype == np.float64
    np.testing.assert_array_equal(got_mean, mean.astype(np.float64))
    got_mean[...] = 99
    assert model.input_scaling[0][0] != 99
    model.set_input_scaling(None, None)
    assert model.input_scaling is None


def test_input_scaling_survives_to_another_backend(rng):
    model, mean, scale = _scaled_model(rng)
    X = _raw_inputs(rng, mean, scale)
    before = model.predict(X)
    model.to(dn.get_backend("cpu", kernels="reference"))
    np.testing.assert_array_equal(model.input_scaling[1], scale)
    np.testing.assert_allclose(model.predict(X), before, **F64)


def test_standardization_lost_at_predict_is_saved_in_checkpoint(rng, tmp_path, backend):
    """Issue 10 item 2: the statistics travel with the checkpoint and apply on dn.load."""
    model, mean, scale = _scaled_model(rng, backend=backend)
    X = _raw_inputs(rng, mean, scale)
    path = dn.save(model, tmp_path / "m.safetensors")
    assert io.read_metadata(path)["input_scaling"] is True
    loaded, _ = dn.load(path, backend=backend)
    np.testing.assert_array_equal(loaded.input_scaling[0], mean)
    np.testing.assert_array_equal(loaded.input_scaling[1], scale)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    ck = io.load_checkpoint(path, backend="cpu")
    np.testing.assert_array_equal(ck.model.input_scaling[1], scale)


def test_fit_and_evaluate_see_raw_data_with_input_scaling(rng):
    """fit on raw X with the scaling set == fit on standardized X without it."""
    X = rng.normal(1000, 300, (48, 3))
    y = rng.integers(0, 2, 48)
    Xv, yv = rng.normal(1000, 300, (16, 3)), rng.integers(0, 2, 16)
    mean, scale = X.mean(0), X.std(0)
    seed = int(rng.integers(1 << 30))
    scaled = dn.MLP([3, 8, 2], dtype="float64", backend="cpu", seed=seed)
    scaled.set_input_scaling(mean, scale)
    plain = dn.MLP([3, 8, 2], dtype="float64", backend="cpu", seed=seed)
    args = dict(loss="cross_entropy", epochs=2, batch_size=16, progress=False, seed=seed)
    h1 = dn.fit(scaled, X, y, validation_data=(Xv, yv), **args)
    h2 = dn.fit(plain, (X - mean) / scale, y, validation_data=((Xv - mean) / scale, yv), **args)
    np.testing.assert_allclose(scaled.params, plain.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h1.history["val_loss"], h2.history["val_loss"], rtol=1e-9)
    np.testing.assert_allclose(scaled.predict(Xv), plain.predict((Xv - mean) / scale),
                               rtol=1e-9, atol=1e-12)


# --- (B) extra metadata --------------------------------------------------------------------------

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


# --- clear errors from the model -----------------------------------------------------------------

@pytest.mark.parametrize("seed", [-1, "a", 1.5, True, [1]])
def test_mlp_bad_seed_is_a_config_error(seed):
    with pytest.raises(dn.ConfigError, match="seed must be a non-negative integer or None"):
        dn.MLP([3, 2], backend="cpu", seed=seed)


def test_mlp_numpy_integer_seed_is_accepted():
    a = dn.MLP([3, 4, 2], backend="cpu", seed=np.int64(7))
    b = dn.MLP([3, 4, 2], backend="cpu", seed=7)
    np.testing.assert_array_equal(a.params, b.params)
    assert type(a.config()["seed"]) is int


@pytest.mark.parametrize("activation", [None, 5, {"relu"}])
def test_mlp_activation_not_a_name_is_a_config_error(activation):
    with pytest.raises(dn.ConfigError, match="valid activations: .*relu"):
        dn.MLP([3, 4, 2], activation=activation, backend="cpu")


@pytest.mark.parametrize("sizes", [[True, 3], [3, False], [3.0, 2], ["3", 2], "34", None, 5,
                                   [3, -2], [np.float64(3), 2]])
def test_mlp_layer_sizes_not_positive_ints_is_a_config_error(sizes):
    with pytest.raises(dn.ConfigError, match="at least two positive integers"):
        dn.MLP(sizes, backend="cpu")


def test_mlp_numpy_int_layer_sizes_are_accepted():
    model = dn.MLP(np.array([3, 4, 2]), backend="cpu")
    assert model.layer_sizes == [3, 4, 2] and all(type(s) is int for s in model.layer_sizes)


@pytest.mark.parametrize("dtype,name", [(np.float32, "float32"), (np.dtype("float64"), "float64"),
                                        ("float32", "float32"), ("f8", "float64")])
def test_mlp_numpy_dtype_spellings_are_accepted(dtype, name):
    model = dn.MLP([3, 2], dtype=dtype, backend="cpu")
    assert model.dtype == np.dtype(name) and model.config()["dtype"] == name


@pytest.mark.parametrize("dtype", [None, np.int32, "float16", "nonsense", 5])
def test_mlp_unknown_dtype_lists_valid_ones(dtype):
    with pytest.raises(dn.ConfigError, match="valid dtypes: float32, float64"):
        dn.MLP([3, 2], dtype=dtype, backend="cpu")


@pytest.mark.parametrize("alpha", [10**400, float("nan"), -0.5, "0.1", True])
def test_mlp_alpha_past_float_range_is_a_config_error(alpha):
    with pytest.raises(dn.ConfigError, match="alpha must be a finite number >= 0"):
        dn.MLP([3, 2], activation="leaky_relu", alpha=alpha, backend="cpu")


def test_mlp_numpy_scalar_alpha_is_accepted():
    assert dn.MLP([3, 2], activation="leaky_relu", alpha=np.float32(0.25),
                  backend="cpu").alpha == 0.25


@pytest.mark.parametrize("batch_size", [0, -3, 1.5, True, None])
def test_predict_batch_size_zero_is_a_config_error(batch_size, rng):
    model = dn.MLP([3, 2], backend="cpu")
    with pytest.raises(dn.ConfigError, match="batch_size must be a positive integer"):
        model.predict(rng.standard_normal((4, 3)), batch_size=batch_size)


def test_backward_before_forward_is_a_devnet_error(rng):
    model = dn.MLP([3, 4, 2], backend="cpu")
    with pytest.raises(dn.DevnetError, match=r"backward\(\) called before forward\(\)"):
        model.backward(rng.standard_normal((5, 2)))


def test_backward_with_another_batch_size_than_forward_is_a_devnet_error(rng):
    model = dn.MLP([3, 4, 2], backend="cpu")
    model.forward(rng.standard_normal((5, 3)))
    with pytest.raises(dn.DevnetError, match=r"dY for 6 samples .* forward\(\) ran on 5"):
        model.backward(rng.standard_normal((6, 2)))


def test_huge_mlp_says_how_many_bytes_before_allocating(monkeypatch):
    def no_alloc(self, *args):
        raise AssertionError("allocated before checking the size")

    monkeypatch.setattr(dn.MLP, "_initial_params", no_alloc)
    monkeypatch.setattr(mlp_module, "_physical_memory", lambda: 2**30)
    sizes = [10**5, 10**5, 10]
    n = 10**5 * 10**5 + 10**5 + 10**5 * 10 + 10
    with pytest.raises(dn.ConfigError, match=f"{2 * 4 * n:,} bytes"):
        dn.MLP(sizes, backend="cpu")


def test_huge_mlp_memory_error_becomes_a_devnet_error(monkeypatch):
    def oom(self):
        raise MemoryError

    monkeypatch.setattr(dn.MLP, "_initial_params", oom)
    monkeypatch.setattr(mlp_module, "_physical_memory", lambda: None)
    with pytest.raises(dn.DevnetError, match=f"{2 * 8 * (3 * 4 + 4):,} bytes"):
        dn.MLP([3, 4], dtype="float64", backend="cpu")
