"""run.toml: its schema, reading and validating it; the command's exit codes and
``UsageError``."""

from __future__ import annotations

import contextlib
import inspect
import sys
from pathlib import Path

from devnet import losses, optim, validation
from devnet.backend import parse_device
from devnet.data import DATASETS
from devnet.errors import ConfigError, lookup
from devnet.nn import activations
from devnet.nn import init as inits
from devnet.task import TASKS

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line usage or configuration: exit code 2."""


#: every [section] of run.toml: key -> (default, check: a name in ``_CHECKS`` or a tuple of
#: choices)
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
    "schedule": {"name": ("constant", tuple(optim.schedules.NAMED))},  # + its own args
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
    """Prefixes a ConfigError raised inside with ``prefix``, unless it starts with ``placed``."""
    try:
        yield
    except ConfigError as exc:
        if str(exc).startswith(placed):
            raise
        raise ConfigError(f"{prefix}: {exc}") from None


def check_value(where: str, value, check):
    """``value`` checked against ``check`` (a name in ``_CHECKS`` or a tuple of choices)."""
    with _prefixed(where, where):
        if isinstance(check, tuple):
            return _one_of(check)(where, value)
        return _CHECKS[check](where, value)


def in_section(section: str, name: str):
    """Prefixes a ConfigError raised inside with the [section] its arguments came from."""
    return _prefixed(f"[{section}] of {name!r}", "[")


def loss_task(loss: str) -> str:
    """The task the named loss trains for: classification or regression."""
    return "classification" if losses.get(loss).classification else "regression"


# Each check takes (where, value) and returns the value to keep, or raises a ConfigError.

def _expect(accepts, expected: str):
    def check(where: str, value):
        if not accepts(value):
            raise ConfigError(f"{where} = {value!r}: expected {expected}")
        return value
    return check


def _one_of(choices: tuple, what: str = "choices"):
    def check(where: str, value):
        if value not in choices:
            raise ConfigError(f"{where} = {value!r}: valid {what}: {', '.join(choices)}")
        return value
    return check


def _kept(library_check):
    """The check by a library lookup (which raises listing the valid names)."""
    def check(where: str, value):
        library_check(value)
        return value
    return check


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dataset(where: str, value):
    if not isinstance(value, str) or not (
            value in DATASETS or value.endswith((".npz", ".csv"))):
        raise ConfigError(f"{where} = {value!r}: valid datasets: "
                          f"{', '.join(sorted(DATASETS))}, or a .npz / .csv path")
    return value


def _activation(where: str, value):
    if not isinstance(value, str):
        raise ConfigError(f"{where} = {value!r}: expected an activation name")
    activations.get(value, hidden=True)
    return value


_CHECKS = {
    "column": _expect(lambda v: isinstance(v, (int, str)) and not isinstance(v, bool)
                      and v != "",
                      "a column index (an integer, negative from the end) or a header name"),
    "header": _expect(lambda v: v == "auto" or isinstance(v, bool),
                      '"auto" (decide by the first row), true or false'),
    "progress": _expect(lambda v: v == "auto" or isinstance(v, bool), '"auto", true or false'),
    "fraction": _expect(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "bool": _expect(lambda v: isinstance(v, bool), "true or false"),
    "hosts": _expect(lambda v: isinstance(v, str),
                     'host names "a,b" or a hostfile path ("" for this machine)'),
    "str": _expect(lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "sizes": _expect(lambda v: isinstance(v, list) and all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in v),
        "a list of positive integers, e.g. [128, 64]"),
    "seed": validation.seed,
    "posint": validation.positive_int,
    "posfloat": validation.positive_number,
    "task": _one_of(TASKS, "tasks"),
    "dataset": _dataset,
    "activation": _activation,
    "init": _kept(inits.get),
    "loss": _kept(lambda v: v == "auto" or lookup(losses.LOSSES, v, "loss")),
    "optimizer": _kept(lambda v: lookup(optim.OPTIMIZERS, v, "optimizer")),
    "device": _kept(parse_device),
}


def _extra_args(section: str, name: str) -> dict[str, inspect.Parameter]:
    """Keyword arguments the named optimizer / schedule takes beyond the fixed keys."""
    if section == "schedule":
        return optim.schedules.named_args(name)
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
        out = {key: check_value(f"{section}.{key}", given.get(key, default), check)
               for key, (default, check) in schema.items()}
        valid = dict(schema)
        if section in ("optimizer", "schedule"):
            extra = _extra_args(section, out["name"])
            valid.update(extra)
            for key, value in given.items():
                if key in extra:  # a TOML list is a tuple argument, e.g. betas = [0.9, 0.999]
                    out[key] = tuple(value) if isinstance(value, list) else value
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
