"""``devnet eval`` and ``devnet predict``: a checkpoint and its run, the data matched to the
model's inputs (by column name where the run recorded them), the run's split, the loss."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

import devnet as dn
from devnet import losses
from devnet.cli.config import EXIT_OK, UsageError, check_value, loss_task
from devnet.cli.dataset import csv_header, data_notes, shown_names, split_source
from devnet.cli.runfolder import check_name_lengths, read_run_json, run_extra, same_file
from devnet.cli.train import fold_target_scaling
from devnet.errors import DataError
from devnet.task import default_loss, infer_task

_PREDICT_FORMATS = (".npy", ".csv")
#: a regression loss's link (``Loss.link``) -> outputs to predictions
_REGRESSION_LINKS = {"identity": np.asarray, "exp": np.exp}


def _load_run(args):
    """``(model, run)``: the model on ``--device``, and run.json beside the checkpoint (or {})
    updated with what the checkpoint records; ``--loss`` is checked against them."""
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise UsageError(f"checkpoint {str(ckpt)!r} does not exist"
                         + (" as a file" if ckpt.exists() else ""))
    loaded = dn.load_checkpoint(ckpt, backend=args.device)
    run_file, remedy = ckpt.parent / "run.json", "pass --data (and --loss) or remove the file"
    run = read_run_json(run_file, remedy) or {}
    if not isinstance(run.get("config", {}).get("data", {}), dict):
        raise UsageError(f"{run_file}: broken run.json (expected an object with a 'config' "
                         f"table); {remedy}")
    run.update(run_extra(loaded.meta.get("extra") or {}))
    model = loaded.model
    if run.get("target_scaling") and loaded.train_state:
        # last.safetensors: trained on standardized targets (model.safetensors has them folded)
        model = fold_target_scaling(model, run["target_scaling"])
    _check_loss_override(args, run, model)
    return model, run


def _eval_data(args, run, model, with_target=True):
    """Raw (X, y) for eval / predict: ``--split`` of ``--data`` or the run's dataset. Without
    the target, a CSV with one column more than the model's inputs has its target dropped."""
    data_cfg = run.get("config", {}).get("data", {})
    spec = args.data or data_cfg.get("dataset")
    if spec is None:
        raise UsageError("give --data (no run.json next to the checkpoint names a dataset)")
    target_column = data_cfg.get("target_column", -1)
    task = run.get("task")
    if task is None:  # a run that recorded no task: its loss tells
        loss = args.loss or run.get("loss")
        task = loss_task(loss) if loss else "auto"
    header = csv_header(data_cfg)
    own = args.data is None or args.data == data_cfg.get("dataset") or same_file(
        args.data, data_cfg.get("dataset") or "")
    feats, target, dtype = run.get("feature_names"), run.get("target_name"), model.dtype
    with data_notes():
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
                    why += f" (the model was trained on {shown_names(feats)})"
                print(f"devnet: note: {why}: its columns are matched to the model's inputs by "
                      "position", file=sys.stderr)
            if with_target or args.data is None:  # the run's own layout: the loader drops y
                X, y = dn.data.load_dataset(spec, target_column, task=task, header=header,
                                            dtype=dtype)
            else:
                X, y = dn.data.load_dataset(spec, with_target=False, header=header, dtype=dtype)
                if X.shape[1] == model.n_in + 1 and is_csv:  # the target column too: drop it
                    X, _ = dn.data.load_dataset(spec, target_column, task="regression",
                                                header=header, dtype=dtype)
    if X.shape[1] != model.n_in:
        raise DataError(f"{spec}: has {X.shape[1]} feature columns, the model takes "
                        f"{model.n_in}")
    # the run's split means nothing on another file: that is used whole
    split = args.split or ("test" if own else "all")
    if split != "all":
        size, seed = data_cfg.get("test_size", 0.2), data_cfg.get("seed", 0)
        if not size:
            raise UsageError("--split needs a run with data.test_size > 0; use --split all")
        _check_split_source(run, spec, X, split, own)
        order = np.arange(len(X))
        tr, te, _, _ = dn.data.train_test_split(order, order, size, seed=seed)
        rows = te if split == "test" else tr
        X, y = X[rows], None if y is None else y[rows]
    return X, (y if with_target else None)


def _quoted(names: list[str]) -> str:
    return shown_names([repr(n) for n in names], limit=10, head=10)


def _load_by_name(spec, names, feats, target, task, header, dtype, with_target):
    """(X, y) of a CSV with a header: the run's feature columns in training order, y (when
    ``with_target``) from the target column. A missing or unknown column is a DataError
    (matching by position would feed one feature's values into another's input)."""
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
    """Refuse the run's split of its own data file when that changed since training (the split
    picks rows by position: "test" would hold training rows); warn for other data."""
    recorded = run.get("split_source")
    if not recorded:
        return
    now = split_source(spec, X)
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
    if args.loss:
        return check_value("--loss", args.loss, "loss")
    if run.get("loss"):
        return run["loss"]
    if y is None:
        return "mse"
    return default_loss(infer_task(y), y, model.n_out)


def _check_loss_override(args, run, model) -> None:
    """UsageError unless ``--loss`` shares the link and task of the run's loss (another reads
    the outputs as meaningless numbers); without one recorded, it must fit the recorded task
    and the model's outputs."""
    if not args.loss:
        return
    loss = losses.get(check_value("--loss", args.loss, "loss"))
    task = loss_task(loss.name)
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
    _check_device(args)
    model, run = _load_run(args)
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


def _check_predict_out(path: str) -> Path:
    out = Path(path).expanduser()
    if out.suffix not in _PREDICT_FORMATS:
        raise UsageError(f"--out {path!r}: valid formats: {', '.join(_PREDICT_FORMATS)}")
    check_name_lengths(out, "--out", "choose a shorter path")
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
    _check_device(args)
    out = _check_predict_out(args.out)
    model, run = _load_run(args)
    spec = args.data or run.get("config", {}).get("data", {}).get("dataset")
    for role, path in (("data file", spec), ("checkpoint", args.checkpoint)):
        if path is not None and same_file(out, path):
            raise UsageError(f"--out {args.out!r} is the {role}; writing the predictions there "
                             "would destroy it")
    X, _ = _eval_data(args, run, model, with_target=False)
    X = X.astype(model.dtype)
    loss = losses.get(_run_loss(args, run, None, model))
    if args.proba and not loss.classification:
        raise UsageError(f"--proba needs a classification run; this one's loss {loss.name!r} "
                         "predicts numbers, not class probabilities (leave out --proba)")
    if args.proba:
        pred = dn.predict_proba(model, X, loss=loss)  # a column per sorted label
    else:
        raw = model.predict(X)
        if loss.name == "cross_entropy":
            pred = raw.argmax(axis=1)
        elif loss.name == "binary_cross_entropy":
            pred = (raw > 0).astype(np.int64)
            pred = pred[:, 0] if pred.shape[1] == 1 else pred
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
    """A predictions CSV's header: the class labels for probabilities, else the target's name
    (or ``prediction``), or ``output_1..k``."""
    classes = run.get("classes")
    if proba:
        labels = classes if classes is not None and len(classes) == k else range(k)
        return [str(label) for label in labels]
    if k == 1:
        return [run.get("target_name") or "prediction"]
    return [f"output_{i + 1}" for i in range(k)]


def _check_device(args) -> None:
    args.device = check_value("--device", args.device, "device")
