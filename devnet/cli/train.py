"""``devnet train``: the config and its overrides, the data and the targets' scaling, the model
and optimizer, Ctrl-C, and the run written to its folder."""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np

from devnet import io as dn_io
from devnet.callbacks import ModelCheckpoint
from devnet.cli.config import (
    CONFIG_SCHEMA,
    EXIT_OK,
    UsageError,
    check_value,
    in_section,
    load_toml,
    loss_task,
    validate_config,
)
from devnet.cli.dataset import column_names, csv_header, data_notes, shown_names, split_source
from devnet.cli.runfolder import (
    LAST,
    RunFolder,
    check_run_folder,
    run_extra,
    run_files,
    run_json,
    write_run,
)
from devnet.errors import ConfigError, DataError

#: a regression target is far from unit scale past this (|mean| or std) or below its inverse
_TARGET_SCALE = 10.0
#: classification with at least this many classes and a median of fewer samples per class
#: than MIN_PER_CLASS gets a warning: most likely a number (an age, a count) read as classes
MANY_CLASSES, MIN_PER_CLASS = 10, 20


def cmd_train(args) -> int:
    """Train from a TOML config; write checkpoint, history JSON/CSV and a plot."""
    folder = RunFolder()
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


def _train(args, folder: RunFolder) -> int:
    import devnet as dn
    from devnet import optim
    from devnet.task import default_loss

    config_path = Path(args.config)
    cfg = validate_config(load_toml(config_path))
    for section, key in (("train", "device"), ("train", "epochs"), ("train", "nproc"),
                         ("train", "batch_size"), ("optimizer", "lr")):
        if getattr(args, key) is not None:
            flag = "--" + key.replace("_", "-")
            cfg[section][key] = check_value(flag, getattr(args, key),
                                            CONFIG_SCHEMA[section][key][1])
    if args.out is not None:
        cfg["output"]["dir"] = check_value("--out", args.out, "str")
    data_cfg, model_cfg, train_cfg = cfg["data"], cfg["model"], cfg["train"]
    data_cfg["dataset"] = _resolve_dataset(data_cfg["dataset"], config_path)
    inputs = {"config file": config_path, "data file": Path(data_cfg["dataset"])}
    folder.epochs = train_cfg["epochs"]
    out = folder.make(cfg["output"], inputs)
    previous = check_run_folder(out, cfg, args)
    folder.replacing = bool(args.overwrite)
    comm, nproc = None, train_cfg["nproc"]
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
    root = folder.root = comm is None or comm.rank == 0
    # an explicit loss says the task when the config leaves it to "auto"
    task = data_cfg["task"]
    if train_cfg["loss"] != "auto":
        implied = loss_task(train_cfg["loss"])
        if task == "auto":
            task = implied
        elif task != implied:
            raise ConfigError(f"train.loss = {train_cfg['loss']!r} is a {implied} loss but "
                              f"data.task = {task!r}")
    header = csv_header(data_cfg)
    with data_notes(show=root):  # X in the model's dtype: converted once, exactly, here
        X, y = dn.data.load_dataset(data_cfg["dataset"], data_cfg["target_column"], task=task,
                                    header=header, dtype=model_cfg["dtype"])
        feature_names, target_name = column_names(data_cfg["dataset"],
                                                  data_cfg["target_column"], header)
    source = split_source(data_cfg["dataset"], X)
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
    scaling = (_target_scaling(ytr, dn.losses.get(loss), data_cfg, target_name)
               if task == "regression" else None)
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
    # fit(schedule=...)'s table: unset arguments derive from the run's length, as in Python
    steps = train_cfg["epochs"] * math.ceil(len(Xtr) / train_cfg["batch_size"])
    with in_section("schedule", cfg["schedule"]["name"]):
        sched = optim.schedules.build(dict(cfg["schedule"]), lr, steps)
    if not isinstance(sched, optim.schedules.Constant):  # a constant rate stays a float
        lr = sched
    with in_section("optimizer", cfg["optimizer"]["name"]):
        opt = optim.get(cfg["optimizer"]["name"], model, lr=lr, **opt_args)

    labels = None if classes is None else classes.tolist()
    run = {"config": cfg, "loss": loss, "task": task, "classes": labels,
           "split_source": source, "feature_names": feature_names, "target_name": target_name,
           "target_scaling": scaling}
    # run.json before the first epoch's state: a folder with an epoch says what run it holds
    saver = EpochCheckpoint(out / LAST, run_extra(run),
                            lambda: dn_io.atomic_write(out / "run.json", run_json(run)))
    callbacks = ([dn.GradientFlow()] if train_cfg["gradient_flow"] else []) + [saver]
    if args.overwrite and root:  # the previous run's files go only now that all checks passed
        for path in run_files(out, cfg["output"], previous):
            path.unlink()
    folder.replacing = False
    resumed = ((dn_io.read_metadata(out / LAST).get("train_state") or {}).get("epoch")
               if args.resume else None)
    t0 = time.perf_counter()
    # a Ctrl-C after the last epoch still writes the final files (else nothing to resume)
    with _ctrl_c_stops(saver, enabled=comm is None):
        hist = dn.fit(model, Xtr, ytr, loss=loss, optimizer=opt, epochs=train_cfg["epochs"],
                      batch_size=train_cfg["batch_size"], validation_data=validation,
                      seed=train_cfg["seed"], progress=train_cfg["progress"], task=task,
                      callbacks=callbacks, comm=comm,
                      resume_from=out / LAST if args.resume else None,
                      extend_schedule=bool(args.resume))
        elapsed = time.perf_counter() - t0
        if saver.stopped_early():  # Ctrl-C: the last finished epoch is on disk, resume there
            raise KeyboardInterrupt
        if not root:  # rank 0 writes the run
            return EXIT_OK
        # the final model predicts in the targets' units; the optimizer's state is LAST's only
        final = model if scaling is None else fold_target_scaling(model, scaling)
        written = write_run(out, cfg["output"], final, opt if scaling is None else None,
                            hist, run)
    written.insert(0, out / LAST)
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


class EpochCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint(path)`` that also records the run (``extra``; ``first()`` runs before
    the first save) and, after ``stop()`` (Ctrl-C), stops training at the next clean point: a
    step boundary fit checks, or right after the epoch's save (a compiled epoch runs on)."""

    def __init__(self, path: Path, extra: dict, first):
        super().__init__(path)
        self.extra, self.first, self.stopping = extra, first, False

    def stop(self) -> None:
        """Ask the running fit (or the next one to begin) to stop at the next clean point."""
        self.stopping = True
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            trainer.stop_training = True

    def on_train_begin(self, logs: dict) -> None:
        super().on_train_begin(logs)
        if self.stopping:  # Ctrl-C while fit checked its inputs
            self.trainer.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        from devnet import io

        if self.first is not None:
            self.first()
            self.first = None
        t = self.trainer
        io.save(t.model, self.path, optimizer=t.optimizer, history=t.history,
                train_state=t.resume_state(), extra=self.extra)
        self.saved.append(self.path)

    def stopped_early(self) -> bool:
        """Whether fit ended because of ``stop()`` before its last epoch was saved."""
        t = getattr(self, "trainer", None)
        return self.stopping and t is not None and t.epochs_done < t.epochs


@contextlib.contextmanager
def _ctrl_c_stops(saver: EpochCheckpoint, enabled: bool):
    """While training, a first Ctrl-C asks ``saver`` to stop at the next clean point (the last
    epoch's state whole on disk); a second one stops at once."""
    def stop(signum, frame):
        if saver.stopping:
            raise KeyboardInterrupt
        saver.stop()

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


def _target_name(data_cfg: dict, column: int, columns: int, name: str | None) -> str:
    if columns > 1:
        return f"target column {column}"
    if name:
        return f"the target {name!r}"
    if str(data_cfg.get("dataset", "")).lower().endswith(".csv"):
        return f"target column {data_cfg.get('target_column', -1)!r}"
    return "the target"


def _target_scaling(ytr: np.ndarray, loss, data_cfg: dict, name: str | None) -> dict | None:
    """A regression run's target standardization (``{"mean": [...], "scale": [...]}`` of the
    training split, per column), or None; without data.standardize, warns when a target is
    far from unit scale."""
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


def _scale_targets(y: np.ndarray, scaling: dict, dtype) -> np.ndarray:
    mean, scale = np.asarray(scaling["mean"]), np.asarray(scaling["scale"])
    y2 = (np.asarray(y, dtype=np.float64).reshape(len(y), -1) - mean) / scale
    return y2.reshape(y.shape).astype(dtype)


def fold_target_scaling(model, scaling: dict):
    """A copy of ``model`` whose outputs are ``outputs * scale + mean`` (the last layer's W and b
    scaled: its output activation is the identity)."""
    final = copy.deepcopy(model)
    layer, be = final.layers[-1], final.backend
    mean, scale = np.asarray(scaling["mean"]), np.asarray(scaling["scale"])
    be.assign(layer.W, be.to_numpy(layer.W).astype(np.float64) * scale)
    be.assign(layer.b, be.to_numpy(layer.b).astype(np.float64) * scale + mean)
    return final


def _describe_data(data_cfg: dict, train_cfg: dict, task: str, loss: str, y, n_out: int,
                   n_features: int, feature_names, target_name) -> None:
    """One stdout line: the task and why, the loss, the outputs and the features; a warning for
    many classes with few samples each."""
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
    feats = (f"{n_features} features: {shown_names(feature_names)}" if feature_names
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


def _resolve_dataset(spec: str, config_path: Path) -> str:
    """A bundled name as is; a path made absolute, relative to the config file's folder."""
    from devnet import data as data_mod

    if spec in data_mod.DATASETS:
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = config_path.resolve().parent / path
    return str(path)
