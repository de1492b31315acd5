"""The ``devnet`` command: info, train, eval, predict, bench, profile.

Exit codes: 0 success, 2 usage or configuration error, 1 runtime failure. Errors print one
line on stderr (``devnet: error: ...``); ``--debug`` prints the traceback too.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import json
import math
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from devnet.errors import ConfigError, DataError, DevnetError, lookup

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line usage or configuration: exit code 2."""


# --- configuration --------------------------------------------------------------------------

_SCHEDULES = ("constant", "step", "exponential", "cosine", "warmup_cosine")
_OUTPUTS = ("checkpoint", "history_json", "history_csv", "plot")

#: every [section] of run.toml: key -> (default, check). A check returns the cleaned value or
#: raises ConfigError; ``None`` defaults mean "not set".
CONFIG_SCHEMA: dict[str, dict[str, tuple]] = {
    "data": {
        "dataset": ("digits", "dataset"),
        "target_column": (-1, "int"),
        "test_size": (0.2, "fraction"),
        "standardize": (False, "bool"),
        "seed": (0, "int"),
    },
    "model": {
        "hidden": ([64], "sizes"),
        "activation": ("relu", "activation"),
        "init": ("he", "init"),
        "dtype": ("float32", ("float32", "float64")),
        "seed": (0, "int"),
    },
    "train": {
        "loss": ("auto", "loss"),
        "epochs": (10, "posint"),
        "batch_size": (64, "posint"),
        "device": ("auto", "device"),
        "seed": (0, "int"),
        "progress": (False, "bool"),
    },
    "optimizer": {"name": ("adam", "optimizer"), "lr": (1e-3, "posfloat")},  # + its own args
    "schedule": {"name": ("constant", _SCHEDULES)},  # + the schedule's own args
    "output": {
        "dir": ("runs/devnet", "str"),
        "checkpoint": ("model.safetensors", "str"),
        "history_json": ("history.json", "str"),
        "history_csv": ("history.csv", "str"),
        "plot": ("history.png", "str"),
    },
}


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UsageError("reading TOML on Python 3.10 needs tomli: pip install tomli") \
                from None
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} does not exist")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None


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
    from devnet import losses
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
    if check == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
    elif check == "posint":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad("an integer >= 1")
    elif check == "posfloat":
        if not is_num or not math.isfinite(value) or value <= 0:
            raise bad("a number > 0")
    elif check == "fraction":
        if not is_num or not 0 <= value < 1:
            raise bad("a number in [0, 1)")
    elif check == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
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
        from devnet.backend import DEVICE_NAMES

        ok = isinstance(value, str) and (value in ("auto", "cpu", "cuda") or (
            value.startswith("cuda:") and value[5:].isdigit()))
        if not ok:
            raise ConfigError(f"{where} = {value!r}: valid devices: {', '.join(DEVICE_NAMES)}")
    return value


def _extra_args(section: str, name: str) -> dict[str, inspect.Parameter]:
    """Keyword arguments the named optimizer / schedule takes beyond the fixed keys."""
    from devnet import optim

    if section == "optimizer":
        fn = optim.OPTIMIZERS[name].__init__
        skip = {"self", "params", "lr"}
    else:
        fn = getattr(optim.schedules, name)
        skip = {"lr"}
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
    return cfg


# --- data -----------------------------------------------------------------------------------

def load_dataset(spec: str, target_column: int = -1, with_target: bool = True):
    """(X, y) from a bundled name, an .npz (arrays ``X`` and ``y``) or a numeric .csv.

    CSV: an optional header row; the target is column ``target_column`` when ``with_target``.
    y is None when ``with_target`` is False or the .npz has no ``y``.
    """
    from devnet import data as data_mod

    if spec in data_mod.DATASETS:
        X, y = data_mod.load(spec)
        return X, (y if with_target else None)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"data file {spec!r} does not exist (and is not a bundled dataset: "
                        f"{', '.join(sorted(data_mod.DATASETS))})")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z:
                raise DataError(f"{spec}: an .npz needs an array named 'X' (and 'y'); it has "
                                f"{', '.join(z.files) or 'none'}")
            X = z["X"]
            y = z["y"] if with_target and "y" in z else None
        if with_target and y is None:
            raise DataError(f"{spec}: no array named 'y' for the targets")
        return X, y
    if path.suffix == ".csv":
        table = _read_csv(path)
        if not with_target:
            return table, None
        col = target_column % table.shape[1]
        y = table[:, col]
        X = np.delete(table, col, axis=1)
        if np.all(y == np.round(y)):
            y = y.astype(np.int64)
        return X, y
    raise ConfigError(f"{spec}: unknown data format {path.suffix!r}; valid: .npz, .csv, or a "
                    "bundled dataset name")


def _read_csv(path: Path) -> np.ndarray:
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if rows and not _numeric(rows[0]):
        rows = rows[1:]  # header
    try:
        table = np.asarray(rows, dtype=np.float64)
    except ValueError:
        raise DataError(f"{path}: every row must hold the same number of numeric "
                        "values") from None
    if table.ndim != 2 or table.size == 0:
        raise DataError(f"{path}: no numeric rows")
    return table


def _numeric(row) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def _auto_loss(y) -> str:
    y = np.asarray(y)
    return "cross_entropy" if y.ndim == 1 and y.dtype.kind in "iub" else "mse"


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


def cmd_train(args) -> int:
    """Train from a TOML config; write checkpoint, history JSON/CSV and a plot."""
    import devnet as dn
    from devnet import optim

    cfg = validate_config(_load_toml(Path(args.config)))
    for key in ("device", "epochs"):
        if getattr(args, key) is not None:
            cfg["train"][key] = _check_value(f"--{key}", getattr(args, key),
                                             CONFIG_SCHEMA["train"][key][1])
    if args.out is not None:
        cfg["output"]["dir"] = args.out
    d, m, t, o = cfg["data"], cfg["model"], cfg["train"], cfg["output"]

    X, y = load_dataset(d["dataset"], d["target_column"])
    X = np.asarray(X, dtype=np.float64)
    if d["standardize"]:
        X = dn.data.standardize(X)
    loss = _auto_loss(y) if t["loss"] == "auto" else t["loss"]
    loss_obj = dn.losses.get(loss)
    X = X.astype(m["dtype"])  # the config chose the precision: convert once, here
    if not loss_obj.classification:
        y = np.asarray(y, dtype=m["dtype"])
    if d["test_size"] > 0:
        Xtr, Xte, ytr, yte = dn.data.train_test_split(X, y, d["test_size"], seed=d["seed"])
        validation = (Xte, yte)
    else:
        Xtr, ytr, validation = X, y, None
    if loss == "cross_entropy":
        n_out = int(np.max(y)) + 1
    else:
        n_out = 1 if np.ndim(y) == 1 else np.shape(y)[1]
    model = dn.MLP([X.shape[1], *m["hidden"], n_out], activation=m["activation"],
                   init=m["init"], dtype=m["dtype"], backend=t["device"], seed=m["seed"])

    opt_args = {k: v for k, v in cfg["optimizer"].items() if k not in ("name", "lr")}
    s = cfg["schedule"]
    lr = cfg["optimizer"]["lr"]
    if s["name"] != "constant":
        steps = t["epochs"] * math.ceil(len(Xtr) / t["batch_size"])
        sched_args = {k: v for k, v in s.items() if k != "name"}
        if "total_steps" in _extra_args("schedule", s["name"]):
            sched_args.setdefault("total_steps", steps)
        try:
            lr = getattr(optim.schedules, s["name"])(lr, **sched_args)
        except TypeError as exc:
            raise ConfigError(f"[schedule] {s['name']!r}: {exc}") from None
    opt = optim.get(cfg["optimizer"]["name"], model, lr=lr, **opt_args)

    t0 = time.perf_counter()
    hist = dn.fit(model, Xtr, ytr, loss=loss, optimizer=opt, epochs=t["epochs"],
                  batch_size=t["batch_size"], validation_data=validation, seed=t["seed"],
                  progress=t["progress"])
    elapsed = time.perf_counter() - t0

    out = Path(o["dir"])
    out.mkdir(parents=True, exist_ok=True)
    written = _write_run(out, o, model, opt, hist, cfg, loss)
    last = {k: v[-1] for k, v in hist.history.items() if k not in ("lr", "time")}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
    print(f"trained {len(hist.epoch)} epochs in {elapsed:.1f}s on {model.backend.device}: "
          f"{summary}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return EXIT_OK


def _write_run(out: Path, o: dict, model, opt, hist, cfg, loss) -> list[Path]:
    dn_io = _save_api()
    written = []
    ckpt = out / o["checkpoint"]
    dn_io.save(model, ckpt, optimizer=opt, history=hist)
    written.append(ckpt)
    # what eval / predict need to reuse the run: the resolved config and the loss
    run = {"config": cfg, "loss": loss}
    (out / "run.json").write_text(json.dumps(run, indent=2, default=str))
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
    else:
        print("note: matplotlib is not installed, so no plot was written "
              "(pip install 'devnet[plot]')", file=sys.stderr)
    return written


def _history_rows(hist) -> list[dict]:
    rows = []
    for i, epoch in enumerate(hist.epoch):
        row = {"epoch": epoch}
        row.update({k: v[i] for k, v in hist.history.items() if i < len(v)})
        rows.append(row)
    return rows


def plot_history(hist, path: Path) -> bool:
    """Loss (train and validation) and the task metric per epoch to a PNG; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    h = hist.history
    metrics = [k for k in ("val_accuracy", "accuracy", "val_r2", "r2") if k in h]
    fig, axes = plt.subplots(1, 1 + bool(metrics), figsize=(5 + 5 * bool(metrics), 4))
    axes = np.atleast_1d(axes)
    epochs = np.asarray(hist.epoch) + 1
    for key in ("loss", "val_loss"):
        if key in h:
            axes[0].plot(epochs, h[key], label=key)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    if metrics:
        for key in metrics:
            axes[1].plot(epochs, h[key], label=key)
        axes[1].set_xlabel("epoch")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _load_run(args):
    """The checkpointed model (on ``--device``) and the run.json beside it (or {})."""
    dn_io = _save_api()
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise UsageError(f"checkpoint {str(ckpt)!r} does not exist")
    model, _ = dn_io.load(ckpt, backend=args.device)
    run_file = ckpt.parent / "run.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    return model, run


def _eval_data(args, run, with_target=True):
    data_cfg = run.get("config", {}).get("data", {})
    spec = args.data or data_cfg.get("dataset")
    if spec is None:
        raise UsageError("give --data (no run.json next to the checkpoint names a dataset)")
    X, y = load_dataset(spec, data_cfg.get("target_column", -1), with_target=with_target)
    X = np.asarray(X, dtype=np.float64)
    if data_cfg.get("standardize") and spec == data_cfg.get("dataset"):
        from devnet.data import standardize

        X = standardize(X)
    if args.split != "all":
        from devnet.data import train_test_split

        size, seed = data_cfg.get("test_size", 0.2), data_cfg.get("seed", 0)
        if not size:
            raise UsageError("--split needs a run with data.test_size > 0; use --split all")
        dummy = np.zeros(len(X)) if y is None else y
        Xtr, Xte, ytr, yte = train_test_split(X, dummy, size, seed=seed)
        X, y = (Xte, yte) if args.split == "test" else (Xtr, ytr)
        if not with_target:
            y = None
    return X, y


def cmd_eval(args) -> int:
    """Loss and metrics of a checkpoint on a dataset."""
    import devnet as dn

    model, run = _load_run(args)
    X, y = _eval_data(args, run)
    loss = args.loss or run.get("loss") or _auto_loss(y)
    X = X.astype(model.dtype)
    if not dn.losses.get(loss).classification:
        y = np.asarray(y, dtype=model.dtype)
    result = dn.evaluate(model, X, y, loss=loss)
    if args.json:
        print(json.dumps(result))
    else:
        print(", ".join(f"{k} {v:.4g}" for k, v in result.items()) + f" ({len(X)} samples)")
    return EXIT_OK


def cmd_predict(args) -> int:
    """Predictions of a checkpoint, written to .npy or .csv."""
    import devnet as dn

    model, run = _load_run(args)
    X, _ = _eval_data(args, run, with_target=False)
    if X.shape[1] == model.n_in + 1 and args.data and args.data.endswith(".csv"):
        X = np.delete(X, run.get("config", {}).get("data", {}).get("target_column", -1),
                      axis=1)
    X = X.astype(model.dtype)
    out = Path(args.out)
    if out.suffix not in (".npy", ".csv"):
        raise UsageError(f"--out {str(out)!r}: valid formats: .npy, .csv")
    loss = dn.losses.get(args.loss or run.get("loss") or "mse")
    raw = model.predict(X)
    if args.proba:
        pred = dn.predict_proba(model, X, loss=loss)
    elif loss.name == "cross_entropy":
        pred = raw.argmax(axis=1)
    elif loss.name == "binary_cross_entropy":
        pred = (raw > 0).astype(np.int64)
    else:
        pred = raw
    pred = np.asarray(pred)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, pred)
    else:
        fmt = "%d" if pred.dtype.kind in "iu" else "%.8g"
        np.savetxt(out, pred.reshape(len(pred), -1), delimiter=",", fmt=fmt)
    print(f"wrote {len(pred)} predictions {tuple(pred.shape)} to {out}")
    return EXIT_OK


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


def cmd_bench(args) -> int:
    """Run the benchmarks (``benchmarks.main``) with the remaining arguments."""
    return int(_entry_point("benchmarks", "bench")(_rest(args.args)) or 0)


def cmd_profile(args) -> int:
    """Profile a training step (``devnet.profile.main``) with the remaining arguments."""
    return int(_entry_point("devnet.profile", "profile")(_rest(args.args)) or 0)


def _rest(argv: list[str]) -> list[str]:
    return argv[1:] if argv[:1] == ["--"] else list(argv)


# --- the parser -----------------------------------------------------------------------------

_EXAMPLE_TOML = """\
example run.toml (every key optional; unknown keys are errors):
  [data]
  dataset = "digits"        # bundled name, or a path to .npz (X, y) / .csv
  test_size = 0.2
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
  [output]
  dir = "runs/digits"
"""

_COMMANDS = {
    "info": ("show devices, library versions, and why CUDA is unavailable",
             "example:\n  devnet info\n  devnet info --json"),
    "train": ("train a model from a TOML config",
              "example:\n  devnet train --config run.toml --device cpu --epochs 5\n\n"
              + _EXAMPLE_TOML),
    "eval": ("evaluate a checkpoint on a dataset",
             "example:\n  devnet eval --checkpoint runs/digits/model.safetensors --split test"),
    "predict": ("write a checkpoint's predictions to .npy or .csv",
                "example:\n  devnet predict --checkpoint runs/digits/model.safetensors "
                "--data digits --split all --out preds.csv"),
    "bench": ("run the benchmarks (arguments after -- go to benchmarks.main)",
              "example:\n  devnet bench -- --quick"),
    "profile": ("profile training (arguments after -- go to devnet.profile.main)",
                "example:\n  devnet profile -- --device cpu"),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the full traceback on errors")
    parser = argparse.ArgumentParser(
        prog="devnet", parents=[common],
        description="Train, evaluate and profile devnet MLPs on the CPU or an NVIDIA GPU.",
        epilog="example:\n  devnet info\n  devnet train --config run.toml\n\n"
               "exit codes: 0 success, 2 usage or config error, 1 runtime failure",
        formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--out", help="override output.dir")
    for name in ("eval", "predict"):
        p = subs[name]
        p.add_argument("--checkpoint", required=True, help="a checkpoint written by train")
        p.add_argument("--data", help="bundled dataset name or .npz/.csv path "
                                      "(default: the run's dataset)")
        p.add_argument("--split", choices=("test", "train", "all"),
                       default="test" if name == "eval" else "all",
                       help="which part of the run's train/test split to use")
        p.add_argument("--loss", help="loss name (default: the run's loss)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    subs["eval"].add_argument("--json", action="store_true", help="print JSON")
    subs["predict"].add_argument("--out", required=True, help="output file: .npy or .csv")
    subs["predict"].add_argument("--proba", action="store_true",
                                 help="write class probabilities instead of labels")
    for name in ("bench", "profile"):
        subs[name].add_argument("args", nargs=argparse.REMAINDER,
                                help="arguments passed through")
    return parser


_HANDLERS = {"info": cmd_info, "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict,
             "bench": cmd_bench, "profile": cmd_profile}


def main(argv: list[str] | None = None) -> int:
    """Run the ``devnet`` command; returns the exit code (0, 1 or 2)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message printed)
        return int(exc.code or 0)
    debug = getattr(args, "debug", False)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return _HANDLERS[args.command](args)
    except (UsageError, ConfigError) as exc:
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
