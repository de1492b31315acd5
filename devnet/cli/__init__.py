"""The ``devnet`` command: info, train, eval, predict, bench, profile.

Exit codes: 0 success, 2 usage, configuration or data error, 1 runtime failure. Errors print
one line on stderr (``devnet: error: ...``); ``--debug`` prints the traceback too. The command
parses and delegates: data files are read by ``devnet.data``, the task and default loss are
decided by ``devnet.task`` (the same rules as ``dn.fit``), checkpoints by ``devnet.io``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

import numpy as np

from devnet import __version__, available_backends
from devnet.cli.config import (
    CONFIG_SCHEMA,
    EXIT_OK,
    EXIT_RUNTIME,
    EXIT_USAGE,
    UsageError,
    validate_config,
)
from devnet.cli.evaluate import cmd_eval, cmd_predict
from devnet.cli.runfolder import LAST, history_figure
from devnet.cli.train import cmd_train
from devnet.errors import ConfigError, DataError, DevnetError

__all__ = ["CONFIG_SCHEMA", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "UsageError", "build_parser",
           "history_figure", "main", "validate_config"]


def cmd_info(args) -> int:
    """Devices, versions, and why CUDA is unavailable when it is."""
    import importlib.metadata as md

    from devnet.backend import cuda as cuda_mod  # imports CuPy: only this command needs it

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    info = {"devnet": __version__, "python": sys.version.split()[0],
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


def _entry_point(module: str, what: str):
    """``module.main``, found in a source checkout if it is not installed (``benchmarks``)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        root = Path(__file__).resolve().parents[2]
        for base in (Path.cwd(), root):
            if (base / module.split(".")[0]).is_dir() and str(base) not in sys.path:
                sys.path.insert(0, str(base))
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise DevnetError(f"devnet {what} needs the {module} module ({exc}); run it from "
                              "a devnet source checkout") from None
    return mod.main


#: subcommands whose own options are forwarded verbatim: command -> the module whose main runs
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
        if rest[:1] == ["--"]:  # devnet bench -- ARGS works too
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
  {LAST:<18}  the resumable training state (model, optimizer, history, RNG, epoch),
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
    parser.add_argument("--version", action="version",
                        version=f"devnet {__version__} (distribution devnet-mlp)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs = {name: sub.add_parser(name, parents=[common], help=summary, description=summary,
                                 epilog=example,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
            for name, (summary, example) in _COMMANDS.items()}
    subs["info"].add_argument("--json", action="store_true", help="print JSON")
    p = subs["train"]
    p.add_argument("--config", required=True, help="the run's TOML file")
    p.add_argument("--device", help="override train.device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--batch-size", type=int, help="override train.batch_size")
    p.add_argument("--lr", type=float, help="override optimizer.lr")
    p.add_argument("--nproc", type=int,
                   help="override train.nproc: data-parallel ranks, launched under mpiexec")
    p.add_argument("--out", help="override output.dir (created if missing)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help=f"continue the run in the output folder from its {LAST} (the "
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
    argv, rest = _split_forwarded(list(sys.argv[1:] if argv is None else argv))
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
        print(flush=True)
    try:
        return _HANDLERS[args.command](args)
    except (UsageError, ConfigError, DataError) as exc:
        code, err = EXIT_USAGE, exc
    except KeyboardInterrupt:
        print("devnet: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # runtime failure: one line unless --debug
        code, err = EXIT_RUNTIME, exc
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__)
    msg = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, (DevnetError, UsageError)):
        msg = f"{type(err).__name__}: {msg}"
    print(f"devnet: error: {msg}", file=sys.stderr)
    return code
