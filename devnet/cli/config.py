"""run.toml: its schema (every section, key, default and check), reading and validating it.

Also what every part of the command shares: the exit codes and ``UsageError``.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from pathlib import Path

from devnet.errors import ConfigError, lookup
from devnet.optim.schedules import NAMED as _NAMED_SCHEDULES

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line usage or configuration: exit code 2."""


_SCHEDULES = tuple(_NAMED_SCHEDULES)  # optim.schedules.NAMED: the table fit(schedule=) uses


#: every [section] of run.toml: key -> (default, check). A check returns the cleaned value or
#: raises ConfigError; ``None`` defaults mean "not set".
CONFIG_SCHEMA: dict[str, dict[str, tuple]] = {
    "data": {
        "dataset": ("digits", "dataset"),
        "target_column": (-1, "column"),  # an index (negative from the end) or a CSV name
        "header": ("auto", "header"),  # does a CSV's first row name the columns
        "task": ("auto", "task"),
        "test_size": (0.2, "fraction"),
        "standardize": (False, "bool"),
        "seed": (0, "seed"),
    },
    "model": {
        "hidden": ([64], "sizes"),
        "activation": ("relu", "activation"),
        "init": ("he", "init"),
        "dtype": ("float32", ("float32", "float64")),
        "seed": (0, "seed"),
        "block": ("plain", ("plain", "residual")),
        "norm": ("none", ("none", "layernorm")),  # TOML has no null
        "dropout": (0.0, "fraction"),
    },
    "train": {
        "loss": ("auto", "loss"),
        "epochs": (10, "posint"),
        "batch_size": (64, "posint"),
        "device": ("auto", "device"),
        "seed": (0, "seed"),
        "progress": ("auto", "progress"),
        "gradient_flow": (False, "bool"),  # record per-layer gradient norms, plot them
        "nproc": (1, "posint"),  # data-parallel ranks under mpiexec (devnet.distributed)
        "hosts": ("", "hosts"),  # "a,b" or a hostfile path; "" = this machine
    },
    "optimizer": {"name": ("adam", "optimizer"), "lr": (1e-3, "posfloat")},  # + its own args
    "schedule": {"name": ("constant", _SCHEDULES)},  # + the schedule's own args
    "output": {
        "dir": ("runs/devnet", "str"),
        "checkpoint": ("model.safetensors", "str"),
        "history_json": ("history.json", "str"),
        "history_csv": ("history.csv", "str"),
        "plot": ("history.png", "str"),
        "gradient_flow_plot": ("gradient_flow.png", "str"),
    },
}


def load_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # a dependency of devnet-mlp on Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UsageError("reading TOML on Python 3.10 needs tomli: pip install tomli") \
                from None
    if not path.exists():
        raise UsageError(f"config file {str(path)!r} does not exist")
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} is not a regular file")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start})") from None


@contextlib.contextmanager
def _prefixed(prefix: str, placed: str):
    """Prefixes a ConfigError raised inside with ``prefix``, unless its message starts with
    ``placed`` (it already says where it comes from)."""
    try:
        yield
    except ConfigError as exc:
        if str(exc).startswith(placed):
            raise
        raise ConfigError(f"{prefix}: {exc}") from None


def check_value(where: str, value, check):
    """``value`` checked against ``check`` (a kind name or a tuple of choices)."""
    with _prefixed(where, where):
        return _check(where, value, check)


def in_section(section: str, name: str):
    """Prefixes a ConfigError raised inside with the [section] its arguments came from."""
    return _prefixed(f"[{section}] of {name!r}", "[")


def loss_task(loss: str) -> str:
    """The task the named loss trains for: classification or regression."""
    from devnet import losses

    return "classification" if losses.get(loss).classification else "regression"


def _check(where: str, value, check):
    from devnet import data as data_mod
    from devnet import losses, validation
    from devnet.nn import activations
    from devnet.nn import init as inits
    from devnet.optim import OPTIMIZERS

    def bad(expected: str):
        return ConfigError(f"{where} = {value!r}: expected {expected}")

    if isinstance(check, tuple):
        if value not in check:
            raise ConfigError(f"{where} = {value!r}: valid choices: {', '.join(check)}")
        return value
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if check == "column":
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise bad("a column index (an integer, negative from the end) or a header name")
    elif check == "header":
        if value != "auto" and not isinstance(value, bool):
            raise bad('"auto" (decide by the first row), true or false')
    elif check == "seed":
        validation.seed(where, value)
    elif check == "progress":
        if value != "auto" and not isinstance(value, bool):
            raise bad('"auto", true or false')
    elif check == "task":
        from devnet.task import TASKS

        if value not in TASKS:
            raise ConfigError(f"{where} = {value!r}: valid tasks: {', '.join(TASKS)}")
    elif check == "posint":
        return validation.positive_int(where, value)
    elif check == "posfloat":
        return validation.positive_number(where, value)
    elif check == "fraction":
        if not is_num or not 0 <= value < 1:
            raise bad("a number in [0, 1)")
    elif check == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
    elif check == "hosts":
        if not isinstance(value, str):
            raise bad('host names "a,b" or a hostfile path ("" for this machine)')
    elif check == "str":
        if not isinstance(value, str) or not value:
            raise bad("a non-empty string")
    elif check == "sizes":
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise bad("a list of positive integers, e.g. [128, 64]")
    elif check == "dataset":
        if not isinstance(value, str) or not (
                value in data_mod.DATASETS or value.endswith((".npz", ".csv"))):
            raise ConfigError(f"{where} = {value!r}: valid datasets: "
                              f"{', '.join(sorted(data_mod.DATASETS))}, or a .npz / .csv path")
    elif check == "activation":
        if not isinstance(value, str):
            raise bad("an activation name")
        activations.get(value, hidden=True)
    elif check == "init":
        inits.get(value)
    elif check == "loss":
        if value != "auto":
            lookup(losses.LOSSES, value, "loss")
    elif check == "optimizer":
        lookup(OPTIMIZERS, value, "optimizer")
    elif check == "device":
        from devnet.backend import parse_device

        parse_device(value)  # the backend's own parser: a ConfigError listing valid devices
    return value


def _extra_args(section: str, name: str) -> dict[str, inspect.Parameter]:
    """Keyword arguments the named optimizer / schedule takes beyond the fixed keys."""
    from devnet import optim

    if section == "schedule":
        return optim.schedules.named_args(name)
    # the class's signature: an optimizer's __init__ may take *args and declare its own
    params = inspect.signature(optim.OPTIMIZERS[name]).parameters
    return {k: p for k, p in params.items() if k not in ("params", "lr")}


def validate_config(raw: dict) -> dict:
    """The full config (defaults filled in), or a ConfigError naming the bad key or value."""
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a TOML table")
    unknown = set(raw) - set(CONFIG_SCHEMA)
    if unknown:
        raise ConfigError(f"unknown section [{sorted(unknown)[0]}]; valid sections: "
                          f"{', '.join(CONFIG_SCHEMA)}")
    cfg: dict[str, dict] = {}
    for section, schema in CONFIG_SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"[{section}] must be a table")
        out = {}
        for key, (default, check) in schema.items():
            value = given.get(key, default)
            out[key] = check_value(f"{section}.{key}", value, check)
        valid = dict(schema)
        if section in ("optimizer", "schedule"):
            extra = _extra_args(section, out["name"])
            valid.update(extra)
            for key, value in given.items():
                if key in extra:
                    if isinstance(value, list):
                        value = tuple(value)  # e.g. betas = [0.9, 0.999]
                    out[key] = value
        for key in given:
            if key not in valid:
                kind = f"[{section}] of {out['name']!r}" if "name" in out else f"[{section}]"
                raise ConfigError(f"unknown key {section}.{key}; valid keys in {kind}: "
                                  f"{', '.join(valid)}")
        cfg[section] = out
    # the CSV-only keys at their defaults are harmless elsewhere (README lists every key)
    csv_only = [key for key in ("target_column", "header")
                if cfg["data"][key] != CONFIG_SCHEMA["data"][key][0]]
    if csv_only and not str(cfg["data"]["dataset"]).lower().endswith(".csv"):
        raise ConfigError(f"data.{csv_only[0]} applies to .csv files only; data.dataset = "
                          f"{cfg['data']['dataset']!r} is not one (remove the key)")
    return cfg
