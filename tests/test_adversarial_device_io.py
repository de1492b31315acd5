"""Adversarial review of devices, profiling, checkpoints and the divergence guard: each test
is named after the defect it pins down."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

import devnet as dn
from devnet import backend as backend_mod
from devnet.backend import cuda as cuda_backend
from devnet.optim import SGD, Adam, AdamW, RMSProp
from devnet.profile import main as profile_main
from devnet.profile import measure_ceilings

NO_CUDA = cuda_backend.unavailable_reason()
CEIL = {"copy_gbs": 10.0, "gemm_gflops": 10.0}  # fixed ceilings: no measuring in the tests


def _data(rng, n=96, n_in=5, k=3):
    return rng.standard_normal((n, n_in)).astype("float32"), rng.integers(0, k, n)


# --- devices ------------------------------------------------------------------------------------

@pytest.mark.skipif(NO_CUDA is None, reason="a GPU is present: auto picks it")
def test_auto_and_cpu_were_two_backends_so_to_cpu_silently_froze_training(rng, monkeypatch):
    monkeypatch.delenv("DEVNET_DEVICE", raising=False)
    assert dn.get_backend("auto") is dn.get_backend("cpu") is dn.get_backend(" CPU ")
    model = dn.MLP([5, 8, 3], backend="auto", seed=0)
    opt = SGD(model.parameters(), lr=0.1)
    grads = model.grads
    model.to("cpu")  # the device it is on: a no-op, not a new gradient buffer
    assert model.grads is grads
    X, y = _data(rng)
    before = model.params.copy()
    dn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=16, progress=False)
    assert not np.array_equal(before, model.params)


@pytest.mark.parametrize("spec", ["cuda:\u0663", "cuda:\uff11", "cuda:99999999999999999999"])
def test_device_index_took_non_ascii_digits_and_unbounded_numbers(spec):
    with pytest.raises(dn.ConfigError, match="valid devices: auto, cpu, cuda, cuda:N"):
        backend_mod.parse_device(spec)


def test_env_var_was_ignored_for_auto_spelled_in_capitals_and_not_named(monkeypatch):
    monkeypatch.setenv("DEVNET_DEVICE", "quantum")
    for spec in ("auto", "AUTO", " Auto ", None):
        with pytest.raises(dn.ConfigError, match="DEVNET_DEVICE.*quantum.*valid devices"):
            dn.get_backend(spec)
    monkeypatch.setenv("DEVNET_DEVICE", " CPU ")
    assert dn.get_backend("AUTO") is dn.get_backend("cpu")


@pytest.mark.parametrize("value", [[1, 2], None, "x"])
def test_backend_of_a_non_array_was_an_attribute_error(value):
    with pytest.raises(dn.ConfigError, match="NumPy or CuPy array"):
        backend_mod.backend_of(value)


@pytest.mark.parametrize("a, dtype", [([1, 2], "bogus"), ([[1], [2, 3]], None)])
def test_cpu_asarray_of_bad_input_was_a_raw_numpy_error(a, dtype):
    with pytest.raises(dn.DataError, match="cannot make"):
        dn.get_backend("cpu").asarray(a, dtype=dtype)


@pytest.mark.parametrize("seed", [-1, "a", 1.5, True])
def test_cpu_rng_with_a_bad_seed_was_a_raw_numpy_error(seed):
    with pytest.raises(dn.ConfigError, match="seed must be a non-negative integer"):
        dn.get_backend("cpu").rng(seed)


# --- the divergence guard -----------------------------------------------------------------------

class _Record(dn.Callback):
    """Copies of the parameters, optimizer state and step count after every step."""

    def __init__(self):
        self.states = {}

    def on_train_begin(self, logs):
        self._keep(0)

    def on_batch_end(self, step, logs):
        self._keep(step)

    def _keep(self, step):
        tr = self.trainer
        self.states[step] = (tr.model.params.copy(),
                             {k: v.copy() for k, v in tr.optimizer.state.items()},
                             tr.optimizer.t)


def _finite(state) -> bool:
    params, buffers, _ = state
    return bool(np.isfinite(params).all() and all(np.isfinite(b).all() for b in buffers.values()))


def _last_good_check(states, every, steps_per_epoch, epochs):
    """The global step of the last guard check before the first non-finite state."""
    checks = {0} | {e * steps_per_epoch for e in range(1, epochs + 1)}
    if every:
        checks |= {e * steps_per_epoch + s + 1 for e in range(epochs)
                   for s in range(steps_per_epoch - 1) if (s + 1) % every == 0}
    first_bad = min(g for g, st in states.items() if not _finite(st))
    return max(c for c in checks if c < first_bad)


_OPTIMIZERS = {
    "adam": lambda p: Adam(p, lr=1e12), "adamw": lambda p: AdamW(p, lr=1e12, weight_decay=0.1),
    "adam_amsgrad": lambda p: Adam(p, lr=1e12, amsgrad=True),
    "rmsprop": lambda p: RMSProp(p, lr=1e12, momentum=0.5),
    "rmsprop_centered": lambda p: RMSProp(p, lr=1e12, centered=True),
    "momentum": lambda p: SGD(p, lr=1e30, momentum=0.9),
}


@pytest.mark.parametrize("name", sorted(_OPTIMIZERS))
@pytest.mark.parametrize("dropout, weighted, every", [(0.0, False, 1), (0.3, True, 3),
                                                      (0.3, False, None)])
def test_guard_restored_a_state_with_overflowed_optimizer_state_not_the_last_finite_one(
        name, dropout, weighted, every):
    rng = np.random.default_rng(2)  # a fixed run that overflows mid-epoch for every case
    X, y = _data(rng)
    sw = rng.uniform(0.1, 3.0, len(X)) if weighted else None
    model = dn.MLP([5, 16, 16, 3], seed=0, backend="cpu", dropout=dropout)
    opt = _OPTIMIZERS[name](model.parameters())
    rec = _Record()
    with pytest.raises(dn.DivergenceError) as info:
        dn.fit(model, X, y, optimizer=opt, epochs=3, batch_size=8, guard_every=every,
               callbacks=[rec], sample_weight=sw, progress=False)
    assert info.value.layer is not None and info.value.array is not None
    params, buffers, t = rec.states[_last_good_check(rec.states, every, 12, 3)]
    np.testing.assert_array_equal(model.params, params)  # bit for bit
    for key, buf in buffers.items():
        np.testing.assert_array_equal(opt.state[key], buf)
    assert opt.t == t


def test_guard_let_adam_train_on_with_an_infinite_second_moment(rng):
    """A finite gradient whose square overflows made exp_avg_sq inf: the update became 0, the
    parameters stayed finite and frozen, and fit returned as if it had trained."""
    X, y = _data(rng)
    model = dn.MLP([5, 16, 16, 3], seed=0, backend="cpu")
    opt = Adam(model.parameters(), lr=1e12)
    with pytest.raises(dn.DivergenceError):
        dn.fit(model, X, y, optimizer=opt, epochs=3, batch_size=8, guard_every=1,
               progress=False)
    assert all(np.isfinite(buf).all() for buf in opt.state.values())


class _Poison(dn.Callback):
    def __init__(self, at):
        self.at = at

    def on_batch_end(self, step, logs):
        if step == self.at:
            self.trainer.model.layers[1].W[0, 0] = np.nan


def test_guard_did_not_name_a_nan_a_callback_wrote_mid_epoch(rng):
    X, y = _data(rng)
    model = dn.MLP([5, 8, 3], seed=0, backend="cpu")
    opt = Adam(model.parameters(), lr=1e-3)
    rec = _Record()
    with pytest.raises(dn.DivergenceError, match=r"layers\.1\.W.*changed outside") as info:
        dn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=8, guard_every=2,
               callbacks=[rec, _Poison(4)], progress=False)
    assert (info.value.layer, info.value.array) == ("layers.1", "W")
    params, buffers, t = rec.states[2]  # the check after step 4 found it; the one before: 2
    np.testing.assert_array_equal(model.params, params)
    assert opt.t == t and all(np.array_equal(opt.state[k], b) for k, b in buffers.items())


# --- profile ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"repeats": 0}, "repeats"), ({"repeats": 1.5}, "repeats"), ({"repeats": True}, "repeats"),
    ({"warmup": -1}, "warmup"), ({"warmup": None}, "warmup"),
    ({"ceilings": {"copy_gbs": 0.0, "gemm_gflops": 1.0}}, "copy_gbs"),
    ({"ceilings": [1, 2]}, "ceilings must be the dict"),
])
def test_profile_bad_arguments_were_raw_statistics_or_zero_division_errors(kwargs, match, rng):
    X, y = _data(rng, 16, 8)
    model = dn.MLP([8, 16, 3], seed=0, backend="cpu")
    kwargs = {"ceilings": CEIL, **kwargs}
    with pytest.raises(dn.ConfigError, match=match):
        dn.profile(model, X, y, **kwargs)


def test_profile_timed_out_of_range_labels_and_nan_inputs_instead_of_refusing(rng):
    X, y = _data(rng, 16, 8)
    model = dn.MLP([8, 16, 3], seed=0, backend="cpu")
    with pytest.raises(dn.DataError, match=r"labels.*\[0, 3\)"):
        dn.profile(model, X, y + 3, repeats=1, ceilings=CEIL)
    X[2, 1] = np.nan
    with pytest.raises(dn.DataError, match="NaN"):
        dn.profile(model, X, y, repeats=1, ceilings=CEIL)
    with pytest.raises(dn.ConfigError, match="MLP"):
        dn.profile(None, X, y, repeats=1, ceilings=CEIL)


@pytest.mark.parametrize("kwargs", [{"dropout": 0.3}, {"norm": "layernorm"},
                                    {"block": "residual", "norm": "layernorm", "dropout": 0.2}])
def test_profile_of_deep_options_crashed_or_booked_their_kernels_as_the_loss(kwargs, rng):
    X, y = _data(rng, 32, 16)
    model = dn.MLP([16, 16, 16, 3], seed=0, backend="cpu", **kwargs)
    report = dn.profile(model, X, y, repeats=2, ceilings=CEIL)
    assert [o.op for o in report.ops if o.layer == "loss"] == ["softmax_xent"]
    assert not any(o.layer.endswith("?") for o in report.ops)
    # the ops and the glue add up to the step; shares to 1
    assert sum(o.time_s for o in report.ops) == pytest.approx(max(report.step_s, report.ops_s))
    for o in report.ops:  # rates recomputed from the byte and flop counts
        if o.time_s > 0:
            assert o.gbs == pytest.approx(o.bytes / o.time_s / 1e9)
            assert o.pct_bandwidth == pytest.approx(o.gbs / CEIL["copy_gbs"])
    if kwargs.get("norm"):
        ln = next(o for o in report.ops if o.op == "layernorm_fwd")
        # X, Y (32, 16) float32; gamma, beta (16,); mean, rstd (32,)
        assert ln.bytes == 2 * 32 * 16 * 4 + 2 * 16 * 4 + 2 * 32 * 4


def test_profile_booked_opt_advance_as_reading_its_whole_table(rng):
    X, y = _data(rng, 32, 8)
    model = dn.MLP([8, 16, 3], seed=0, backend="cpu")
    opt = Adam(model.parameters(), lr=1e-3)
    report = dn.profile(model, X, y, optimizer=opt, repeats=1, ceilings=CEIL)
    adv = next(o for o in report.ops if o.op == "opt_advance")
    # the hyper array, and one row of the table (lr, bc1, bc2: float64)
    assert adv.bytes == opt.hyper.nbytes + 3 * 8
    step = next(o for o in report.ops if o.op == "adam_step_hyper")
    assert step.bytes == 7 * model.params.nbytes  # p, m, v read and written; g read
    mm = next(o for o in report.ops if o.op.startswith("forward") and o.layer == "layers.0")
    assert mm.flops == 2 * 32 * 8 * 16 and mm.bytes == (32 * 8 + 8 * 16 + 32 * 16) * 4


@pytest.mark.parametrize("kwargs, match", [({"dtype": "int8"}, "dtype"),
                                           ({"copy_mb": 0}, "copy_mb"),
                                           ({"repeats": 0}, "repeats"),
                                           ({"gemm_n": -3}, "gemm_n")])
def test_measure_ceilings_took_integer_dtypes_and_empty_buffers(kwargs, match):
    with pytest.raises(dn.ConfigError, match=match):
        measure_ceilings(dn.get_backend("cpu"), **kwargs)


@pytest.mark.parametrize("extra, match", [(["--batch-size", "-4"], None),
                                          (["--batch-size", "0"], None),
                                          (["--json", "/nonexistent/dir/x.json"], "folder"),
                                          (["--json", "."], "directory")])
def test_profile_command_crashed_on_bad_batch_size_or_json_path(extra, match, capsys):
    argv = ["--sizes", "8-16-3", "--repeats", "1", "--device", "cpu", *extra]
    if match is None:
        with pytest.raises(SystemExit) as info:
            profile_main(argv)
        assert info.value.code == 2 and "--batch-size" in capsys.readouterr().err
    else:
        with pytest.raises(dn.ConfigError, match=match):
            profile_main(argv)


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "poisson"])
def test_profile_command_fed_standard_normal_targets_to_any_loss(loss, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert profile_main(["--sizes", "8-16-2", "--batch-size", "16", "--repeats", "1",
                         "--device", "cpu", "--loss", loss, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["loss"] == loss


# --- checkpoints --------------------------------------------------------------------------------

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
