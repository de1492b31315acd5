"""The ``devnet`` command: info, train, eval, predict, bench, profile.

Over 400 lines: five subcommands and the run.toml schema; the work is in fit/data/io.

Exit codes: 0 success, 2 usage, configuration or data error, 1 runtime failure. Errors print
one line on stderr (``devnet: error: ...``); ``--debug`` prints the traceback too. The command
parses and delegates: data files are read by ``devnet.data``, the task and default loss are
decided by ``devnet.task`` (the same rules as ``dn.fit``), checkpoints by ``devnet.io``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import importlib
import inspect
import json
import math
import os
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from devnet.callbacks import ModelCheckpoint
from devnet.errors import ConfigError, DataError, DevnetError, lookup
from devnet.optim.schedules import NAMED as _NAMED_SCHEDULES

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line usage or configuration: exit code 2."""


# --- configuration --------------------------------------------------------------------------

_SCHEDULES = tuple(_NAMED_SCHEDULES)  # optim.schedules.NAMED: the table fit(schedule=) uses
_OUTPUTS = ("checkpoint", "history_json", "history_csv", "plot", "gradient_flow_plot")
#: the run folder's resumable training state, rewritten at the end of every epoch
_LAST = "last.safetensors"
#: what --resume may change: how long and where the run trains, how it shows progress
_RESUMABLE_CHANGES = ("train.epochs", "train.device", "train.progress")

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


def _load_toml(path: Path) -> dict:
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


def _check_value(where: str, value, check):
    """``value`` checked against ``check`` (a kind name or a tuple of choices)."""
    try:
        return _check(where, value, check)
    except ConfigError as exc:
        if str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}") from None


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

    if section == "optimizer":
        fn = optim.OPTIMIZERS[name].__init__
        skip = {"self", "params", "lr"}
    else:
        return optim.schedules.named_args(name)
    return {k: p for k, p in inspect.signature(fn).parameters.items() if k not in skip}


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
            out[key] = _check_value(f"{section}.{key}", value, check)
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


# --- subcommands ----------------------------------------------------------------------------

def cmd_info(args) -> int:
    """Devices, versions, and why CUDA is unavailable when it is."""
    import importlib.metadata as md

    import devnet
    from devnet.backend import available_backends
    from devnet.backend import cuda as cuda_mod

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    info = {"devnet": devnet.__version__, "python": sys.version.split()[0],
            "numpy": np.__version__, "numba": version("numba"),
            "numba-cuda": version("numba-cuda"),
            "cupy": getattr(cuda_mod.cupy, "__version__", "not installed")}
    reason = cuda_mod.unavailable_reason(0)
    if cuda_mod.cupy is not None:
        try:
            v = cuda_mod.cupy.cuda.runtime.driverGetVersion()
            info["cuda_driver"] = f"{v // 1000}.{v % 1000 // 10}"
        except Exception as exc:  # no driver
            info["cuda_driver"] = f"unavailable ({type(exc).__name__})"
    else:
        info["cuda_driver"] = "unknown (CuPy not installed)"
    info["devices"] = available_backends()
    info["cuda"] = "available" if reason is None else f"unavailable: {reason}"
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    width = max(map(len, info))
    for key, value in info.items():
        value = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:<{width}}  {value}")
    return EXIT_OK


def _save_api():
    try:
        from devnet import io as dn_io
    except ImportError as exc:
        raise DevnetError(f"checkpoints need devnet.io, which failed to import ({exc})") \
            from None
    return dn_io


#: the plot formats matplotlib writes without extra packages
_PLOT_FORMATS = (".png", ".pdf", ".svg")


def _same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one existing file (links and ``..`` resolved)."""
    try:
        return Path(a).exists() and Path(b).exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _name_max(path: Path) -> int:
    """The longest file name, in bytes, that the file system holding ``path`` (or the nearest
    existing folder above it) takes; 255 (Linux, macOS, Windows) where it cannot be asked."""
    for folder in (path, *path.parents):
        try:
            if not folder.is_dir():
                continue
            return os.pathconf(folder, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):  # AttributeError: no pathconf (Windows)
            continue
    return 255


def _check_name_lengths(path: Path, what: str, remedy: str) -> None:
    """UsageError unless every name in ``path`` fits the file system's limit: the OSError
    would otherwise come when writing, after the work (training) is done."""
    limit = _name_max(path)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > limit:
            shown = part if len(part) <= 40 else part[:37] + "..."
            raise UsageError(f"{what}: the name {shown!r} is {size} bytes, over this file "
                             f"system's limit of {limit}: {remedy}")


def _check_outputs(o: dict, inputs: dict[str, Path] | None = None) -> Path:
    """The output folder, created, after checking that every output can be written there.

    Runs before training, so a bad ``--out`` or file name costs nothing (ConfigError, exit 2).
    ``inputs`` (role -> path: the config, the data file) must not be overwritten by an output.
    """
    names = {key: o[key] for key in _OUTPUTS}
    names["run"] = "run.json"
    names["last"] = _LAST  # the resumable state: output.checkpoint must not take its name
    for key, name in names.items():
        if Path(name).name != name or name in (".", "..") or "\\" in name:
            raise ConfigError(f"output.{key} = {name!r}: expected a plain file name (no folder; "
                              "the folder is output.dir / --out)")
    if len(set(names.values())) < len(names):
        raise ConfigError(f"output file names must differ: {', '.join(names.values())}")
    suffix = Path(names["plot"]).suffix.lower()
    if suffix not in _PLOT_FORMATS:
        raise ConfigError(f"output.plot = {names['plot']!r}: valid formats: "
                          f"{', '.join(_PLOT_FORMATS)}")
    out = Path(o["dir"]).expanduser()
    _check_name_lengths(out, "output folder", "choose a shorter output.dir / --out")
    for key, name in names.items():
        _check_name_lengths(out / name, f"output.{key}", "choose a shorter name")
    try:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output folder {str(out)!r} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the path as a whole may be too long, or a folder unreadable
        raise ConfigError(f"cannot create the output folder {str(out)!r}: "
                          f"{exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {str(out)!r} is not writable")
    for key, name in names.items():
        target, what = out / name, (name if key in ("run", "last") else f"output.{key}")
        try:
            if target.is_dir():
                raise ConfigError(f"{what}: {str(target)!r} is an existing folder")
            if target.exists() and not os.access(target, os.W_OK):
                raise ConfigError(f"{what}: {str(target)!r} exists and is not writable")
        except OSError as exc:  # e.g. the whole path is over the system's limit
            raise ConfigError(f"{what}: cannot write {str(target)!r}: "
                              f"{exc.strerror or exc}") from None
        for role, path in (inputs or {}).items():
            if _same_file(target, path):
                raise ConfigError(f"{what}: {str(target)!r} is the run's {role}; writing it "
                                  "would destroy it (choose another file name or output.dir)")
    return out


def _resolve_dataset(spec: str, config_path: Path) -> str:
    """A bundled name as is; a file path relative to the config file's folder, made absolute."""
    from devnet import data as data_mod

    if spec in data_mod.DATASETS:
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = config_path.resolve().parent / path
    return str(path)


def _read_run_json(path: Path, strict: bool) -> dict | None:
    """run.json as a dict; None if it is missing (or broken, unless ``strict``)."""
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(run, dict) or not isinstance(run.get("config", {}), dict):
            raise ValueError("expected an object with a 'config' table")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if strict:
            raise UsageError(f"{path}: broken run.json ({exc}); cannot check that the config "
                             "is the run's: use --overwrite to start the run again") from None
        return None
    return run


def _config_changes(recorded: dict, cfg: dict) -> list[str]:
    """The ``section.key`` entries in which ``cfg`` differs from a run's recorded config,
    less what a resumed run may change (``_RESUMABLE_CHANGES``) and output.dir (the folder
    is the run's by construction, however it is spelled)."""
    now = json.loads(json.dumps(cfg, default=str))  # as run.json records it
    changed = []
    for section in sorted(set(now) | set(recorded)):
        a, b = recorded.get(section), now.get(section)
        if not isinstance(a, dict) or not isinstance(b, dict):
            if a != b:
                changed.append(f"[{section}]")
            continue
        for key in sorted(set(a) | set(b)):
            name = f"{section}.{key}"
            if name in _RESUMABLE_CHANGES or name == "output.dir":
                continue
            if a.get(key, "(unset)") != b.get(key, "(unset)"):
                changed.append(f"{name} ({a.get(key, '(unset)')!r} -> "
                               f"{b.get(key, '(unset)')!r})")
    return changed


def _check_run_folder(out: Path, cfg: dict, args) -> dict | None:
    """Refuse to train into a folder that already holds a run unless --resume / --overwrite;
    for --resume, refuse unless there is a run to resume with this config. Returns the
    folder's run.json (None if there is none)."""
    o = cfg["output"]
    held = [name for name in ("run.json", _LAST, o["checkpoint"]) if (out / name).is_file()]
    if not args.resume:
        if held and not args.overwrite:
            raise UsageError(f"output folder {str(out)!r} already holds a run "
                             f"({', '.join(held)}): give --resume to continue it or "
                             "--overwrite to replace it (or choose another --out)")
        return _read_run_json(out / "run.json", strict=False) if held else None
    last = out / _LAST
    if not last.is_file():
        why = (f"its run has no {_LAST} (written at the end of every epoch; a run stopped "
               "before its first epoch ended, or one trained without it, cannot be resumed): "
               "use --overwrite to train it again" if held else
               "it holds no run: leave out --resume to start one")
        raise UsageError(f"--resume: nothing to resume in {str(out)!r}: {why}")
    run = _read_run_json(out / "run.json", strict=True)
    if run is None:
        raise UsageError(f"--resume: {str(out)!r} has {_LAST} but no run.json recording the "
                         "run's config, so the config cannot be checked: use --overwrite to "
                         "start the run again")
    changed = _config_changes(run.get("config", {}), cfg)
    if changed:
        raise UsageError(f"--resume: the config differs from the run's in {'; '.join(changed)}; "
                         f"only {', '.join(_RESUMABLE_CHANGES)} may change when resuming (or "
                         "start a new run with --overwrite or another --out)")
    state = _save_api().read_metadata(last).get("train_state") or {}
    done = state.get("epoch")
    epochs = cfg["train"]["epochs"]
    if isinstance(done, int) and done >= epochs:
        raise UsageError(f"--resume: the run in {str(out)!r} has trained {done} epochs, and "
                         f"train.epochs = {epochs}: give --epochs N with N > {done} to train it "
                         "further")
    return run


def _run_files(out: Path, o: dict, previous: dict | None) -> list[Path]:
    """The files a run writes in ``out`` (under this config's names and the previous run's)
    that are there: what --overwrite removes, and nothing else."""
    names = {"run.json", _LAST, *(o[key] for key in _OUTPUTS)}
    old = ((previous or {}).get("config") or {}).get("output") or {}
    if isinstance(old, dict):
        names.update(value for key, value in old.items()
                     if key in _OUTPUTS and isinstance(value, str) and value
                     and Path(value).name == value and value not in (".", ".."))
    return [out / name for name in sorted(names) if (out / name).is_file()]


class _RunFolder:
    """The run folder of one ``devnet train``: what this run created there, so that a run that
    fails or is interrupted before its first epoch leaves no folder of its own behind."""

    def __init__(self):
        self.out: Path | None = None
        self.created: Path | None = None  # the topmost folder this run made, if any
        self.root = True  # rank 0 (or no MPI job): the process that writes and cleans up
        self.epochs = None  # train.epochs of this run
        self.replacing = False  # --overwrite given, the previous run's files not yet removed

    def make(self, o: dict, inputs: dict) -> Path:
        """``_check_outputs``, remembering the first folder of output.dir that did not exist."""
        out = self.out = Path(o["dir"]).expanduser()
        with contextlib.suppress(OSError, ValueError):
            missing = None
            for folder in (out, *out.parents):
                if folder.exists():
                    break
                missing = folder
            self.created = missing
        self.out = _check_outputs(o, inputs)
        return self.out

    def discard(self) -> None:
        """Remove the folders this run created, if they are still empty (never the user's)."""
        if not self.root or self.created is None or self.out is None:
            return
        folder = self.out
        with contextlib.suppress(OSError):
            while True:
                folder.rmdir()  # only an empty folder
                if folder == self.created or folder.parent == folder:
                    break
                folder = folder.parent

    def interrupted(self, args) -> int:
        """What a Ctrl-C during ``devnet train`` leaves: where to resume from, or nothing."""
        last = None if self.out is None else self.out / _LAST
        done = None
        if last is not None and last.is_file():
            with contextlib.suppress(Exception):
                done = int(_save_api().read_metadata(last)["train_state"]["epoch"])
        if not self.root:  # rank 0 says what is on disk; the other ranks only that they stop
            print("devnet: interrupted", file=sys.stderr)
            return 130
        if self.replacing:  # what is on disk is the previous run's, as it was
            print(f"devnet: interrupted before training started; the run in {str(self.out)!r} "
                  "was left as it was", file=sys.stderr)
            return 130
        if done is None:
            self.discard()
            print("devnet: interrupted before the first epoch finished: nothing to resume",
                  file=sys.stderr)
            return 130
        argv = [a for a in args.argv if a not in ("--overwrite", "--resume")]
        of = f" of {self.epochs}" if self.epochs else ""
        print(f"devnet: interrupted after epoch {done}{of}; resume with: "
              f"{shlex.join(['devnet', *argv, '--resume'])}", file=sys.stderr)
        return 130


def cmd_train(args) -> int:
    """Train from a TOML config; write checkpoint, history JSON/CSV and a plot."""
    folder = _RunFolder()
    try:
        code = _train(args, folder)
    except KeyboardInterrupt:
        return folder.interrupted(args)
    except BaseException:
        folder.discard()
        raise
    if code != EXIT_OK:
        folder.discard()
    return code


def _train(args, folder: _RunFolder) -> int:
    import devnet as dn
    from devnet import optim
    from devnet.task import default_loss

    config_path = Path(args.config)
    cfg = validate_config(_load_toml(config_path))
    for section, key in (("train", "device"), ("train", "epochs"), ("train", "nproc"),
                         ("train", "batch_size"), ("optimizer", "lr")):
        if getattr(args, key) is not None:
            flag = "--" + key.replace("_", "-")
            cfg[section][key] = _check_value(flag, getattr(args, key),
                                             CONFIG_SCHEMA[section][key][1])
    if args.out is not None:
        cfg["output"]["dir"] = _check_value("--out", args.out, "str")
    data_cfg, model_cfg, train_cfg = cfg["data"], cfg["model"], cfg["train"]
    data_cfg["dataset"] = _resolve_dataset(data_cfg["dataset"], config_path)
    inputs = {"config file": config_path, "data file": Path(data_cfg["dataset"])}
    folder.epochs = train_cfg["epochs"]
    out = folder.make(cfg["output"], inputs)
    previous = _check_run_folder(out, cfg, args)
    folder.replacing = bool(args.overwrite)
    comm = None
    nproc = train_cfg["nproc"]
    from devnet import distributed

    if nproc > 1 and not distributed.in_mpi_job():  # start the ranks: each runs this command
        return distributed.launch([sys.executable, "-m", "devnet.cli", *args.argv], nproc,
                                  hosts=train_cfg["hosts"] or None)
    if nproc > 1 or (distributed.job_size() or 1) > 1:  # a rank: ours, or `mpiexec -n N`'s
        comm = distributed.init()
        if comm.size != nproc:  # else N ranks would train N models into one folder
            raise ConfigError(f"train.nproc = {nproc} but this MPI job has {comm.size} ranks: "
                              f"give --nproc {comm.size} (or train.nproc), or run devnet "
                              "train without mpiexec and let --nproc start the ranks")
        if train_cfg["device"] == "auto":
            train_cfg["device"] = comm.device  # one GPU per local rank, else the CPU
    root = comm is None or comm.rank == 0
    folder.root = root

    # an explicit loss says the task when the config leaves it to "auto"
    task = data_cfg["task"]
    if train_cfg["loss"] != "auto":
        loss_task = ("classification" if dn.losses.get(train_cfg["loss"]).classification
                     else "regression")
        if task == "auto":
            task = loss_task
        elif task != loss_task:
            raise ConfigError(f"train.loss = {train_cfg['loss']!r} is a {loss_task} loss but "
                              f"data.task = {task!r}")
    with _data_notes(show=root):  # X in the model's dtype: converted once, exactly, here
        X, y = dn.data.load_dataset(data_cfg["dataset"], data_cfg["target_column"], task=task,
                                    header=_header(data_cfg), dtype=model_cfg["dtype"])
        feature_names, target_name = _column_names(data_cfg["dataset"],
                                                   data_cfg["target_column"], _header(data_cfg))
    source = _split_source(data_cfg["dataset"], X)
    task = "classification" if y.dtype.kind in "iu" else "regression"
    classes = None
    if task == "classification":
        classes, y = dn.data.encode_labels(y)
        if len(classes) < 2:
            raise DataError(f"{data_cfg['dataset']}: classification needs at least 2 classes; "
                            f"every label is {classes[0]!r}")
        n_out = len(classes)
        if train_cfg["loss"] == "binary_cross_entropy":
            if n_out != 2:
                raise ConfigError(f"train.loss = 'binary_cross_entropy' needs 2 classes, the "
                                  f"data has {n_out}: use cross_entropy")
            n_out = 1
    else:
        n_out = 1 if y.ndim == 1 else y.shape[1]
    loss = (default_loss(task, y, n_out) if train_cfg["loss"] == "auto"
            else train_cfg["loss"])
    if root:
        _describe_data(data_cfg, train_cfg, task, loss, y, n_out, X.shape[1], feature_names,
                       target_name)
    if loss != "cross_entropy":  # every other loss takes float targets
        y = y.astype(model_cfg["dtype"])
    if previous is not None and args.resume and previous.get("split_source") not in (None,
                                                                                 source):
        raise UsageError(f"--resume: {data_cfg['dataset']} changed since the run in "
                         f"{str(out)!r} started (its rows or bytes differ from what run.json "
                         "records), so the run cannot continue on the same data: train a new "
                         "run (--overwrite or another --out)")
    if data_cfg["test_size"] > 0:
        Xtr, Xte, ytr, yte = dn.data.train_test_split(X, y, data_cfg["test_size"],
                                                      seed=data_cfg["seed"])
    else:
        Xtr, Xte, ytr, yte = X, None, y, None
    scaling = None
    if task == "regression":
        scaling = _target_scaling(ytr, dn.losses.get(loss), data_cfg, target_name)
    if scaling is not None:  # train on standardized targets; the final model is folded back
        ytr = _scale_targets(ytr, scaling, model_cfg["dtype"])
        yte = None if yte is None else _scale_targets(yte, scaling, model_cfg["dtype"])
    validation = None if Xte is None else (Xte.astype(model_cfg["dtype"]), yte)
    model = dn.MLP([X.shape[1], *model_cfg["hidden"], n_out], activation=model_cfg["activation"],
                   init=model_cfg["init"], dtype=model_cfg["dtype"], backend=train_cfg["device"],
                   seed=model_cfg["seed"], block=model_cfg["block"],
                   norm=None if model_cfg["norm"] == "none" else model_cfg["norm"],
                   dropout=model_cfg["dropout"])
    if data_cfg["standardize"]:
        # statistics of the training rows only; the model applies them to whatever it sees
        model.set_input_scaling(*dn.data.fit_standardization(Xtr))
    Xtr = Xtr.astype(model_cfg["dtype"])  # the config chose the precision: convert once, here

    opt_args = {k: v for k, v in cfg["optimizer"].items() if k not in ("name", "lr")}
    lr = cfg["optimizer"]["lr"]
    # optim.schedules.NAMED, the table fit(schedule=...) uses: "step" and "warmup_cosine"
    # mean the same here and in Python, their unset arguments derived from the run's length
    steps = train_cfg["epochs"] * math.ceil(len(Xtr) / train_cfg["batch_size"])
    with _section("schedule", cfg["schedule"]["name"]):
        sched = optim.schedules.build(dict(cfg["schedule"]), lr, steps)
    if not isinstance(sched, optim.schedules.Constant):  # a constant rate stays a float
        lr = sched
    with _section("optimizer", cfg["optimizer"]["name"]):
        opt = optim.get(cfg["optimizer"]["name"], model, lr=lr, **opt_args)

    labels = None if classes is None else classes.tolist()
    run = {"config": cfg, "loss": loss, "task": task, "classes": labels,
           "split_source": source, "feature_names": feature_names, "target_name": target_name}
    run["target_scaling"] = scaling
    extra = {k: run[k] for k in _RUN_EXTRA if k in run}
    # every epoch: the resumable state, atomically; run.json (the config --resume checks)
    # first, so that a folder with an epoch on disk always says what run it holds
    saver = _EpochCheckpoint(out / _LAST, extra,
                             lambda: _save_api().atomic_write(out / "run.json", _run_json(run)))
    callbacks = ([dn.GradientFlow()] if train_cfg["gradient_flow"] else []) + [saver]
    if args.overwrite and root:  # the previous run's files go only now that all checks passed
        for path in _run_files(out, cfg["output"], previous):
            path.unlink()
    folder.replacing = False
    resumed = None
    if args.resume:
        resumed = (_save_api().read_metadata(out / _LAST).get("train_state") or {}).get("epoch")
    t0 = time.perf_counter()
    # a first Ctrl-C also lets a finished run write its final files: else --resume would find
    # every epoch done and no model.safetensors
    with _ctrl_c_stops(saver, enabled=comm is None):
        hist = dn.fit(model, Xtr, ytr, loss=loss, optimizer=opt, epochs=train_cfg["epochs"],
                      batch_size=train_cfg["batch_size"], validation_data=validation,
                      seed=train_cfg["seed"], progress=train_cfg["progress"], task=task,
                      callbacks=callbacks, comm=comm,
                      resume_from=out / _LAST if args.resume else None,
                      # a run extended past its planned length follows the lr curve of a run
                      # planned for the new length (nothing changes within the old length)
                      extend_schedule=bool(args.resume))
        elapsed = time.perf_counter() - t0
        if not root:  # rank 0 writes the run
            return EXIT_OK
        # the final model predicts in the targets' own units: the scaling folded into its
        # last layer; the optimizer's state belongs to the standardized model: in last only
        final = model if scaling is None else _fold_target_scaling(model, scaling)
        written = _write_run(out, cfg["output"], final, opt if scaling is None else None,
                             hist, run)
    written.insert(0, out / _LAST)
    last = {k: v[-1] for k, v in hist.history.items()
            if k not in ("lr", "time") and "/" not in k}  # per-layer series: in the files
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
    if scaling is not None:
        summary += " (loss and mae in standardized target units)"
    since = "" if resumed is None else f", resumed after epoch {resumed},"
    print(f"trained {len(hist.epoch)} epochs{since} in {elapsed:.1f}s on "
          f"{model.backend.device}: {summary}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return EXIT_OK


class _EpochCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint(path)`` that also records the run (``extra``; ``first`` runs before
    the first save) and stops training at the next clean point once ``stopping`` is set (by
    Ctrl-C): after the current step, or right after the epoch's save."""

    def __init__(self, path: Path, extra: dict, first):
        super().__init__(path)
        self.extra, self.first = extra, first
        self.stopping = False

    def on_batch_end(self, step: int, logs: dict) -> None:
        if self.stopping:
            raise KeyboardInterrupt

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        from devnet import io

        if self.first is not None:
            self.first()
            self.first = None
        t = self.trainer
        io.save(t.model, self.path, optimizer=t.optimizer, history=t.history,
                train_state=t.resume_state(), extra=self.extra)
        self.saved.append(self.path)
        if self.stopping and epoch + 1 < t.epochs:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _ctrl_c_stops(saver: _EpochCheckpoint, enabled: bool):
    """While training: the first Ctrl-C (SIGINT) asks ``saver`` to stop at the next clean
    point, so the last finished epoch's state is whole on disk; a second one stops at once."""
    def stop(signum, frame):
        if saver.stopping:
            raise KeyboardInterrupt
        saver.stopping = True

    installed, previous = False, None
    if enabled:
        try:
            previous = signal.signal(signal.SIGINT, stop)
            installed = True
        except ValueError:  # not the main thread (devnet.cli.main called from a thread)
            pass
    try:
        yield
    finally:
        if installed:  # None: a handler not set from Python, i.e. the default
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def _run_json(run: dict) -> bytes:
    return json.dumps(run, indent=2, default=str).encode()


def _target_name(data_cfg: dict, column: int, columns: int, name: str | None) -> str:
    if columns > 1:
        return f"target column {column}"
    if name:
        return f"the target {name!r}"
    if str(data_cfg.get("dataset", "")).lower().endswith(".csv"):
        return f"target column {data_cfg.get('target_column', -1)!r}"
    return "the target"


def _target_scaling(ytr: np.ndarray, loss, data_cfg: dict, name: str | None) -> dict | None:
    """For a regression run: the targets' standardization (``{"mean": [...], "scale": [...]}``
    of the training split, per output column), or None. Without data.standardize, warns when
    a target's scale is far from the unit scale training works at."""
    if loss.link != "identity":
        if data_cfg["standardize"]:
            print(f"devnet: note: data.standardize = true scales the inputs only: loss "
                  f"{loss.name!r} reads the outputs through its {loss.link!r} link, which "
                  "needs the targets in their own units", file=sys.stderr)
        return None
    y2 = np.asarray(ytr, dtype=np.float64).reshape(len(ytr), -1)
    if data_cfg["standardize"]:
        from devnet import data as data_mod

        mean, scale = data_mod.fit_standardization(y2)
        return {"mean": mean.tolist(), "scale": scale.tolist()}
    mean, std = y2.mean(axis=0), y2.std(axis=0)
    for j in range(y2.shape[1]):
        m, s = float(mean[j]), float(std[j])
        if abs(m) > _TARGET_SCALE or s > _TARGET_SCALE or 0 < s < 1 / _TARGET_SCALE:
            print(f"devnet: warning: {_target_name(data_cfg, j, y2.shape[1], name)} has mean "
                  f"{m:.4g} and std {s:.4g}: the model starts with outputs near 0 of about "
                  f"unit scale and trains poorly on targets whose |mean| or std is above "
                  f"{_TARGET_SCALE:g} or whose std is below {1 / _TARGET_SCALE:g}; set "
                  "data.standardize = true (the targets are then standardized too, and "
                  "predictions come back in their units)", file=sys.stderr)
    return None


#: a regression target is far from unit scale past this (|mean| or std) or below its inverse
_TARGET_SCALE = 10.0


def _scale_targets(y: np.ndarray, scaling: dict, dtype) -> np.ndarray:
    mean, scale = np.asarray(scaling["mean"]), np.asarray(scaling["scale"])
    y2 = (np.asarray(y, dtype=np.float64).reshape(len(y), -1) - mean) / scale
    return y2.reshape(y.shape).astype(dtype)


def _fold_target_scaling(model, scaling: dict):
    """A copy of ``model`` whose outputs are ``outputs * scale + mean``: the last layer's
    weight columns and bias scaled (``Z = X @ W + b`` with the identity output activation)."""
    final = copy.deepcopy(model)
    layer, be = final.layers[-1], final.backend
    mean, scale = np.asarray(scaling["mean"]), np.asarray(scaling["scale"])
    be.assign(layer.W, be.to_numpy(layer.W).astype(np.float64) * scale)
    be.assign(layer.b, be.to_numpy(layer.b).astype(np.float64) * scale + mean)
    return final


def _header(data_cfg: dict):
    """data.header as ``load_csv`` takes it: None ("auto"), True or False."""
    header = data_cfg.get("header", "auto")
    return None if header == "auto" else header


@contextlib.contextmanager
def _data_notes(show: bool = True):
    """Shows what the loaders warn about (``devnet.data.DataWarning``: a pandas index column
    dropped) as ``devnet: note:`` lines on stderr, each once."""
    import warnings

    from devnet.data import DataWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        yield
    seen = set()
    for w in caught:
        if not issubclass(w.category, DataWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif show and str(w.message) not in seen:
            seen.add(str(w.message))
            print(f"devnet: note: {w.message}", file=sys.stderr)


def _column_names(spec: str, target_column, header) -> tuple[list[str] | None, str | None]:
    """``(feature_names, target_name)`` of a CSV with a header row, as the loader reads it;
    ``(None, None)`` for other data. Feature names that repeat cannot be matched by name:
    None then, and eval / predict match by position."""
    from devnet import data as data_mod

    if not str(spec).lower().endswith(".csv"):
        return None, None
    names = data_mod.csv_columns(spec, header=header)
    if names is None:
        return None, None
    col = data_mod.column_index(target_column, names, len(names), spec)
    features = names[:col] + names[col + 1:]
    return (features if len(set(features)) == len(features) else None), names[col]


def _shown_names(names: list[str], limit: int = 6) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:3]) + f", ... ({len(names)})"


#: classification with at least this many classes and a median of fewer samples per class
#: than MIN_PER_CLASS gets a warning: most likely a number (an age, a count) read as classes
MANY_CLASSES, MIN_PER_CLASS = 10, 20


def _describe_data(data_cfg: dict, train_cfg: dict, task: str, loss: str, y, n_out: int,
                   n_features: int, feature_names, target_name) -> None:
    """One line on stdout: the task and where it came from, the loss, the classes / outputs
    and the features; a warning on stderr for many classes with few samples each."""
    from devnet.task import MAX_CLASSES

    target = repr(target_name) if target_name else "the target"
    y = np.asarray(y)
    if data_cfg["task"] != "auto":
        why = "data.task"
    elif train_cfg["loss"] != "auto":
        why = f"train.loss = {train_cfg['loss']!r}"
    elif task == "classification":
        why = f"inferred from {target}: {len(np.unique(y))} integer values"
    elif y.ndim == 2:
        why = f"inferred from {target}: {y.shape[1]} target column(s)"
    elif np.any(y != np.round(y)):
        why = f"inferred from {target}: non-integer values"
    else:
        why = (f"inferred from {target}: {len(np.unique(y))} distinct integer values, over "
               f"{MAX_CLASSES}")
    if task == "classification":
        k = len(np.unique(y))
        outs = f"{k} classes" + (f" ({n_out} output)" if n_out != k else "")
    else:
        outs = f"{n_out} output{'s' if n_out != 1 else ''}"
    feats = (f"{n_features} features: {_shown_names(feature_names)}" if feature_names
             else f"{n_features} features")
    print(f"devnet: {task} ({why}), loss {loss}, {outs}; {feats}", flush=True)
    if task == "classification":
        counts = np.unique(y, return_counts=True)[1]
        median = float(np.median(counts))
        if len(counts) >= MANY_CLASSES and median < MIN_PER_CLASS:
            print(f"devnet: warning: classification with {len(counts)} classes and a median of "
                  f"{median:g} samples per class: too few to learn each class; if {target} "
                  'is a number to predict rather than a category, set task = "regression" in '
                  "[data]", file=sys.stderr)


@contextlib.contextmanager
def _section(section: str, name: str):
    """Prefixes a ConfigError raised inside with the [section] its arguments came from."""
    try:
        yield
    except ConfigError as exc:
        if str(exc).startswith("["):
            raise
        raise ConfigError(f"[{section}] of {name!r}: {exc}") from None


#: what a run records about itself in its checkpoint (``extra``) as well as in run.json
_RUN_EXTRA = ("task", "loss", "classes", "split_source", "target_scaling", "feature_names",
              "target_name")


def _split_source(spec: str, X: np.ndarray) -> dict:
    """What a train/test split is drawn from: the row count and a sha256 of the data file's
    bytes (of the features, for a bundled dataset), so that eval / predict can tell whether
    the run's split still picks the rows it held out."""
    from devnet import data as data_mod

    digest = hashlib.sha256()
    if spec in data_mod.DATASETS:
        # float64, whatever dtype the model reads: the hash runs recorded before the loaders
        # returned float32 (the bundled features are float32 values, so this is exact)
        X = np.ascontiguousarray(X, dtype=np.float64)
        digest.update(f"{X.dtype.str} {X.shape}".encode())
        digest.update(X.tobytes())
    else:
        with open(spec, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return {"rows": len(X), "sha256": digest.hexdigest()}


def _write_run(out: Path, o: dict, model, opt, hist, run: dict) -> list[Path]:
    dn_io = _save_api()
    written = []
    ckpt = out / o["checkpoint"]
    # what predicting needs travels in the checkpoint itself: task, loss, class labels, and
    # what the train/test split was drawn from
    extra = {k: run[k] for k in _RUN_EXTRA if k in run}
    dn_io.save(model, ckpt, optimizer=opt, history=hist, extra=extra)
    written.append(ckpt)
    # what eval / predict reuse for the data: the resolved config (dataset, split); what
    # --resume checks a config against
    dn_io.atomic_write(out / "run.json", _run_json(run))
    written.append(out / "run.json")
    rows = _history_rows(hist)
    path = out / o["history_json"]
    path.write_text(json.dumps({"epoch": hist.epoch, "history": hist.history}, indent=2))
    written.append(path)
    path = out / o["history_csv"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["epoch"])
        writer.writeheader()
        writer.writerows(rows)
    written.append(path)
    png = out / o["plot"]
    if plot_history(hist, png):
        written.append(png)
        if any(key.startswith("grad_norm/") for key in hist.history):
            hist.plot_gradient_flow(out / o["gradient_flow_plot"])
            written.append(out / o["gradient_flow_plot"])
    else:
        print("note: matplotlib is not installed, so no plot was written "
              "(pip install 'devnet-mlp[plot]')", file=sys.stderr)
    return written


def _history_rows(hist) -> list[dict]:
    rows = []
    for i, epoch in enumerate(hist.epoch):
        row = {"epoch": epoch}
        row.update({k: v[i] for k, v in hist.history.items() if i < len(v)})
        rows.append(row)
    return rows


#: one colour per series across both panels: training blue, validation orange
_SERIES_COLOURS = {"train": "tab:blue", "validation": "tab:orange"}


def plot_history(hist, path: Path) -> bool:
    """Loss and the task metric (training and validation) per epoch to an image; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig = history_figure(hist)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def history_figure(hist):
    """The matplotlib Figure of ``plot_history``: a loss panel and a metric panel, training
    and validation in the same two colours in both, integer epoch ticks."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    h = hist.history
    metric = next((m for m in ("accuracy", "r2") if m in h or f"val_{m}" in h), None)
    panels = ["loss"] + ([metric] if metric else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    epochs = np.asarray(hist.epoch) + 1
    for ax, name in zip(axes[0], panels):
        for series, key in (("train", name), ("validation", f"val_{name}")):
            if key in h and len(h[key]) == len(epochs):
                ax.plot(epochs, h[key], label=series, color=_SERIES_COLOURS[series],
                        marker="o" if len(epochs) < 20 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    return fig


def _load_run(args):
    """The checkpointed model (on ``--device``) and what the run recorded about itself.

    Returns ``(model, run)``: run.json beside the checkpoint (or {}), updated with the task,
    loss and class labels the checkpoint carries.
    """
    dn_io = _save_api()
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise UsageError(f"checkpoint {str(ckpt)!r} does not exist"
                         + (" as a file" if ckpt.exists() else ""))
    loaded = dn_io.load_checkpoint(ckpt, backend=args.device)
    run_file = ckpt.parent / "run.json"
    run: dict = {}
    if run_file.is_file():
        try:
            run = json.loads(run_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{run_file}: broken run.json ({exc}); pass --data (and --loss) "
                             "or remove the file") from None
        if not isinstance(run, dict) or not isinstance(run.get("config", {}), dict) \
                or not isinstance(run.get("config", {}).get("data", {}), dict):
            raise UsageError(f"{run_file}: broken run.json (expected an object with a "
                             "'config' table); pass --data (and --loss) or remove the file")
    extra = loaded.meta.get("extra") or {}
    run.update({k: extra[k] for k in _RUN_EXTRA if k in extra})
    model = loaded.model
    if run.get("target_scaling") and loaded.train_state:
        # a run's last.safetensors: the model trained on standardized targets (the final
        # model.safetensors has the scaling folded in and no training state)
        model = _fold_target_scaling(model, run["target_scaling"])
    return model, run


def _eval_data(args, run, model, with_target=True):
    """(X, y) for eval / predict: ``--data`` or the run's dataset, ``--split`` of it.

    X is raw: the model applies its own input scaling. For predict (no target), a CSV with
    one column more than the model's inputs has its target column dropped.
    """
    import devnet as dn

    data_cfg = run.get("config", {}).get("data", {})
    spec = args.data or data_cfg.get("dataset")
    if spec is None:
        raise UsageError("give --data (no run.json next to the checkpoint names a dataset)")
    target_column = data_cfg.get("target_column", -1)
    task = run.get("task")
    if task is None:  # a run from before tasks were recorded: its loss tells
        loss = args.loss or run.get("loss")
        task = "auto" if not loss else (
            "classification" if dn.losses.get(loss).classification else "regression")
    header = _header(data_cfg)
    own = args.data is None or args.data == data_cfg.get("dataset") or _same_file(
        args.data, data_cfg.get("dataset") or "")
    feats, target = run.get("feature_names"), run.get("target_name")
    dtype = model.dtype
    with _data_notes():
        is_csv = str(spec).lower().endswith(".csv")
        names = dn.data.csv_columns(spec, header=header) if is_csv else None
        if names is not None and feats and target:
            X, y = _load_by_name(spec, names, feats, target, task, header, dtype, with_target)
        else:
            if not own and (is_csv or feats):
                why = (f"{spec} has no header row" if names is None and is_csv else
                       f"{spec} has no column names" if names is None else
                       "the run recorded no column names (trained on data without a header)")
                if names is None and feats:
                    why += f" (the model was trained on {_shown_names(feats)})"
                print(f"devnet: note: {why}: its columns are matched to the model's inputs by "
                      "position", file=sys.stderr)
            if with_target or args.data is None:
                # the run's own dataset keeps its layout: the target column is dropped by the
                # loader
                X, y = dn.data.load_dataset(spec, target_column, task=task, header=header,
                                            dtype=dtype)
            else:
                X, y = dn.data.load_dataset(spec, with_target=False, header=header, dtype=dtype)
                if X.shape[1] == model.n_in + 1 and is_csv:
                    # the file holds the target column too: the loader drops it (by index or
                    # name)
                    X, _ = dn.data.load_dataset(spec, target_column, task="regression",
                                                header=header, dtype=dtype)
    if X.shape[1] != model.n_in:
        raise DataError(f"{spec}: has {X.shape[1]} feature columns, the model takes "
                        f"{model.n_in}")
    split = args.split
    if split is None:  # the run's split means nothing on another file: that is used whole
        split = "test" if own else "all"
    if split != "all":
        size, seed = data_cfg.get("test_size", 0.2), data_cfg.get("seed", 0)
        if not size:
            raise UsageError("--split needs a run with data.test_size > 0; use --split all")
        _check_split_source(run, spec, X, split, own)
        order = np.arange(len(X))
        tr, te, _, _ = dn.data.train_test_split(order, order, size, seed=seed)
        rows = te if split == "test" else tr
        X = X[rows]
        y = None if y is None else y[rows]
    if not with_target:
        y = None
    return X, y


def _quoted(names: list[str], limit: int = 10) -> str:
    return ", ".join(repr(n) for n in names[:limit]) + (
        f", ... ({len(names)})" if len(names) > limit else "")


def _load_by_name(spec, names, feats, target, task, header, dtype, with_target):
    """(X, y) of a CSV whose header names its columns: the run's feature columns in the
    order the model was trained on; y from the target column (None when ``with_target`` is
    False, where the target column may be absent). A missing feature or a column the model
    was not trained on is a DataError naming them: matching by position would silently feed
    one feature's values into another's input."""
    import devnet as dn

    missing = [n for n in feats if n not in names]
    unknown = [n for n in names if n not in feats and n != target]
    if missing or unknown:
        parts = ([f"lacks the feature column(s) {_quoted(missing)}"] if missing else []) + (
            [f"has column(s) {_quoted(unknown)} that the model was not trained on"]
            if unknown else [])
        raise DataError(f"{spec} {' and '.join(parts)}: the model takes {_quoted(feats)} "
                        f"(the target: {target!r}); columns are matched by name, so rename "
                        "them to the training names (or leave the header row out to match by "
                        "position)")
    if not with_target:
        return dn.data.load_csv(spec, with_target=False, header=header, dtype=dtype,
                                columns=feats)
    if target not in names:
        raise DataError(f"{spec} has no target column {target!r}; evaluating needs it (the "
                        f"file has {_quoted(names)})")
    return dn.data.load_csv(spec, target, task=task, header=header, dtype=dtype, columns=feats)


def _check_split_source(run, spec, X, split, own) -> None:
    """Refuse the run's split on its own data file when that changed since training; warn
    when an explicit ``--split`` is applied to other data.

    The split picks rows by position among ``len(X)``: one row more, or the rows reordered,
    and "test" holds rows the model trained on.
    """
    recorded = run.get("split_source")
    if not recorded:  # a run that recorded no split source: nothing to compare
        return
    now = _split_source(spec, X)
    if now == recorded:
        return
    change = (f"the split was drawn from {recorded['rows']} rows, the file has {now['rows']}"
              if now["rows"] != recorded["rows"] else "as many rows as the split was drawn "
              "from, other content")
    if own:
        raise UsageError(f"{spec}: the data changed since the run was trained ({change}), "
                         f"so its train/test split no longer holds: --split {split} would pick "
                         "other rows and score training rows as held out. Use --split all to "
                         "use the whole file as new data, or train again on it")
    print(f"devnet: warning: --split {split} of {spec}, which is not the data the run's split "
          f"was drawn from ({change}): its rows are picked by position, not the run's "
          "held-out rows", file=sys.stderr)


def _encode_with(classes, y, spec):
    """Labels y as indices into the run's ``classes`` (DataError for unseen labels)."""
    classes = np.asarray(classes)
    codes = np.clip(np.searchsorted(classes, y), 0, len(classes) - 1)
    unseen = np.unique(y[classes[codes] != y])
    if unseen.size:
        raise DataError(f"{spec}: labels {unseen[:10].tolist()} were not among the run's "
                        f"classes {classes[:20].tolist()}")
    return codes.astype(np.int64)


def _run_loss(args, run, y, model) -> str:
    """--loss, else the run's loss, else the default for the data (``devnet.task``)."""
    from devnet.task import default_loss, infer_task

    if args.loss:
        return _check_value("--loss", args.loss, "loss")
    if run.get("loss"):
        return run["loss"]
    if y is None:
        return "mse"
    return default_loss(infer_task(y), y, model.n_out)


def _check_loss_override(args, run, model) -> None:
    """UsageError unless ``--loss`` reads the model's outputs the way the run trained them.

    A loss with another link (softmax, sigmoid, identity, exp) or task turns the outputs into
    numbers that mean nothing (all-1.0 "probabilities", 0/1 matrices for labels), so it must
    share the link and task of the loss the checkpoint records; without one recorded, it must
    fit the recorded task and the model's outputs.
    """
    from devnet import losses

    if not args.loss:
        return
    loss = losses.get(_check_value("--loss", args.loss, "loss"))
    task = "classification" if loss.classification else "regression"
    trained = run.get("loss")
    if trained:
        ran = losses.get(trained)
        if (loss.link, loss.classification) == (ran.link, ran.classification):
            return
        fits = [name for name, cls in losses.LOSSES.items()
                if (cls.link, cls.classification) == (ran.link, ran.classification)]
        raise UsageError(f"--loss {loss.name!r} does not fit this run: its model was trained "
                         f"with {ran.name!r}, whose outputs are read through {ran.link!r}, and "
                         f"{loss.name!r} reads them through {loss.link!r}; leave out --loss or "
                         f"give one of: {', '.join(fits)}")
    if run.get("task") not in (None, task):
        raise UsageError(f"--loss {loss.name!r} is a {task} loss; this run's task is "
                         f"{run['task']!r}: give a {run['task']} loss")
    if loss.link == "softmax" and model.n_out < 2:
        raise UsageError(f"--loss {loss.name!r} needs a model with 2 or more outputs (a softmax "
                         "over one output is always 1); this one has 1: give "
                         "binary_cross_entropy or a regression loss")


def cmd_eval(args) -> int:
    """Loss and metrics of a checkpoint on a dataset."""
    import devnet as dn

    _check_device(args)
    model, run = _load_run(args)
    _check_loss_override(args, run, model)
    X, y = _eval_data(args, run, model)
    if run.get("classes") is not None and y.dtype.kind in "iu":
        y = _encode_with(run["classes"], y, args.data or "the run's dataset")
    loss = _run_loss(args, run, y, model)
    X = X.astype(model.dtype)
    if loss != "cross_entropy":
        y = np.asarray(y, dtype=model.dtype)
    result = dn.evaluate(model, X, y, loss=loss)
    if args.json:
        print(json.dumps(result))
    else:
        print(", ".join(f"{k} {v:.4g}" for k, v in result.items()) + f" ({len(X)} samples)")
    return EXIT_OK


_PREDICT_FORMATS = (".npy", ".csv")
#: a regression loss's link (``Loss.link``) -> outputs to predictions
_REGRESSION_LINKS = {"identity": np.asarray, "exp": np.exp}


def _check_predict_out(path: str) -> Path:
    out = Path(path).expanduser()
    if out.suffix not in _PREDICT_FORMATS:
        raise UsageError(f"--out {path!r}: valid formats: {', '.join(_PREDICT_FORMATS)}")
    _check_name_lengths(out, "--out", "choose a shorter path")
    if out.is_dir():
        raise UsageError(f"--out {path!r} is an existing folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {path!r}: cannot create its folder: "
                         f"{exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK | os.X_OK) or (out.exists()
                                                        and not os.access(out, os.W_OK)):
        raise UsageError(f"--out {path!r} is not writable")
    return out


def cmd_predict(args) -> int:
    """Predictions of a checkpoint, written to .npy or .csv."""
    import devnet as dn

    _check_device(args)
    out = _check_predict_out(args.out)
    model, run = _load_run(args)
    _check_loss_override(args, run, model)
    spec = args.data or run.get("config", {}).get("data", {}).get("dataset")
    for role, path in (("data file", spec), ("checkpoint", args.checkpoint)):
        if path is not None and _same_file(out, path):
            raise UsageError(f"--out {args.out!r} is the {role}; writing the predictions there "
                             "would destroy it")
    X, _ = _eval_data(args, run, model, with_target=False)
    X = X.astype(model.dtype)
    loss = dn.losses.get(_run_loss(args, run, None, model))
    if args.proba and not loss.classification:
        raise UsageError(f"--proba needs a classification run; this one's loss {loss.name!r} "
                         "predicts numbers, not class probabilities (leave out --proba)")
    if args.proba:
        pred = dn.predict_proba(model, X, loss=loss)  # a column per sorted label
    else:
        raw = model.predict(X)
        if loss.name == "cross_entropy":
            pred = raw.argmax(axis=1)
        elif loss.name == "binary_cross_entropy" and raw.shape[1] == 1:
            pred = (raw[:, 0] > 0).astype(np.int64)
        elif loss.name == "binary_cross_entropy":
            pred = (raw > 0).astype(np.int64)
        else:  # a regression loss's link maps the outputs to predictions (log-mean -> mean)
            pred = _REGRESSION_LINKS[loss.link](raw)
        if run.get("classes") is not None and pred.ndim == 1:
            pred = np.asarray(run["classes"])[pred]  # back to the labels the data used
    pred = np.asarray(pred)
    if out.suffix == ".npy":
        np.save(out, pred)
    else:
        table = pred.reshape(len(pred), -1)
        fmt = "%d" if pred.dtype.kind in "iub" else "%.8g"
        with out.open("w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerow(
                _prediction_columns(run, table.shape[1], args.proba))
            np.savetxt(fh, table, delimiter=",", fmt=fmt)
    print(f"wrote {len(pred)} predictions {tuple(pred.shape)} to {out}")
    return EXIT_OK


def _prediction_columns(run: dict, k: int, proba: bool) -> list[str]:
    """The header of a predictions CSV: one column per class, named by its label, for
    probabilities; else the target's name (``prediction`` when the run recorded none), or
    ``output_1..k`` for several outputs."""
    classes = run.get("classes")
    if proba:
        labels = classes if classes is not None and len(classes) == k else range(k)
        return [str(label) for label in labels]
    if k == 1:
        return [run.get("target_name") or "prediction"]
    return [f"output_{i + 1}" for i in range(k)]


def _check_device(args) -> None:
    args.device = _check_value("--device", args.device, "device")


def _entry_point(module: str, what: str):
    """``module.main``, importing the repository's ``benchmarks`` from a checkout if needed."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        root = Path(__file__).resolve().parents[1]
        for base in (Path.cwd(), root):
            if (base / module.split(".")[0]).is_dir() and str(base) not in sys.path:
                sys.path.insert(0, str(base))
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise DevnetError(f"devnet {what} needs the {module} module ({exc}); run it from "
                              "a devnet source checkout") from None
    main = getattr(mod, "main", None)
    if main is None:
        raise DevnetError(f"{module} has no main(argv) entry point yet")
    return main


#: subcommands whose own options are forwarded verbatim: command -> (module, its main)
_FORWARDED = {"bench": "benchmarks", "profile": "devnet.profile"}


def _forward(args) -> int:
    """Run ``benchmarks.main`` / ``devnet.profile.main`` with the arguments after the command."""
    main = _entry_point(_FORWARDED[args.command], args.command)
    try:
        return int(main(list(args.rest)) or 0)
    except SystemExit as exc:  # their argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (EXIT_USAGE if exc.code else EXIT_OK)


def _split_forwarded(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """argv up to a forwarded subcommand, and what follows it (None for other commands)."""
    i = 0
    while i < len(argv) and argv[i] == "--debug":
        i += 1
    if i < len(argv) and argv[i] in _FORWARDED:
        rest = argv[i + 1:]
        if rest[:1] == ["--"]:  # the old spelling: devnet bench -- ARGS
            rest = rest[1:]
        return argv[:i + 1], rest
    return argv, None


# --- the parser -----------------------------------------------------------------------------

_EXAMPLE_TOML = """\
example run.toml (every key optional; unknown keys are errors; data paths are relative to
the config file's folder, output.dir to the current directory):
  [data]
  dataset = "digits"        # bundled name, or a path to .npz (X, y) / .csv
  task = "auto"             # auto, classification, regression
  test_size = 0.2
  standardize = false       # inputs (and regression targets) by the training split's
                            # mean/std, stored in the checkpoint
  [model]
  hidden = [128, 64]
  activation = "relu"
  [optimizer]
  name = "adam"             # plus its own arguments, e.g. weight_decay = 1e-4
  lr = 1e-3
  [schedule]
  name = "warmup_cosine"    # constant, step, exponential, cosine, warmup_cosine
  warmup_steps = 50
  [train]
  epochs = 20
  batch_size = 64
  device = "auto"           # auto, cpu, cuda, cuda:N
  progress = "auto"         # auto (when stderr is a terminal), true, false
  [output]
  dir = "runs/digits"
"""

_RUN_FOLDER_HELP = f"""\
the run folder (output.dir / --out) holds:
  {_LAST:<18}  the resumable training state (model, optimizer, history, RNG, epoch),
                      rewritten atomically at the end of every epoch and kept after the run
  model.safetensors   the final model (output.checkpoint), which eval and predict read
  run.json, history.json, history.csv, history.png
A folder that already holds a run is refused unless --resume (continue it) or --overwrite
(replace it). Ctrl-C stops at the end of the current step and prints the command that
resumes the run from its last finished epoch (exit 130); a second Ctrl-C stops at once (the
last save is whole either way). --resume refuses a folder with nothing to resume and a
config that differs from the run's (run.json) in more than train.epochs, train.device and
train.progress. A resumed run that is given more epochs than it was planned for
stretches its lr schedule over the new total (as fit(extend_schedule=True)). On the CPU a
resumed run ends bit-identical to an uninterrupted one.
data.standardize = true with a regression loss with the identity link (mse, mae, huber)
standardizes the targets too (training split statistics, run.json "target_scaling"): the
model trains on them, so the history's loss, mae, val_loss and val_mae are in standardized
units (r2 is the same in both); model.safetensors has the scaling folded into its last
layer and predicts in the data's own units, as eval and predict report them.
"""

_COMMANDS = {
    "info": ("show devices, library versions, and why CUDA is unavailable",
             "example:\n  devnet info\n  devnet info --json"),
    "train": ("train a model from a TOML config",
              "example:\n  devnet train --config run.toml --device cpu --epochs 5\n"
              "  devnet train --config run.toml --out runs/a --resume   # after Ctrl-C\n"
              "  devnet train --config run.toml --out runs/a --resume --epochs 40  # extend\n\n"
              + _RUN_FOLDER_HELP + "\n" + _EXAMPLE_TOML),
    "eval": ("evaluate a checkpoint on a dataset",
             "example:\n  devnet eval --checkpoint runs/digits/model.safetensors --split test"),
    "predict": ("write a checkpoint's predictions to .npy or .csv",
                "example:\n  devnet predict --checkpoint runs/digits/model.safetensors "
                "--out preds.csv"),
    "bench": ("run the benchmarks: every option after 'bench' goes to benchmarks.main "
              "(python -m benchmarks --help lists them)",
              "example:\n  devnet bench --quick\n  devnet bench step --sizes S --no-sklearn"),
    "profile": ("profile a training step: every option after 'profile' goes to "
                "devnet.profile.main",
                "example:\n  devnet profile --sizes 784-1024-1024-10 --batch-size 256"),
}


def _version() -> str:
    from devnet import __version__

    return f"devnet {__version__} (distribution devnet-mlp)"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the full traceback on errors")
    parser = argparse.ArgumentParser(
        prog="devnet", parents=[common],
        description="Train, evaluate and profile devnet MLPs on the CPU or an NVIDIA GPU.",
        epilog="example:\n  devnet info\n  devnet train --config run.toml\n\n"
               "exit codes: 0 success, 2 usage, config or data error, 1 runtime failure",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs = {}
    for name, (summary, example) in _COMMANDS.items():
        subs[name] = sub.add_parser(name, parents=[common], help=summary, description=summary,
                                    epilog=example,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    subs["info"].add_argument("--json", action="store_true", help="print JSON")
    p = subs["train"]
    p.add_argument("--config", required=True, help="the run's TOML file")
    p.add_argument("--device", help="override train.device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--batch-size", type=int, dest="batch_size",
                   help="override train.batch_size")
    p.add_argument("--lr", type=float, help="override optimizer.lr")
    p.add_argument("--nproc", type=int,
                   help="override train.nproc: data-parallel ranks, launched under mpiexec")
    p.add_argument("--out", help="override output.dir (created if missing)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help=f"continue the run in the output folder from its {_LAST} (the "
                            "same config; only train.epochs, train.device and train.progress "
                            "may differ: --epochs N beyond the run's own extends it)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run already in the output folder (its files only)")
    for name in ("eval", "predict"):
        p = subs[name]
        p.add_argument("--checkpoint", required=True, help="a checkpoint written by train")
        p.add_argument("--data", metavar="DATA",
                       help="bundled dataset name or .npz/.csv path (default: the run's "
                            "dataset, from run.json beside the checkpoint"
                            + (")" if name == "eval" else
                               ", target column dropped; a .csv may hold the target column or "
                               "only the features)"))
        p.add_argument("--split", choices=("test", "train", "all"),
                       default=None if name == "eval" else "all",
                       help="which part of the run's train/test split to use (default: "
                            + ("test); a --data file other than the run's dataset is used "
                               "whole unless --split says otherwise" if name == "eval"
                               else "all)"))
        p.add_argument("--loss", help="loss name (default: the run's loss; another must read "
                                      "the outputs through the same link, e.g. mae for an mse "
                                      "run)")
        p.add_argument("--device", default="auto",
                       help="auto, cpu, cuda, cuda:N (default: auto)")
    subs["eval"].add_argument("--json", action="store_true", help="print JSON")
    subs["predict"].add_argument("--out", required=True, help="output file: .npy or .csv")
    subs["predict"].add_argument("--proba", action="store_true",
                                 help="write class probabilities instead of labels (columns in "
                                      "the order of the sorted class labels)")
    parser.subcommand_parsers = subs  # for the forwarded commands' --help
    return parser


_HANDLERS = {"info": cmd_info, "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict,
             "bench": _forward, "profile": _forward}


def main(argv: list[str] | None = None) -> int:
    """Run the ``devnet`` command; returns the exit code (0, 1 or 2)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, rest = _split_forwarded(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message printed)
        return int(exc.code or 0)
    args.rest = rest
    args.argv = argv if rest is None else [*argv, "--", *rest]  # to re-launch under mpiexec
    debug = getattr(args, "debug", False)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if rest is not None and ("-h" in rest or "--help" in rest):
        # ours first (what the command is, an example), then the forwarded module's options
        parser.subcommand_parsers[args.command].print_help()
        print()
        sys.stdout.flush()
    try:
        return _HANDLERS[args.command](args)
    except (UsageError, ConfigError, DataError) as exc:
        code = EXIT_USAGE
        err = exc
    except KeyboardInterrupt:
        print("devnet: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # runtime failure: one line unless --debug
        code = EXIT_RUNTIME
        err = exc
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__)
    msg = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, (DevnetError, UsageError)):
        msg = f"{type(err).__name__}: {msg}"
    print(f"devnet: error: {msg}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
