"""What fit, evaluate, Step and the checkpoints do with their inputs and arguments: task
inference, sample weights, argument types, schedules ending before a resumed run, input
scaling carried across a resume, and checkpoints that load could not rebuild."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from helpers.training import Curve, class_data, small_model

import devnet as dn
from devnet import task as task_mod
from devnet.errors import CheckpointError, ConfigError
from devnet.optim import schedules
from devnet.train import ScheduleHorizonWarning, Step


def _seed(rng) -> int:
    return int(rng.integers(1 << 30))


def _blobs(rng, n=60, k=3, d=4):
    """Separable classes 0..k-1, each repeated, in float32."""
    y = np.arange(n) % k
    rng.shuffle(y)
    X = (rng.standard_normal((n, d)) + 3.0 * y[:, None]).astype(np.float32)
    return X, y


# --- task inference; never more outputs than labels ----------------------------------------

def test_infer_task_rules(rng):
    k = int(rng.integers(2, 20))
    labels = np.repeat(np.arange(k), 2 + rng.integers(0, 3, k))
    assert task_mod.infer_task(labels) == "classification"
    assert task_mod.infer_task(labels.astype(np.float64)) == "classification"  # whole floats
    assert task_mod.infer_task(rng.integers(0, 2, 40).astype(bool) | np.arange(40) % 2 == 0) \
        == "classification"
    assert task_mod.infer_task(rng.standard_normal(30)) == "regression"
    assert task_mod.infer_task(labels.reshape(-1, 1)) == "regression"  # not 1-D
    # whole-number prices: more distinct values than MAX_CLASSES
    prices = rng.integers(10_000, 10_000_000, 2 * task_mod.MAX_CLASSES + 1)
    assert task_mod.infer_task(prices) == "regression"
    assert task_mod.infer_task(prices, "classification") == "classification"  # explicit wins


def test_infer_task_refuses_ambiguous_whole_numbers_with_a_hint(rng):
    y = np.concatenate([np.repeat([0, 1], 5), [int(rng.integers(2, 9))]])  # one value once
    with pytest.raises(dn.DataError, match="task='classification' or task='regression'"):
        task_mod.infer_task(y)
    with pytest.raises(dn.DataError, match="one distinct value"):
        task_mod.infer_task(np.full(8, 3))
    with pytest.raises(dn.ConfigError, match="auto, classification, regression"):
        task_mod.infer_task(y, "clustering")
    with pytest.raises(dn.DataError, match="string.*encode them as 0..K-1"):
        task_mod.infer_task(np.array(["cat", "dog", "cat", "dog"]))


def test_whole_number_regression_targets_do_not_become_classification(rng):
    """Prices in a CSV became int labels and a softmax with max(y)+1 outputs."""
    X = rng.standard_normal((400, 3)).astype(np.float32)
    y = (100_000 + 50_000 * X[:, 0] + rng.integers(0, 1000, 400)).astype(np.int64)
    assert task_mod.infer_task(y) == "regression"
    assert task_mod.default_loss("auto", y, 1) == "mse"
    with pytest.raises(dn.DataError, match="0..K-1"):  # never max(y)+1 outputs
        task_mod.check_class_labels(y)
    model = dn.MLP([3, 1], backend="cpu", seed=_seed(rng))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # int64 -> float32 conversion notice
        hist = dn.fit(model, X, y.astype(np.float32), epochs=1, progress=False)
    assert hist.params["loss"] == "mse"


def test_fit_with_integer_labels_and_default_loss_picks_cross_entropy(rng):
    X, y = _blobs(rng)
    model = dn.MLP([4, 8, 3], backend="cpu", seed=_seed(rng))
    hist = dn.fit(model, X, y, epochs=3, batch_size=8, progress=False)
    assert hist.params["loss"] == "cross_entropy" and "accuracy" in hist.history
    binary = dn.MLP([4, 8, 1], backend="cpu", seed=_seed(rng))
    hist = dn.fit(binary, X, (y > 0).astype(np.int64), epochs=2, progress=False)
    assert hist.params["loss"] == "binary_cross_entropy"


def test_labels_minus_one_one_do_not_talk_about_n_out(rng):
    X, y = _blobs(rng, k=2)
    signed = np.where(y == 0, -1, 1)
    for n_out in (1, 2):  # 2 outputs fit 2 classes: n_out is not the problem
        model = dn.MLP([4, n_out], backend="cpu", seed=_seed(rng))
        with pytest.raises(dn.DataError) as err:
            dn.fit(model, X, signed, epochs=1, progress=False)
        msg = str(err.value)
        assert "-1" in msg and "0..K-1" in msg and "n_out" not in msg
    with pytest.raises(dn.DataError, match="-1") as err:  # no model given: no n_out either
        task_mod.check_class_labels(signed)
    assert "n_out" not in str(err.value)


def test_too_few_outputs_for_the_labels_names_n_out(rng):
    X, y = _blobs(rng, k=4)
    with pytest.raises(dn.DataError, match=r"n_out=4 outputs"):
        dn.fit(dn.MLP([4, 1], backend="cpu"), X, y, epochs=1, progress=False)
    with pytest.raises(dn.DataError, match=r"\[0, 2\).*n_out=2.*at least 4 outputs"):
        dn.fit(dn.MLP([4, 2], backend="cpu"), X, y, epochs=1, progress=False)


def test_check_class_labels_requires_every_class_when_the_caller_builds_the_model(rng):
    k = int(rng.integers(2, 6))
    assert task_mod.check_class_labels(np.repeat(np.arange(k), 2)) == k
    with pytest.raises(dn.DataError, match="every class present"):
        task_mod.check_class_labels(np.array([0, 0, 7, 7]))
    with pytest.raises(dn.DataError, match="non-integer"):
        task_mod.check_class_labels(np.array([0.0, 0.5]))


@pytest.mark.parametrize("loss,task", [("mse", "classification"),
                                       ("cross_entropy", "regression"),
                                       ("binary_cross_entropy", "regression")])
def test_explicit_loss_with_incompatible_task_is_a_config_error(rng, loss, task):
    X, y = _blobs(rng)
    with pytest.raises(dn.ConfigError, match=f"task={task!r}"):
        dn.fit(dn.MLP([4, 3], backend="cpu"), X, y, loss=loss, task=task, epochs=1,
               progress=False)


def test_fit_unknown_task_lists_the_tasks(rng):
    X, y = _blobs(rng)
    with pytest.raises(dn.ConfigError, match="valid tasks: auto, classification, regression"):
        dn.fit(dn.MLP([4, 3], backend="cpu"), X, y, task="binary", epochs=1, progress=False)


# --- sample weights -------------------------------------------------------------------------

def _weighted_run(X, y, w, seed):
    model = dn.MLP([4, 6, 1], backend="cpu", seed=seed)
    hist = dn.fit(model, X, y, loss="mse", sample_weight=w, epochs=2, batch_size=16, seed=seed,
                  progress=False)
    return model.params.copy(), hist["loss"]


@pytest.mark.parametrize("scale,dtype", [(1e38, np.float32), (1e39, np.float64),
                                         (1e300, np.float64), (1e-40, np.float32)])
def test_sample_weight_extreme_scale_trains_like_unit_weights(rng, scale, dtype):
    """float32 1e38 overflowed the mean (every weight 0); float64 > float32 max became inf."""
    X = rng.standard_normal((48, 4)).astype(np.float32)
    y = rng.standard_normal(48).astype(np.float32)
    base = rng.uniform(0.5, 2.0, 48)
    seed = _seed(rng)
    ref_params, ref_loss = _weighted_run(X, y, base, seed)
    params, loss = _weighted_run(X, y, (base * scale).astype(dtype), seed)
    assert np.isfinite(loss).all() and loss[0] > 0
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)
    np.testing.assert_allclose(params, ref_params, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("bad,match", [
    (lambda w: np.zeros_like(w), "all zero"),
    (lambda w: np.where(np.arange(len(w)) == 3, -1.0, w), "sample_weight must be >= 0"),
    (lambda w: np.where(np.arange(len(w)) == 5, np.nan, w), "sample_weight.*NaN/Inf"),
    (lambda w: np.where(np.arange(len(w)) == 5, np.inf, w), "sample_weight.*NaN/Inf"),
    (lambda w: w[:-1], r"sample_weight must have shape \(32,\)"),
])
def test_bad_sample_weight_is_a_data_error(rng, bad, match):
    X = rng.standard_normal((32, 4)).astype(np.float32)
    w = rng.uniform(0.1, 1.0, 32)
    with pytest.raises(dn.DataError, match=match):
        dn.fit(dn.MLP([4, 1], backend="cpu"), X, X[:, 0], loss="mse", sample_weight=bad(w),
               epochs=1, progress=False)


def test_sample_weight_zero_on_every_training_row_after_split(rng):
    X = rng.standard_normal((20, 4)).astype(np.float32)
    w = np.zeros(20)
    w[-5:] = rng.uniform(0.5, 1.0, 5)  # only validation rows weigh anything
    with pytest.raises(dn.DataError, match="sample_weight is zero for every training sample"):
        dn.fit(dn.MLP([4, 1], backend="cpu"), X, X[:, 0], loss="mse", sample_weight=w,
               validation_split=0.25, epochs=1, progress=False)


# --- schedule and hyper-parameter arguments -------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda: schedules.step(0.1, step_size=0.5), "step_size must be a whole number"),
    (lambda: schedules.step(0.1, step_size=2.5), "step_size must be a whole number"),
    (lambda: schedules.cosine(0.1, total_steps=0.5), "total_steps must be a whole number"),
    (lambda: schedules.warmup_cosine(0.1, 0.5, 10), "warmup_steps must be a whole number"),
    (lambda: schedules.warmup(schedules.constant(0.1), True), "warmup_steps"),
    (lambda: schedules.step(0.1, 3, gamma=float("nan")), "gamma must be a finite number"),
    (lambda: schedules.exponential(0.1, gamma=0), "gamma must be a finite number > 0"),
    (lambda: schedules.cosine(0.1, 10, min_lr=0.2), "min_lr must be .* <= 0.1"),
    (lambda: schedules.cosine("0.1", 10), "lr must be a finite number"),
    (lambda: schedules.warmup(schedules.constant(0.1), 3, start_factor=2), "start_factor"),
    (lambda: schedules.from_config({"name": "step", "lr": 0.1, "step_size": 0.5}),
     "step_size"),
])
def test_fractional_or_bad_schedule_arguments_fail_at_construction(make, match):
    """step_size=0.5 was accepted, then ZeroDivisionError at the first step."""
    with pytest.raises(dn.ConfigError, match=match):
        make()


def test_numpy_scalar_hyperparameters_are_accepted(rng):
    sched = schedules.warmup_cosine(np.float32(1e-2), np.int64(2), np.int64(20),
                                    min_lr=np.float64(0))
    assert sched(np.int64(5)) > 0 and isinstance(sched.config()["warmup_steps"], int)
    assert schedules.step(np.float32(0.1), np.int32(3), np.float32(0.5)).step_size == 3
    assert schedules.from_config(sched.config())(7) == sched(7)
    X, y = _blobs(rng)
    model = dn.MLP([4, 3], backend="cpu", seed=_seed(rng))
    opt = dn.optim.Adam(model, lr=np.float32(1e-3), betas=(np.float32(0.9), np.float64(0.99)),
                        eps=np.float32(1e-7), weight_decay=np.float32(0), amsgrad=np.bool_(True))
    hist = dn.fit(model, X, y, optimizer=opt, epochs=np.int64(2), batch_size=np.int32(16),
                  seed=np.int64(3), validation_split=np.float32(0.25), shuffle=np.bool_(True),
                  progress=False, callbacks=[dn.EarlyStopping(patience=np.int64(2),
                                                              min_delta=np.float32(0))])
    assert len(hist["loss"]) == 2
    hist = dn.fit(dn.MLP([4, 3], backend="cpu"), X, y, lr=np.float32(1e-3), schedule="cosine",
                  epochs=np.int64(1), progress=False)
    assert np.isfinite(hist["loss"]).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(shuffle="no"), "shuffle must be True or False"),
    (dict(shuffle=0), "shuffle must be True or False"),
    (dict(guard="off"), "guard must be True or False"),
    (dict(train_metrics=None), "train_metrics must be True or False"),
    (dict(extend_schedule="yes"), "extend_schedule must be True or False"),
])
def test_non_bool_flags_are_rejected(rng, kwargs, match):
    X, y = _blobs(rng)
    with pytest.raises(dn.ConfigError, match=match):
        dn.fit(dn.MLP([4, 3], backend="cpu"), X, y, epochs=1, progress=False, **kwargs)


@pytest.mark.parametrize("name,kwargs", [("sgd", dict(momentum=0.9, nesterov="no")),
                                         ("adam", dict(amsgrad="no")),
                                         ("rmsprop", dict(centered=1))])
def test_optimizer_flags_must_be_bool(name, kwargs):
    with pytest.raises(dn.ConfigError, match="must be True or False"):
        dn.optim.get(name, dn.MLP([2, 2], backend="cpu"), **kwargs)


# --- resuming past a finished schedule -----------------------------------------------------

def _resume_setup(rng, tmp_path):
    X, y = _blobs(rng, n=48)
    ck = tmp_path / "run.safetensors"
    seed = _seed(rng)

    def run(epochs, **kw):
        model = dn.MLP([4, 8, 3], backend="cpu", seed=seed)
        hist = dn.fit(model, X, y, loss="cross_entropy", lr=1e-2, schedule="warmup_cosine",
                      epochs=epochs, batch_size=16, seed=seed, progress=False, **kw)
        return model, hist

    return run, ck


def test_resume_after_finished_schedule_warns_instead_of_training_at_lr_0(rng, tmp_path):
    run, ck = _resume_setup(rng, tmp_path)
    run(4, checkpoint=ck)  # 4 epochs x 3 steps: the cosine reaches 0 at step 12
    state = dn.io.read_metadata(ck)["train_state"]
    assert state["total_steps"] == 12 and state["epochs"] == 4
    with pytest.warns(ScheduleHorizonWarning) as rec:
        _, hist = run(6, resume_from=ck)
    msg = str(rec[0].message)
    assert "planned for 12 steps" in msg and "lr 0" in msg and "extend_schedule=True" in msg
    assert hist["lr"][4:] == [0.0, 0.0]  # what the warning announced
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleHorizonWarning)
        run(4, resume_from=ck)  # not past the horizon: silent


def test_resume_with_extend_schedule_stretches_it_over_the_new_epochs(rng, tmp_path):
    run, ck = _resume_setup(rng, tmp_path)
    run(4, checkpoint=ck)
    ck2 = ck.with_name("extended.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleHorizonWarning)
        model, hist = run(8, resume_from=ck, extend_schedule=True, checkpoint=ck2)
    # from the resume point on, the lr of a run planned for 8 epochs (24 steps) from the start
    planned = schedules.warmup_cosine(1e-2, max(1, 24 // 20), 24)
    assert hist["lr"][4:] == pytest.approx([planned(s) for s in (12, 15, 18, 21)], rel=1e-12)
    assert all(lr > 0 for lr in hist["lr"][4:])
    assert dn.io.read_metadata(ck2)["train_state"]["total_steps"] == 24
    # the stretched schedule is in the new checkpoint: resuming it again is not "past the end"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleHorizonWarning)
        run(8, resume_from=ck2)


def test_schedule_extended_formulas():
    cos = schedules.cosine(0.1, 30, min_lr=0.01)
    assert cos.extended(30, 60).total_steps == 60 and cos.extended(30, 60).min_lr == 0.01
    wc = schedules.warmup_cosine(0.1, 5, 25)  # cosine over 20 steps after 5 of warm-up
    ext = wc.extended(25, 45)
    assert ext.warmup_steps == 5 and ext.inner.total_steps == 40 and ext.horizon == 45
    assert schedules.step(0.1, 4).extended(12, 24).step_size == 8
    exp = schedules.exponential(0.1, 0.5).extended(10, 20)
    assert exp(20) == pytest.approx(0.1 * 0.5**10, rel=1e-12)
    const = schedules.constant(0.1)
    assert const.extended(10, 20) is const and const.horizon is None


def test_fresh_fit_with_a_schedule_ending_before_the_run_warns(rng):
    X, y = _blobs(rng, n=32)
    model = dn.MLP([4, 3], backend="cpu")
    with pytest.warns(ScheduleHorizonWarning, match=r"reaches lr 0 at step 4.*runs 8 steps"):
        dn.fit(model, X, y, lr=schedules.cosine(1e-2, 4), epochs=2, batch_size=8,
               progress=False)
    with warnings.catch_warnings():  # min_lr > 0 after the horizon is a choice, not a waste
        warnings.simplefilter("error", ScheduleHorizonWarning)
        dn.fit(model, X, y, lr=schedules.cosine(1e-2, 4, min_lr=1e-4), epochs=2, batch_size=8,
               progress=False)


def test_lr_schedule_cosine_value_math():
    """The stretched cosine's value at the resume step matches the formula."""
    cos = schedules.cosine(0.2, 10).extended(10, 40)
    assert cos(10) == pytest.approx(0.1 * (1 + math.cos(math.pi * 10 / 40)), rel=1e-12)


def test_evaluate_auto_loss_follows_fits_rule(rng):
    X, y = _blobs(rng)
    model = dn.MLP([4, 8, 3], backend="cpu", seed=_seed(rng))
    hist = dn.fit(model, X, y, epochs=2, progress=False)
    auto = dn.evaluate(model, X, y, loss="auto")
    assert auto == dn.evaluate(model, X, y, loss=hist.params["loss"])
    assert "accuracy" in auto


# --- input standardization carried across a resume --------------------------------------------

def test_resume_into_a_fresh_model_keeps_the_checkpoints_input_scaling(rng, tmp_path):
    """A fresh model resumed from a standardized run takes the run's input scaling; a model
    scaling its inputs otherwise is refused."""
    X, y = _blobs(rng)
    mean, scale = X.mean(0).astype(np.float64), X.std(0).astype(np.float64) + 0.5
    model = dn.MLP([4, 8, 3], backend="cpu", seed=1)
    model.set_input_scaling(mean, scale)
    path = tmp_path / "run.safetensors"
    dn.fit(model, X, y, epochs=1, batch_size=16, checkpoint=path, progress=False)
    fresh = dn.MLP([4, 8, 3], backend="cpu", seed=1)
    dn.fit(fresh, X, y, epochs=2, batch_size=16, resume_from=path, progress=False)
    np.testing.assert_array_equal(fresh.input_scaling[0], mean)
    np.testing.assert_array_equal(fresh.input_scaling[1], scale)
    other = dn.MLP([4, 8, 3], backend="cpu", seed=1)
    other.set_input_scaling(mean + 1.0, scale)
    with pytest.raises(dn.CheckpointError, match="standardizes its inputs"):
        dn.fit(other, X, y, epochs=2, batch_size=16, resume_from=path, progress=False)


def test_poisson_metrics_score_the_predicted_mean_not_its_log(rng):
    """r2/mae of a log-link (poisson) model score the predicted mean, not log(mean)."""
    X = rng.standard_normal((64, 3))
    y = rng.poisson(np.exp(0.5 * X[:, :1] + 1.0)).astype(np.float64)
    model = dn.MLP([3, 1], dtype="float64", backend="cpu", seed=0)
    model.layers[0].W[...] = np.array([[0.5], [0.0], [0.0]])
    model.layers[0].b[...] = 1.0
    scores = dn.evaluate(model, X, y, loss="poisson")
    mean = np.exp(0.5 * X[:, :1] + 1.0)
    assert scores["mae"] == pytest.approx(np.abs(mean - y).mean(), rel=1e-12)


def test_data_parallel_fit_with_a_foreign_comm_is_refused_by_name(rng):
    """Dropout under ``comm`` is keyed by the global row now
    (tests/distributed/test_distributed.py checks 2 ranks equal 1 with dropout); what is refused
    is a comm that is not devnet's."""
    from devnet.distributed import DistributedError

    X, y = _blobs(rng)
    model = dn.MLP([4, 8, 3], dropout=0.2, backend="cpu", seed=1)
    with pytest.raises(DistributedError, match="devnet.distributed.init"):
        dn.fit(model, X, y, epochs=1, batch_size=16, progress=False, comm=object())




def test_step_takes_a_loss_by_name(rng):
    X, y = class_data(rng)
    model = small_model(rng)
    twin = dn.MLP(model.layer_sizes, backend="cpu", dtype="float64", seed=None)
    twin.params[...] = model.params
    a = Step(model, "cross_entropy", dn.optim.SGD(model, lr=0.1))
    b = Step(twin, dn.losses.get("cross_entropy"), dn.optim.SGD(twin, lr=0.1))
    assert float(a(X, y)) == float(b(X, y))
    np.testing.assert_array_equal(model.params, twin.params)
    with pytest.raises(ConfigError, match="valid losses: .*cross_entropy"):
        Step(model, "hinge", dn.optim.SGD(model, lr=0.1))


def test_step_refuses_an_optimizer_over_another_models_parameters(rng):
    model = small_model(rng)
    same_shape = dn.MLP(model.layer_sizes, backend="cpu", dtype="float64", seed=1)
    with pytest.raises(ConfigError, match="built over other parameters"):
        Step(model, "cross_entropy", dn.optim.Adam(same_shape, lr=0.01))


@pytest.fixture
def previous(tmp_path, rng):
    """A good checkpoint already on disk: (path, its bytes)."""
    path = tmp_path / "m.safetensors"
    model = small_model(rng)
    dn.save(model, path, optimizer=dn.optim.Adam(model, lr=0.01))
    return path, path.read_bytes()


def _other_model_optimizer(model, rng):
    return dn.optim.Adam(small_model(rng, sizes=(4, 5, 3)), lr=0.01)


def _custom_schedule_optimizer(model, rng):
    return dn.optim.Adam(model, lr=Curve(lambda s: 0.01))


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
    model = small_model(rng)
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
    args = {"model": small_model(rng), **kwargs}
    with pytest.raises(ConfigError, match=match):
        dn.save(args.pop("model"), path, **args)
    assert path.read_bytes() == old


def test_model_checkpoint_refuses_a_missing_folder_before_the_first_epoch(tmp_path, rng):
    X, y = class_data(rng)
    model = small_model(rng)
    before = model.params.copy()
    with pytest.raises(CheckpointError, match="does not exist"):
        dn.fit(model, X, y, epochs=2, progress=False,
               checkpoint=tmp_path / "missing" / "m.safetensors")
    np.testing.assert_array_equal(model.params, before)  # no epoch trained for nothing


def test_model_checkpoint_refuses_an_unsaveable_schedule_before_the_first_epoch(tmp_path, rng):
    X, y = class_data(rng)
    model = small_model(rng)
    before = model.params.copy()
    with pytest.raises(ConfigError, match="cannot be saved"):
        dn.fit(model, X, y, epochs=2, progress=False, lr=Curve(lambda s: 0.01),
               checkpoint=tmp_path / "m.safetensors")
    np.testing.assert_array_equal(model.params, before)
    assert not (tmp_path / "m.safetensors").exists()


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
    X, y = class_data(rng)
    logger = dn.callbacks.CSVLogger(tmp_path / where)
    with pytest.raises(ConfigError, match="CSVLogger cannot write its log"):
        dn.fit(small_model(rng), X, y, epochs=1, progress=False, callbacks=[logger])


def test_resume_of_a_finished_run_with_the_same_epochs_warns_nothing_trained(rng, tmp_path):
    # epochs is the total to reach: a checkpoint past it trained nothing, silently
    X, y = class_data(rng)
    ck = str(tmp_path / "ck.safetensors")
    model = small_model(rng)
    dn.fit(model, X, y, epochs=2, batch_size=8, checkpoint=ck, progress=False)
    before = model.params.copy()
    with pytest.warns(UserWarning, match="already trained 2 epochs .* epochs=2.* epochs > 2"):
        hist = dn.fit(model, X, y, epochs=2, batch_size=8, resume_from=ck, progress=False)
    np.testing.assert_array_equal(model.params, before)
    assert len(hist.history["loss"]) == 2  # the checkpoint's history, nothing added


def test_predict_proba_with_a_regression_loss_is_refused_not_raw_outputs(rng):
    model = small_model(rng)
    X, _ = class_data(rng)
    with pytest.raises(ConfigError, match="regression loss: use predict"):
        dn.predict_proba(model, X, loss="mse")
    p = dn.predict_proba(model, X, loss="cross_entropy")
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)


def test_warmup_longer_than_the_run_is_refused_not_a_run_spent_warming_up(rng):
    X, y = class_data(rng)  # 24 rows, batch 8, 2 epochs: 6 steps
    with pytest.raises(ConfigError, match="warmup_steps = 6 is not below the run's 6 steps"):
        dn.fit(small_model(rng), X, y, epochs=2, batch_size=8, progress=False,
               schedule={"name": "warmup_cosine", "warmup_steps": 6})
    # the default warm-up (5% of the run, at least 1 step) still fits a one-step run
    dn.fit(small_model(rng), X, y, epochs=1, batch_size=32, progress=False,
           schedule="warmup_cosine")


def test_save_refuses_an_optimizer_of_another_model_of_the_same_shape(rng, tmp_path):
    # its moments would be written as this model's state, and a resume would continue from them
    model, other = small_model(rng), small_model(rng)
    opt = dn.optim.Adam(other.parameters(), lr=1e-3)
    path = tmp_path / "m.safetensors"
    with pytest.raises(ConfigError, match="built over other parameters"):
        dn.save(model, path, optimizer=opt)
    assert not path.exists()
    dn.save(model, path, optimizer=dn.optim.Adam(model.parameters(), lr=1e-3))
    assert path.exists()
