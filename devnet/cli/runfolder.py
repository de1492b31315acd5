"""The run folder of ``devnet train``: checking it before training, what --resume and
--overwrite accept, cleaning up after a failed run, and writing the finished run's files."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from devnet import io as dn_io
from devnet.cli.config import UsageError
from devnet.errors import ConfigError

_OUTPUTS = ("checkpoint", "history_json", "history_csv", "plot", "gradient_flow_plot")
#: the run folder's resumable training state, rewritten at the end of every epoch
LAST = "last.safetensors"
#: what --resume may change
RESUMABLE_CHANGES = ("train.epochs", "train.device", "train.progress")
#: what a run records about itself in its checkpoint (``extra``) as well as in run.json
RUN_EXTRA = ("task", "loss", "classes", "split_source", "target_scaling", "feature_names",
             "target_name")
#: the plot formats matplotlib writes without extra packages
_PLOT_FORMATS = (".png", ".pdf", ".svg")


def run_extra(values: dict) -> dict:
    """What of ``values`` a run records in its checkpoint: the ``RUN_EXTRA`` keys it has."""
    return {k: values[k] for k in RUN_EXTRA if k in values}


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one existing file (links and ``..`` resolved)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # ValueError: a NUL in a path
        return False


def check_name_lengths(path: Path, what: str, remedy: str) -> None:
    """UsageError unless every name in ``path`` fits the file system's limit (else the OSError
    would come when writing, after the training)."""
    limit = dn_io.files.name_max(path)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > limit:
            shown = part if len(part) <= 40 else part[:37] + "..."
            raise UsageError(f"{what}: the name {shown!r} is {size} bytes, over this file "
                             f"system's limit of {limit}: {remedy}")


def _check_outputs(o: dict, inputs: dict[str, Path]) -> Path:
    """The output folder, created, once every output was checked writable (before training:
    ConfigError, exit 2) and none is one of ``inputs`` (role -> path)."""
    names = {key: o[key] for key in _OUTPUTS} | {"run": "run.json", "last": LAST}
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
    check_name_lengths(out, "output folder", "choose a shorter output.dir / --out")
    for key, name in names.items():
        check_name_lengths(out / name, f"output.{key}", "choose a shorter name")
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
        for role, path in inputs.items():
            if same_file(target, path):
                raise ConfigError(f"{what}: {str(target)!r} is the run's {role}; writing it "
                                  "would destroy it (choose another file name or output.dir)")
    return out


def read_run_json(path: Path, remedy: str | None) -> dict | None:
    """run.json as a dict; None if it is missing, or broken and ``remedy`` is None (else a
    UsageError ending in ``remedy``)."""
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(run, dict) or not isinstance(run.get("config", {}), dict):
            raise ValueError("expected an object with a 'config' table")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if remedy is None:
            return None
        raise UsageError(f"{path}: broken run.json ({exc}); {remedy}") from None
    return run


def _config_changes(recorded: dict, cfg: dict) -> list[str]:
    """The ``section.key`` entries in which ``cfg`` differs from a run's recorded config, less
    ``RESUMABLE_CHANGES`` and output.dir (the folder is the run's, however it is spelled)."""
    current = json.loads(json.dumps(cfg, default=str))  # as run.json records it
    changed = []
    for section in sorted(set(current) | set(recorded)):
        a, b = recorded.get(section), current.get(section)
        if not isinstance(a, dict) or not isinstance(b, dict):
            if a != b:
                changed.append(f"[{section}]")
            continue
        for key in sorted(set(a) | set(b)):
            name = f"{section}.{key}"
            old, new = a.get(key, "(unset)"), b.get(key, "(unset)")
            if old != new and name not in RESUMABLE_CHANGES and name != "output.dir":
                changed.append(f"{name} ({old!r} -> {new!r})")
    return changed


def check_run_folder(out: Path, cfg: dict, args) -> dict | None:
    """UsageError for a folder that holds a run without --resume / --overwrite, or for
    --resume without a run to resume with this config; returns its run.json (or None)."""
    o = cfg["output"]
    held = [name for name in ("run.json", LAST, o["checkpoint"]) if (out / name).is_file()]
    if not args.resume:
        if held and not args.overwrite:
            raise UsageError(f"output folder {str(out)!r} already holds a run "
                             f"({', '.join(held)}): give --resume to continue it or "
                             "--overwrite to replace it (or choose another --out)")
        return read_run_json(out / "run.json", None) if held else None
    last = out / LAST
    if not last.is_file():
        why = (f"its run has no {LAST} (written at the end of every epoch; a run stopped "
               "before its first epoch ended, or one trained without it, cannot be resumed): "
               "use --overwrite to train it again" if held else
               "it holds no run: leave out --resume to start one")
        raise UsageError(f"--resume: nothing to resume in {str(out)!r}: {why}")
    run = read_run_json(out / "run.json", "cannot check that the config is the run's: use "
                        "--overwrite to start the run again")
    if run is None:
        raise UsageError(f"--resume: {str(out)!r} has {LAST} but no run.json recording the "
                         "run's config, so the config cannot be checked: use --overwrite to "
                         "start the run again")
    changed = _config_changes(run.get("config", {}), cfg)
    if changed:
        raise UsageError(f"--resume: the config differs from the run's in {'; '.join(changed)}; "
                         f"only {', '.join(RESUMABLE_CHANGES)} may change when resuming (or "
                         "start a new run with --overwrite or another --out)")
    done = (dn_io.read_metadata(last).get("train_state") or {}).get("epoch")
    epochs = cfg["train"]["epochs"]
    if isinstance(done, int) and done >= epochs:
        raise UsageError(f"--resume: the run in {str(out)!r} has trained {done} epochs, and "
                         f"train.epochs = {epochs}: give --epochs N with N > {done} to train it "
                         "further")
    return run


def run_files(out: Path, o: dict, previous: dict | None) -> list[Path]:
    """The run files (by this config's names and the previous run's) present in ``out``: what
    --overwrite removes, and nothing else."""
    names = {"run.json", LAST, *(o[key] for key in _OUTPUTS)}
    old = ((previous or {}).get("config") or {}).get("output") or {}
    if isinstance(old, dict):
        names.update(value for key, value in old.items()
                     if key in _OUTPUTS and isinstance(value, str) and value
                     and Path(value).name == value and value not in (".", ".."))
    return [out / name for name in sorted(names) if (out / name).is_file()]


class RunFolder:
    """The run folder of one ``devnet train``: what it created, so that a run that fails or is
    interrupted before its first epoch leaves no folder of its own behind."""

    def __init__(self):
        self.out: Path | None = None
        self.created: Path | None = None  # the topmost folder this run made, if any
        self.root = True  # rank 0 (or no MPI job): the process that writes and cleans up
        self.epochs = None  # train.epochs of this run
        self.replacing = False  # --overwrite given, the previous run's files not yet removed

    def make(self, o: dict, inputs: dict) -> Path:
        """``_check_outputs``, remembering the topmost folder of output.dir it creates."""
        out = self.out = Path(o["dir"]).expanduser()
        with contextlib.suppress(OSError, ValueError):
            for folder in (out, *out.parents):
                if folder.exists():
                    break
                self.created = folder
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
        done = None
        with contextlib.suppress(Exception):  # no folder yet (None), no epoch saved, torn file
            done = int(dn_io.read_metadata(self.out / LAST)["train_state"]["epoch"])
        if not self.root:  # rank 0 says what is on disk; the other ranks only that they stop
            why = ""
        elif self.replacing:  # the previous run's files are untouched
            why = (f" before training started; the run in {str(self.out)!r} was left as it "
                   "was")
        elif done is None:
            self.discard()
            why = " before the first epoch finished: nothing to resume"
        else:
            argv = [a for a in args.argv if a not in ("--overwrite", "--resume")]
            of = f" of {self.epochs}" if self.epochs else ""
            why = (f" after epoch {done}{of}; resume with: "
                   f"{shlex.join(['devnet', *argv, '--resume'])}")
        print(f"devnet: interrupted{why}", file=sys.stderr)
        return 130


def run_json(run: dict) -> bytes:
    return json.dumps(run, indent=2, default=str).encode()


def write_run(out: Path, o: dict, model, opt, hist, run: dict) -> list[Path]:
    """The finished run's files in ``out`` (what predicting needs in the checkpoint itself too);
    returns the paths written."""
    ckpt, history_json, history_csv = (out / o[key] for key in
                                       ("checkpoint", "history_json", "history_csv"))
    dn_io.save(model, ckpt, optimizer=opt, history=hist, extra=run_extra(run))
    dn_io.atomic_write(out / "run.json", run_json(run))
    history_json.write_text(json.dumps({"epoch": hist.epoch, "history": hist.history},
                                       indent=2))
    rows = [{"epoch": epoch, **{k: v[i] for k, v in hist.history.items() if i < len(v)}}
            for i, epoch in enumerate(hist.epoch)]
    with history_csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["epoch"])
        writer.writeheader()
        writer.writerows(rows)
    written = [ckpt, out / "run.json", history_json, history_csv]
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


#: one colour per series across both panels: training blue, validation orange
_SERIES_COLOURS = {"train": "tab:blue", "validation": "tab:orange"}


def plot_history(hist, path: Path) -> bool:
    """``history_figure`` written to ``path``; False without matplotlib."""
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
    """A matplotlib Figure: loss and the task metric per epoch, training and validation in the
    same two colours in both panels."""
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
