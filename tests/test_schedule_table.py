"""One schedule table (optim.schedules.NAMED) for fit(schedule=...) and the CLI; one device
parser (backend.parse_device) for get_backend and the CLI. Issue 11."""

from __future__ import annotations

import pytest

import devnet as dn
from devnet.backend import parse_device
from devnet.cli import validate_config
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
