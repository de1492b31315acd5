"""One schedule table (optim.schedules.NAMED) for fit(schedule=...) and the CLI; one device
parser (backend.parse_device) for get_backend and the CLI.

A schedule returning garbage, or turning bad later, is refused at the step that would use it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.training import Curve, class_data, small_model

import devnet as dn
from devnet.backend import parse_device
from devnet.cli import validate_config
from devnet.errors import ConfigError
from devnet.optim import schedules


@pytest.mark.parametrize("name", sorted(schedules.NAMED))
def test_cli_and_fit_schedule_names_mean_the_same(name):
    """The CLI's "step" / "warmup_cosine" were built from other defaults than fit's."""
    from devnet.train import setup

    lr, total = 0.05, 240
    cli = schedules.build({"name": name}, lr, total)
    fit = setup._schedule(name, lr, total)
    assert cli.config() == fit.config()
    assert [cli(t) for t in (0, 7, 100, 239)] == [fit(t) for t in (0, 7, 100, 239)]


def test_named_schedule_overrides_and_errors():
    s = schedules.build({"name": "step", "step_size": 10, "gamma": 0.5}, 1.0, 100)
    assert s(9) == 1.0 and s(10) == 0.5
    s = schedules.build({"name": "cosine", "total_steps": 50}, 1.0, 100)
    assert s.config()["total_steps"] == 50
    with pytest.raises(dn.ConfigError, match="valid: total_steps, step_size, gamma"):
        schedules.build({"name": "step", "size": 3}, 1.0, 100)
    with pytest.raises(dn.ConfigError, match="valid schedules: constant, cosine"):
        schedules.build("linear", 1.0, 100)
    # a Schedule.config() dict still round-trips
    w = schedules.warmup_cosine(0.1, 5, 50)
    assert schedules.build(w.config(), 1.0, 100).config() == w.config()


def test_cli_config_accepts_a_step_schedule_without_step_size():
    cfg = validate_config({"schedule": {"name": "step"}})
    assert cfg["schedule"] == {"name": "step"}
    with pytest.raises(dn.ConfigError, match="valid keys"):
        validate_config({"schedule": {"name": "step", "warmup_steps": 3}})


@pytest.mark.parametrize("spec,parsed", [("auto", ("auto", None)), (" CPU ", ("cpu", None)),
                                         ("cuda", ("cuda", 0)), ("cuda:3", ("cuda", 3))])
def test_parse_device(spec, parsed):
    assert parse_device(spec) == parsed


@pytest.mark.parametrize("spec", ["tpu", "cuda:", "cuda:-1", "gpu0", 3, None])
def test_parse_device_refuses(spec):
    with pytest.raises(dn.ConfigError, match="valid devices: auto, cpu, cuda, cuda:N"):
        parse_device(spec)


def _step(model, opt, rng):
    model.grads[...] = rng.standard_normal(model.n_params)
    opt.step()


@pytest.mark.parametrize("fn", [
    lambda s: float("nan"), lambda s: -0.1, lambda s: math.inf, lambda s: "0.1",
    lambda s: None, lambda s: True, lambda s: np.array([0.1]), lambda s: 1 / 0,
], ids=["nan", "negative", "inf", "str", "none", "bool", "array", "raises"])
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_schedule_returning_garbage_is_refused_before_it_is_used(fn, name, rng):
    model = small_model(rng)
    opt = dn.optim.get(name, model, lr=Curve(fn))
    before = model.params.copy()
    with pytest.raises(ConfigError, match="learning rate must be a number: for step 0"):
        _step(model, opt, rng)
    np.testing.assert_array_equal(model.params, before)
    assert opt.t == 0


def test_schedule_turning_bad_later_is_refused_at_that_step(rng):
    model = small_model(rng)
    good = float(rng.uniform(0.01, 0.1))
    opt = dn.optim.SGD(model, lr=Curve(lambda s: good if s < 5 else float("nan")))
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
    model = small_model(rng)
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


@pytest.mark.parametrize("spec", [
    {"name": "cosine"}, {"name": "warmup_cosine", "warmup_steps": 3},
    {"name": "step", "gamma": 0.5}, "exponential",
])
def test_fit_schedule_by_name_uses_the_one_schedule_table(spec, rng):
    X, y = class_data(rng)
    model = small_model(rng)
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
    X, y = class_data(rng)
    model = small_model(rng)
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
