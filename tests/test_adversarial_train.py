"""Regression tests from an adversarial review of the training path: optimizer fields written
after construction, schedules returning garbage, fit's schedule table, Step's arguments,
checkpoints that load could not rebuild, and callback arguments. Each test is named after the
defect it pins down."""

from __future__ import annotations

import math

import numpy as np
import pytest

import devnet as dn
from devnet.errors import CheckpointError, ConfigError
from devnet.optim import schedules
from devnet.train import Step


def _model(rng, sizes=(4, 6, 3), dtype="float64"):
    return dn.MLP(list(sizes), backend="cpu", dtype=dtype, seed=int(rng.integers(1 << 30)))


def _data(rng, n=24, n_in=4, k=3):
    return rng.standard_normal((n, n_in)), rng.integers(0, k, n)


def _step(model, opt, rng):
    model.grads[...] = rng.standard_normal(model.n_params)
    opt.step()


class _Curve(schedules.Schedule):
    """A user's schedule: whatever ``fn`` returns."""

    name = "curve"

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, step):
        return self.fn(step)


# --- optimizer fields written after construction -----------------------------------------------

@pytest.mark.parametrize("name,field,value", [
    ("adam", "betas", (2, 0.5)), ("adam", "betas", (0.9,)), ("adam", "betas", "ab"),
    ("adam", "betas", (float("nan"), 0.9)), ("adam", "eps", -1), ("adam", "eps", 0.0),
    ("adam", "eps", float("nan")), ("adam", "eps", "x"), ("adam", "base_lr", float("nan")),
    ("adam", "base_lr", -1.0), ("adam", "base_lr", 0), ("adam", "base_lr", "0.1"),
    ("adam", "base_lr", None), ("adam", "base_lr", math.inf), ("adam", "t", -3),
    ("adam", "t", 1.5), ("adam", "t", "3"), ("adam", "t", None), ("adam", "t", True),
    ("adam", "clip_norm", 0), ("adam", "clip_norm", -1.0), ("adam", "weight_decay", -1),
    ("adamw", "weight_decay", float("nan")), ("sgd", "momentum", 1.5), ("sgd", "momentum", -0.1),
    ("adam", "schedule", "cosine"), ("adam", "schedule", lambda step: 0.1),
    ("adam", "schedule", 42),
    ("rmsprop", "rho", 1.0), ("rmsprop", "rho", -0.5), ("rmsprop", "eps", -1),
    ("rmsprop", "momentum", 2.0),
])
def test_bad_value_written_to_an_optimizer_field_is_refused_before_the_next_step(
        name, field, value, rng):
    model = _model(rng)
    opt = dn.optim.get(name, model, lr=0.01)
    _step(model, opt, rng)
    setattr(opt, field, value)
    before = model.params.copy()
    with pytest.raises(ConfigError, match=field.rstrip("s") if field != "base_lr" else "lr"):
        _step(model, opt, rng)
    np.testing.assert_array_equal(model.params, before)  # nothing ran on the bad value


def test_good_value_written_to_an_optimizer_field_is_used_and_normalised(rng):
    model = _model(rng)
    opt = dn.optim.Adam(model, lr=0.01)
    _step(model, opt, rng)
    opt.t, opt.eps, opt.betas = np.int64(7), np.float32(1e-6), [0.5, 0.75]
    twin = dn.MLP(model.layer_sizes, backend="cpu", dtype="float64", seed=None)
    twin.params[...] = model.params
    ref = dn.optim.Adam(twin, lr=0.01, eps=float(np.float32(1e-6)), betas=(0.5, 0.75))
    ref.load_state_dict(opt.state_dict())
    g = rng.standard_normal(model.n_params)
    model.grads[...] = g
    twin.grads[...] = g
    opt.step()
    ref.step()
    np.testing.assert_array_equal(model.params, twin.params)
    assert type(opt.t) is int and opt.t == 8 and opt.betas == (0.5, 0.75)


@pytest.mark.parametrize("name,field,value", [
    ("adam", "amsgrad", True), ("rmsprop", "centered", True), ("sgd", "nesterov", True)])
def test_choice_fixed_at_construction_written_later_is_refused(name, field, value, rng):
    model = _model(rng)
    opt = dn.optim.get(name, model, lr=0.01)
    setattr(opt, field, not value)  # the same value: allowed
    with pytest.raises(ConfigError, match=f"{field} is fixed when the optimizer is built"):
        setattr(opt, field, value)
    assert getattr(opt, field) is (not value)


@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_momentum_turned_on_after_construction_is_refused_not_ignored(name, rng):
    model = _model(rng)
    opt = dn.optim.get(name, model, lr=0.01)
    opt.momentum = 0.5
    before = model.params.copy()
    with pytest.raises(ConfigError, match="built with momentum=0"):
        _step(model, opt, rng)
    np.testing.assert_array_equal(model.params, before)


def test_momentum_turned_off_after_construction_is_plain_sgd(rng):
    model = _model(rng)
    opt = dn.optim.SGD(model, lr=0.1, momentum=0.9)
    _step(model, opt, rng)
    opt.momentum = 0.0
    p0, g = model.params.copy(), rng.standard_normal(model.n_params)
    model.grads[...] = g
    opt.step()
    np.testing.assert_allclose(model.params, p0 - 0.1 * g, rtol=1e-12, atol=1e-15)


# --- schedules returning garbage -----------------------------------------------------------------

@pytest.mark.parametrize("fn", [
    lambda s: float("nan"), lambda s: -0.1, lambda s: math.inf, lambda s: "0.1",
    lambda s: None, lambda s: True, lambda s: np.array([0.1]), lambda s: 1 / 0,
], ids=["nan", "negative", "inf", "str", "none", "bool", "array", "raises"])
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_schedule_returning_garbage_is_refused_before_it_is_used(fn, name, rng):
    model = _model(rng)
    opt = dn.optim.get(name, model, lr=_Curve(fn))
    before = model.params.copy()
    with pytest.raises(ConfigError, match="learning rate must be a number: for step 0"):
        _step(model, opt, rng)
    np.testing.assert_array_equal(model.params, before)
    assert opt.t == 0


def test_schedule_turning_bad_later_is_refused_at_that_step(rng):
    model = _model(rng)
    good = float(rng.uniform(0.01, 0.1))
    opt = dn.optim.SGD(model, lr=_Curve(lambda s: good if s < 5 else float("nan")))
    for _ in range(5):
        _step(model, opt, rng)
    assert np.isfinite(model.params).all()
    before = model.params.copy()
    with pytest.raises(ConfigError, match="for step 5 the schedule"):
        _step(model, opt, rng)
    np.testing.assert_array_equal(model.params, before)


def test_growing_schedule_overflowing_past_the_run_still_trains(rng):
    """exponential(gamma=4) overflows float at step ~512: a 20-step run must not care (the
    table of the next 1024 steps used to raise OverflowError at the first step)."""
    model = _model(rng)
    sched = schedules.exponential(1e-6, 4.0)
    opt = dn.optim.SGD(model, lr=sched)
    p0 = model.params.copy()
    for _ in range(20):
        model.grads[...] = 1.0
        opt.step()
    np.testing.assert_allclose(p0 - model.params, sum(sched(s) for s in range(20)), rtol=1e-12)
    opt.t = 511  # close to the overflow: the table now ends before it, and the step says why
    model.grads[...] = 1.0
    opt.step()
    with pytest.raises(ConfigError, match="OverflowError"):
        for _ in range(2):
            opt.step()


# --- fit's schedules and optimizer ---------------------------------------------------------------

@pytest.mark.parametrize("spec", [
    {"name": "cosine"}, {"name": "warmup_cosine", "warmup_steps": 3},
    {"name": "step", "gamma": 0.5}, "exponential",
])
def test_fit_schedule_by_name_uses_the_one_schedule_table(spec, rng):
    X, y = _data(rng)
    model = _model(rng)
    hist = dn.fit(model, X, y, loss="cross_entropy", optimizer="sgd", lr=0.05, epochs=3,
                  batch_size=5, schedule=spec, progress=False, train_metrics=False)
    want = schedules.build(spec, 0.05, 3 * 5)
    assert hist.history["lr"] == pytest.approx([want(0), want(5), want(10)], rel=1e-12)


@pytest.mark.parametrize("make,match", [
    (lambda: schedules.from_config(3), "must be a dict"),
    (lambda: schedules.from_config("cosine"), "must be a dict"),
    (lambda: schedules.from_config({"name": "warmup", "warmup_steps": 2}), "needs 'inner'"),
    (lambda: schedules.from_config({"name": "warmup", "inner": 3, "warmup_steps": 2}),
     "must be a dict"),
    (lambda: schedules.build({"foo": 1}, 0.1, 10), "needs a 'name'"),
])
def test_schedule_config_garbage_is_a_config_error(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_fit_refuses_an_optimizer_with_a_bad_field_before_training(rng):
    X, y = _data(rng)
    model = _model(rng)
    opt = dn.optim.Adam(model, lr=0.01)
    opt.eps = -1.0
    before = model.params.copy()

    class Seen(dn.Callback):
        began = False

        def on_train_begin(self, logs):
            Seen.began = True

    with pytest.raises(ConfigError, match="eps must be"):
        dn.fit(model, X, y, optimizer=opt, epochs=1, progress=False, callbacks=[Seen()])
    np.testing.assert_array_equal(model.params, before)
    assert not Seen.began


# --- Step ----------------------------------------------------------------------------------------

def test_step_takes_a_loss_by_name(rng):
    X, y = _data(rng)
    model = _model(rng)
    twin = dn.MLP(model.layer_sizes, backend="cpu", dtype="float64", seed=None)
    twin.params[...] = model.params
    a = Step(model, "cross_entropy", dn.optim.SGD(model, lr=0.1))
    b = Step(twin, dn.losses.get("cross_entropy"), dn.optim.SGD(twin, lr=0.1))
    assert float(a(X, y)) == float(b(X, y))
    np.testing.assert_array_equal(model.params, twin.params)
    with pytest.raises(ConfigError, match="valid losses: .*cross_entropy"):
        Step(model, "hinge", dn.optim.SGD(model, lr=0.1))


def test_step_refuses_an_optimizer_over_another_models_parameters(rng):
    model = _model(rng)
    same_shape = dn.MLP(model.layer_sizes, backend="cpu", dtype="float64", seed=1)
    with pytest.raises(ConfigError, match="built over other parameters"):
        Step(model, "cross_entropy", dn.optim.Adam(same_shape, lr=0.01))


# --- checkpoints ---------------------------------------------------------------------------------

@pytest.fixture
def previous(tmp_path, rng):
    """A good checkpoint already on disk: (path, its bytes)."""
    path = tmp_path / "m.safetensors"
    model = _model(rng)
    dn.save(model, path, optimizer=dn.optim.Adam(model, lr=0.01))
    return path, path.read_bytes()


def _other_model_optimizer(model, rng):
    return dn.optim.Adam(_model(rng, sizes=(4, 5, 3)), lr=0.01)


def _custom_schedule_optimizer(model, rng):
    return dn.optim.Adam(model, lr=_Curve(lambda s: 0.01))


def _bad_field_optimizer(model, rng):
    opt = dn.optim.Adam(model, lr=0.01)
    opt.betas = (1.5, 0.9)
    return opt


@pytest.mark.parametrize("make,match", [
    (_other_model_optimizer, "belongs to another model"),
    (_custom_schedule_optimizer, "schedule .* cannot be saved"),
    (_bad_field_optimizer, "beta1 must be"),
])
def test_save_refuses_an_optimizer_load_could_not_rebuild_and_keeps_the_previous_file(
        previous, make, match, rng):
    path, old = previous
    model = _model(rng)
    with pytest.raises(ConfigError, match=match):
        dn.save(model, path, optimizer=make(model, rng))
    assert path.read_bytes() == old
    dn.load(path, backend="cpu")


@pytest.mark.parametrize("kwargs,match", [
    (dict(model="model"), "save takes a devnet.MLP"),
    (dict(optimizer="adam"), "optimizer must be a devnet.optim.Optimizer"),
    (dict(history=5), "history must be the devnet History"),
])
def test_save_refuses_arguments_of_the_wrong_type_and_keeps_the_previous_file(
        previous, kwargs, match, rng):
    path, old = previous
    args = {"model": _model(rng), **kwargs}
    with pytest.raises(ConfigError, match=match):
        dn.save(args.pop("model"), path, **args)
    assert path.read_bytes() == old


def test_model_checkpoint_refuses_a_missing_folder_before_the_first_epoch(tmp_path, rng):
    X, y = _data(rng)
    model = _model(rng)
    before = model.params.copy()
    with pytest.raises(CheckpointError, match="does not exist"):
        dn.fit(model, X, y, epochs=2, progress=False,
               checkpoint=tmp_path / "missing" / "m.safetensors")
    np.testing.assert_array_equal(model.params, before)  # no epoch trained for nothing


def test_model_checkpoint_refuses_an_unsaveable_schedule_before_the_first_epoch(tmp_path, rng):
    X, y = _data(rng)
    model = _model(rng)
    before = model.params.copy()
    with pytest.raises(ConfigError, match="cannot be saved"):
        dn.fit(model, X, y, epochs=2, progress=False, lr=_Curve(lambda s: 0.01),
               checkpoint=tmp_path / "m.safetensors")
    np.testing.assert_array_equal(model.params, before)
    assert not (tmp_path / "m.safetensors").exists()


# --- callback arguments --------------------------------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda p: dn.EarlyStopping(monitor=5), "monitor must be the name"),
    (lambda p: dn.EarlyStopping(monitor=""), "monitor must be the name"),
    (lambda p: dn.EarlyStopping(restore_best="no"), "restore_best must be True or False"),
    (lambda p: dn.ModelCheckpoint(5), "path must be a non-empty str"),
    (lambda p: dn.ModelCheckpoint(p, save_best_only="yes"), "save_best_only must be True"),
    (lambda p: dn.callbacks.CSVLogger(5), "path must be a non-empty str"),
    (lambda p: dn.callbacks.CSVLogger(p, separator=",,"), "single character"),
    (lambda p: dn.callbacks.CSVLogger(p, append="yes"), "append must be True or False"),
    (lambda p: dn.callbacks.LearningRateScheduler(lambda epoch: 0.1), "taking two arguments"),
])
def test_callback_arguments_of_the_wrong_kind_are_config_errors(make, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        make(tmp_path / "x")


@pytest.mark.parametrize("where", ["missing/log.csv", "."])
def test_csv_logger_that_cannot_open_its_file_is_a_config_error(where, tmp_path, rng):
    X, y = _data(rng)
    logger = dn.callbacks.CSVLogger(tmp_path / where)
    with pytest.raises(ConfigError, match="CSVLogger cannot write its log"):
        dn.fit(_model(rng), X, y, epochs=1, progress=False, callbacks=[logger])


def test_resume_of_a_finished_run_with_the_same_epochs_warns_nothing_trained(rng, tmp_path):
    # epochs is the total to reach: a checkpoint past it trained nothing, silently
    X, y = _data(rng)
    ck = str(tmp_path / "ck.safetensors")
    model = _model(rng)
    dn.fit(model, X, y, epochs=2, batch_size=8, checkpoint=ck, progress=False)
    before = model.params.copy()
    with pytest.warns(UserWarning, match="already trained 2 epochs .* epochs=2.* epochs > 2"):
        hist = dn.fit(model, X, y, epochs=2, batch_size=8, resume_from=ck, progress=False)
    np.testing.assert_array_equal(model.params, before)
    assert len(hist.history["loss"]) == 2  # the checkpoint's history, nothing added


def test_predict_proba_with_a_regression_loss_is_refused_not_raw_outputs(rng):
    model = _model(rng)
    X, _ = _data(rng)
    with pytest.raises(ConfigError, match="regression loss: use predict"):
        dn.predict_proba(model, X, loss="mse")
    p = dn.predict_proba(model, X, loss="cross_entropy")
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)


def test_warmup_longer_than_the_run_is_refused_not_a_run_spent_warming_up(rng):
    X, y = _data(rng)  # 24 rows, batch 8, 2 epochs: 6 steps
    with pytest.raises(ConfigError, match="warmup_steps = 6 is not below the run's 6 steps"):
        dn.fit(_model(rng), X, y, epochs=2, batch_size=8, progress=False,
               schedule={"name": "warmup_cosine", "warmup_steps": 6})
    # the default warm-up (5% of the run, at least 1 step) still fits a one-step run
    dn.fit(_model(rng), X, y, epochs=1, batch_size=32, progress=False, schedule="warmup_cosine")


def test_save_refuses_an_optimizer_of_another_model_of_the_same_shape(rng, tmp_path):
    # its moments would be written as this model's state, and a resume would continue from them
    model, other = _model(rng), _model(rng)
    opt = dn.optim.Adam(other.parameters(), lr=1e-3)
    path = tmp_path / "m.safetensors"
    with pytest.raises(ConfigError, match="built over other parameters"):
        dn.save(model, path, optimizer=opt)
    assert not path.exists()
    dn.save(model, path, optimizer=dn.optim.Adam(model.parameters(), lr=1e-3))
    assert path.exists()
