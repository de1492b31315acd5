"""The devnet command's configuration and arguments: what a run keeps (standardization, the
task), keys and paths checked before training, and clear one-line errors for bad input files.

The command runs in-process (``devnet.cli.main``) on small CSV / NPZ files made from fresh
random data: fast, and an error's exit code and one-line message are checked directly.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from helpers.cli import one_line_error, run_cli

import devnet as dn
from devnet import cli
from devnet.errors import ConfigError, DataError, DeviceUnavailableError, MissingDependencyError

CONFIG = """
[data]
dataset = "{dataset}"
test_size = 0.25
{data_extra}
[model]
hidden = [16]
[optimizer]
name = "adam"
lr = 0.02
[train]
epochs = {epochs}
batch_size = 32
device = "cpu"
{train_extra}
[output]
dir = "{out}"
{output_extra}
"""


def write_config(path, dataset, out, epochs=3, data_extra="", train_extra="", output_extra=""):
    path.write_text(CONFIG.format(dataset=dataset, out=out, epochs=epochs,
                                  data_extra=data_extra, train_extra=train_extra,
                                  output_extra=output_extra))
    return path


def write_csv(path, X, y=None, header=True):
    table = X if y is None else np.column_stack([X, y])
    names = ",".join(f"c{j}" for j in range(table.shape[1]))
    np.savetxt(path, table, delimiter=",", header=names if header else "", comments="",
               fmt="%.10g")
    return path


def offset_classes(rng, n=240):
    """Two classes whose features sit far from 0 at very different scales: without
    standardization a small MLP cannot learn them in a few epochs; with it, easily."""
    Z = rng.normal(size=(n, 3))
    y = (Z[:, 0] + Z[:, 1] > 0).astype(np.int64)
    X = Z * np.array([300.0, 0.01, 5.0]) + np.array([5000.0, -3.0, 40.0])
    return X, y


# --- standardization kept for eval / predict -----------------------------------------------

def test_standardization_is_kept_in_the_checkpoint_whatever_the_data_path(
        rng, tmp_path, capsys, monkeypatch):
    X, y = offset_classes(rng)
    write_csv(tmp_path / "train.csv", X, y)
    write_csv(tmp_path / "features.csv", X)
    cfg = write_config(tmp_path / "run.toml", "train.csv", tmp_path / "out", epochs=30,
                       data_extra="standardize = true")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    ckpt = tmp_path / "out" / "model.safetensors"

    # the statistics are those of the training split only
    model, _ = dn.load(ckpt, backend="cpu")
    X_file, y_file = dn.data.load_csv(tmp_path / "train.csv")  # as written (10 digits)
    Xtr, _, _, _ = dn.data.train_test_split(X_file, y_file, 0.25, seed=0)
    mean, scale = dn.data.fit_standardization(Xtr)
    np.testing.assert_allclose(model.input_scaling[0], mean, rtol=1e-12)
    np.testing.assert_allclose(model.input_scaling[1], scale, rtol=1e-12)

    accuracies = []
    for data in (None, "./train.csv", str(tmp_path / "train.csv"), "train.csv"):
        args = ["eval", "--checkpoint", ckpt, "--json"] + ([] if data is None else
                                                           ["--data", data])
        code, out, err = run_cli(capsys, *args)
        assert code == 0, err
        accuracies.append(json.loads(out)["accuracy"])
    assert len(set(accuracies)) == 1 and accuracies[0] > 0.85, accuracies

    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--data", "features.csv",
                           "--out", tmp_path / "p.npy")
    assert code == 0, err
    pred = np.load(tmp_path / "p.npy")
    assert pred.shape == (len(X),) and set(np.unique(pred)) == {0, 1}
    assert np.mean(pred == y) > 0.85


# --- target_column in range ----------------------------------------------------------------

def test_target_column_out_of_range_is_a_config_error(rng, tmp_path, capsys):
    X = rng.normal(size=(20, 2))
    path = write_csv(tmp_path / "d.csv", X, rng.integers(0, 2, 20))
    for bad in (3, 7, -4):
        with pytest.raises(ConfigError, match=r"target_column = .* out of range.*-3\.\.2"):
            dn.data.load_csv(path, target_column=bad)
    # negative indices within range count from the end
    Xf, yf = dn.data.load_csv(path, target_column=-3, task="regression")
    np.testing.assert_allclose(yf, X[:, 0])
    np.testing.assert_allclose(Xf[:, 0], X[:, 1])
    cfg = write_config(tmp_path / "r.toml", path, tmp_path / "o",
                       data_extra="target_column = 7")
    code, out, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2 and "trained" not in out
    one_line_error(err, "target_column = 7", "out of range")


# --- whole-number regression targets stay regression ---------------------------------------

def test_whole_number_regression_targets_stay_regression(rng, tmp_path, capsys):
    X = rng.normal(size=(400, 3))
    prices = np.round(100_000 + 20_000 * X @ np.array([1.0, -0.5, 0.3]))
    write_csv(tmp_path / "prices.csv", X, prices)
    cfg = write_config(tmp_path / "run.toml", "prices.csv", tmp_path / "out")
    code, out, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["task"] == "regression" and run["loss"] == "mse"
    model, _ = dn.load(tmp_path / "out" / "model.safetensors", backend="cpu")
    assert model.n_out == 1
    # few whole numbers, some seen once: ambiguous, so "auto" asks for the task
    write_csv(tmp_path / "few.csv", X[:30], prices[:30])
    cfg = write_config(tmp_path / "few.toml", "few.csv", tmp_path / "out2")
    code, out, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2 and "trained" not in out
    one_line_error(err, "task=")
    cfg = write_config(tmp_path / "few.toml", "few.csv", tmp_path / "out2",
                       data_extra='task = "regression"')
    assert run_cli(capsys, "train", "--config", cfg)[0] == 0


def test_task_classification_with_labels_not_0_to_k_minus_1(rng, tmp_path, capsys):
    labels = np.array([3, 7, 12])
    y = labels[rng.integers(0, 3, 150)]
    X = rng.normal(size=(150, 2)) + y[:, None] * 0.5
    write_csv(tmp_path / "d.csv", X, y)
    cfg = write_config(tmp_path / "run.toml", "d.csv", tmp_path / "out", epochs=10,
                       data_extra='task = "classification"')
    code, out, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    ckpt = tmp_path / "out" / "model.safetensors"
    extra = dn.io.read_metadata(ckpt)["extra"]
    assert extra["classes"] == [3, 7, 12] and extra["task"] == "classification"
    model, _ = dn.load(ckpt, backend="cpu")
    assert model.n_out == 3  # one output per distinct label, not max(label) + 1
    code, out, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--out",
                             tmp_path / "p.csv")
    assert code == 0, err
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "c2"  # the target's name
    pred = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)
    assert set(np.unique(pred)) <= {3, 7, 12} and len(pred) == 150
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--json")
    assert code == 0, err
    assert 0 <= json.loads(out)["accuracy"] <= 1


def test_task_key_is_validated(tmp_path, capsys):
    cfg = write_config(tmp_path / "run.toml", "xor", tmp_path / "o",
                       data_extra='task = "clustering"')
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2
    one_line_error(err, "data.task", "auto, classification, regression")


# --- predict without --data on a CSV-trained run --------------------------------------------

def test_predict_without_data_on_a_csv_run_drops_the_target_column(rng, tmp_path, capsys):
    X = rng.normal(size=(60, 4))
    write_csv(tmp_path / "d.csv", X, X @ rng.normal(size=4))
    cfg = write_config(tmp_path / "run.toml", "d.csv", tmp_path / "out")
    assert run_cli(capsys, "train", "--config", cfg)[0] == 0
    ckpt = tmp_path / "out" / "model.safetensors"
    code, out, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--out",
                             tmp_path / "p.npy")
    assert code == 0, err
    assert np.load(tmp_path / "p.npy").shape == (60, 1)
    parser = cli.build_parser()
    text = parser.subcommand_parsers["predict"].format_help()
    assert "target column dropped" in " ".join(text.split())


# --- output paths checked before training ---------------------------------------------------

@pytest.mark.parametrize("case", ["out_is_a_file", "out_under_a_file", "checkpoint_has_a_folder",
                                  "checkpoint_is_a_folder", "plot_format"])
def test_bad_output_paths_fail_before_training(tmp_path, capsys, case):
    (tmp_path / "file").write_text("x")
    out, extra = tmp_path / "o", ""
    if case == "out_is_a_file":
        out = tmp_path / "file"
    elif case == "out_under_a_file":
        out = tmp_path / "file" / "sub"
    elif case == "checkpoint_has_a_folder":
        extra = 'checkpoint = "sub/model.safetensors"'
    elif case == "checkpoint_is_a_folder":
        (out / "model.safetensors").mkdir(parents=True)
    else:
        extra = 'plot = "history.xyz"'
    cfg = write_config(tmp_path / "run.toml", "xor", out, epochs=1, output_extra=extra)
    code, stdout, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2 and "trained" not in stdout
    one_line_error(err)


@pytest.mark.parametrize("case", ["out_folder", "nested_out_folder", "checkpoint_name",
                                  "plot_name"])
def test_names_over_the_file_system_limit_fail_before_training(tmp_path, capsys, case):
    """A folder or file name longer than the file system takes is a usage error naming it,
    found before training, not an OSError after it."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    out, extra, needle = tmp_path / "o", "", "output folder"
    if case == "out_folder":
        out = tmp_path / ("x" * (limit + 1))
    elif case == "nested_out_folder":
        out = tmp_path / "a" / ("x" * (limit + 1)) / "b"
    elif case == "checkpoint_name":
        extra, needle = f'checkpoint = "{"c" * limit}.safetensors"', "output.checkpoint"
    else:
        extra, needle = f'plot = "{"p" * limit}.png"', "output.plot"
    cfg = write_config(tmp_path / "run.toml", "xor", out, epochs=1, output_extra=extra)
    code, stdout, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2 and "trained" not in stdout, err
    one_line_error(err, needle, "over this file system's limit of", "choose a shorter")
    assert not (tmp_path / "a").exists()


def test_longest_checkpoint_name_the_file_system_takes_is_saved(tmp_path, capsys):
    # the save's temporary file, whose name is longer, must fit too
    name = "c" * (os.pathconf(tmp_path, "PC_NAME_MAX") - len(".safetensors"))
    cfg = write_config(tmp_path / "run.toml", "xor", tmp_path / "o", epochs=1,
                       output_extra=f'checkpoint = "{name}.safetensors"')
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    assert (tmp_path / "o" / f"{name}.safetensors").is_file()


def test_data_paths_in_a_config_are_relative_to_the_config_file(rng, tmp_path, capsys,
                                                                 monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    X = rng.normal(size=(40, 2))
    write_csv(folder / "d.csv", X, X.sum(axis=1))
    cfg = write_config(folder / "run.toml", "d.csv", tmp_path / "out")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["config"]["data"]["dataset"] == str(folder / "d.csv")


# --- clear errors instead of raw ones --------------------------------------------------------

def test_negative_seed_is_a_config_error(tmp_path, capsys):
    for section in ("data", "model", "train"):
        cfg = tmp_path / "s.toml"
        cfg.write_text(f"[{section}]\nseed = -1\n")
        code, _, err = run_cli(capsys, "train", "--config", cfg)
        assert code == 2
        one_line_error(err, f"{section}.seed must be a non-negative integer", "-1")


def test_non_utf8_toml_is_a_usage_error(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_bytes(b'[data]\ndataset = "\xff\xfe"\n')
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2
    one_line_error(err, "not UTF-8")


@pytest.mark.parametrize("case, needle", [
    ("x_1d", "X must be 2-D"), ("empty", "empty"), ("string_y", "must be numbers"),
    ("garbage", "not a readable .npz"), ("no_y", "no array named 'y'"),
    ("object_x", "not a readable .npz"),
])
def test_bad_npz_is_a_data_error(rng, tmp_path, capsys, case, needle):
    path = tmp_path / "d.npz"
    n = 10
    if case == "x_1d":
        np.savez(path, X=rng.normal(size=n), y=rng.integers(0, 2, n))
    elif case == "empty":
        np.savez(path, X=np.empty((0, 3)), y=np.empty(0))
    elif case == "string_y":
        np.savez(path, X=rng.normal(size=(n, 2)), y=np.array(["a", "b"] * 5))
    elif case == "garbage":
        path.write_bytes(rng.bytes(200))
    elif case == "no_y":
        np.savez(path, X=rng.normal(size=(n, 2)))
    else:
        np.savez(path, X=np.array([object()] * n), y=np.zeros(n))
    with pytest.raises(DataError, match=needle):
        dn.data.load_dataset(path)
    cfg = write_config(tmp_path / "run.toml", path, tmp_path / "o")
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2
    one_line_error(err, needle)


def test_one_column_csv_is_a_data_error(rng, tmp_path, capsys):
    path = write_csv(tmp_path / "d.csv", rng.normal(size=(10, 1)))
    cfg = write_config(tmp_path / "run.toml", path, tmp_path / "o")
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2
    one_line_error(err, "at least 2")


def test_string_label_column_says_so(rng, tmp_path, capsys):
    X = rng.normal(size=(6, 2))
    lines = ["a,b,species"] + [f"{a},{b},{s}" for (a, b), s in
                               zip(X, ["cat", "dog", "cat", "dog", "cat", "dog"])]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    cfg = write_config(tmp_path / "run.toml", tmp_path / "d.csv", tmp_path / "o")
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2
    one_line_error(err, "target column", "'species'", "text labels", "'cat'")


def test_ragged_and_non_numeric_csv_are_data_errors(tmp_path):
    (tmp_path / "r.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(DataError, match="row 2 has 2 values"):
        dn.data.load_csv(tmp_path / "r.csv")
    (tmp_path / "n.csv").write_text("1,2,3\n4,x,6\n")
    with pytest.raises(DataError, match="line 2: column 2 holds a non-numeric value 'x'"):
        dn.data.load_csv(tmp_path / "n.csv")
    (tmp_path / "b.csv").write_bytes(b"1,2,\xff\n")
    with pytest.raises(DataError, match="not a UTF-8"):
        dn.data.load_csv(tmp_path / "b.csv")


def test_broken_run_json_is_a_usage_error(rng, tmp_path, capsys):
    cfg = write_config(tmp_path / "run.toml", "xor", tmp_path / "out", epochs=1)
    assert run_cli(capsys, "train", "--config", cfg)[0] == 0
    ckpt = tmp_path / "out" / "model.safetensors"
    for broken in ("{not json", "[1, 2]", '{"config": 3}'):
        (tmp_path / "out" / "run.json").write_text(broken)
        code, _, err = run_cli(capsys, "eval", "--checkpoint", ckpt)
        assert code == 2
        one_line_error(err, "broken run.json")


@pytest.mark.parametrize("command", ["train", "eval", "predict"])
def test_device_tpu_lists_valid_devices(tmp_path, capsys, command):
    cfg = write_config(tmp_path / "run.toml", "xor", tmp_path / "o", epochs=1)
    if command == "train":
        argv = ["train", "--config", cfg, "--device", "tpu"]
    else:
        argv = [command, "--checkpoint", tmp_path / "m.safetensors", "--device", "tpu",
                "--out", tmp_path / "p.csv"][: 5 if command == "eval" else 7]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    one_line_error(err, "'tpu'", "valid devices: auto, cpu, cuda")


def test_missing_scikit_learn_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    with pytest.raises(MissingDependencyError, match="pip install scikit-learn") as info:
        dn.data.load_digits()
    assert not isinstance(info.value, DeviceUnavailableError)
    cfg = write_config(tmp_path / "run.toml", "digits", tmp_path / "o", epochs=1)
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 1
    one_line_error(err, "pip install scikit-learn", "devnet-mlp[sklearn]")


# --- progress and the predict output path ---------------------------------------------------


def test_train_shows_progress_by_default(tmp_path, monkeypatch, capsys):
    cfg = cli.validate_config({})
    assert cfg["train"]["progress"] == "auto"  # fit: a live bar when stderr is a terminal
    with pytest.raises(ConfigError, match="train.progress"):
        cli.validate_config({"train": {"progress": "yes"}})
    seen = []

    def fake_fit(*args, **kwargs):
        seen.append(kwargs["progress"])
        raise KeyboardInterrupt  # stop before training

    monkeypatch.setattr(dn, "fit", fake_fit)
    for line, expected in (("", "auto"), ("progress = false", False),
                           ("progress = true", True)):
        path = write_config(tmp_path / "run.toml", "xor", tmp_path / "o", train_extra=line)
        assert run_cli(capsys, "train", "--config", path)[0] == 130
        assert seen[-1] == expected


def test_predict_checks_its_output_path_first(tmp_path, capsys):
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "file").write_text("x")
    missing = tmp_path / "missing.safetensors"  # never read: the output is checked first
    for out, needle in ((tmp_path / "folder.csv", "existing folder"),
                        (tmp_path / "file" / "p.csv", "cannot create"),
                        (tmp_path / "p.txt", "valid formats: .npy, .csv"),
                        (tmp_path / ("p" * 300 + ".csv"), "over this file system's limit")):
        code, _, err = run_cli(capsys, "predict", "--checkpoint", missing, "--out", out)
        assert code == 2
        one_line_error(err, needle)
