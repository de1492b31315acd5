"""What the ``devnet`` command does with a run's data: outputs that would overwrite the data or
the config, probabilities and means read as the run trained them (its loss, its link), keys
that only some datasets take, flags over the config, and the run's held-out split at eval.

Fresh random data each run (the ``rng`` fixture); the command runs in-process on tiny CSV /
NPZ files, training 1-2 epochs at most.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.cli import one_line_error, run_cli
from helpers.datafiles import labelled, write_config, write_rows

import devnet as dn


def test_outputs_overwrote_the_data_file_or_the_config(rng, tmp_path, capsys):
    X, y = labelled(rng)
    data = write_rows(tmp_path / "d.csv", np.column_stack([X, y]))
    before = data.read_text()
    cfg = write_config(tmp_path / "run.toml", data, tmp_path, output='history_csv = "d.csv"')
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2
    one_line_error(err, "output.history_csv", "is the run's data file")
    cfg2 = write_config(tmp_path / "run2.toml", data, tmp_path,
                        output='history_json = "run2.toml"')
    code, _, err = run_cli(capsys, "train", "--config", cfg2)
    assert code == 2
    one_line_error(err, "output.history_json", "is the run's config file")
    assert data.read_text() == before
    # predict --out the data file it reads
    cfg3 = write_config(tmp_path / "run3.toml", data, tmp_path / "o")
    assert run_cli(capsys, "train", "--config", cfg3)[0] == 0
    code, _, err = run_cli(capsys, "predict", "--checkpoint", tmp_path / "o" / "model.safetensors",
                           "--data", data, "--out", data)
    assert code == 2
    one_line_error(err, "is the data file")
    assert data.read_text() == before


def test_proba_on_a_regression_run_wrote_raw_outputs_as_probabilities(rng, tmp_path, capsys):
    X = rng.normal(size=(20, 2))
    data = write_rows(tmp_path / "d.csv", np.column_stack([X, X @ rng.normal(size=2)]))
    cfg = write_config(tmp_path / "run.toml", data, tmp_path / "o")
    assert run_cli(capsys, "train", "--config", cfg)[0] == 0
    code, _, err = run_cli(capsys, "predict", "--checkpoint", tmp_path / "o" / "model.safetensors",
                           "--out", tmp_path / "p.csv", "--proba")
    assert code == 2
    one_line_error(err, "--proba needs a classification run", "'mse'")
    assert not (tmp_path / "p.csv").exists()


def train_run(capsys, tmp_path, X, y, loss=None, name="o"):
    """Trains a 1-epoch CLI run on (X, y) as a CSV; returns its checkpoint path."""
    data = write_rows(tmp_path / f"{name}.csv", np.column_stack([X, y]))
    cfg = write_config(tmp_path / f"{name}.toml", data, tmp_path / name)
    if loss:
        cfg.write_text(cfg.read_text().replace("[train]", f'[train]\nloss = "{loss}"'))
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    return tmp_path / name / "model.safetensors"


@pytest.mark.parametrize("task, command, loss, needle", [
    ("regression", ["predict", "--proba"], "cross_entropy", "mse, mae, huber"),
    ("regression", ["eval"], "poisson", "mse, mae, huber"),
    ("classification", ["predict"], "binary_cross_entropy", "one of: cross_entropy"),
    ("classification", ["eval"], "mse", "one of: cross_entropy"),
    ("binary", ["predict"], "cross_entropy", "one of: binary_cross_entropy"),
])
def test_loss_override_must_read_the_outputs_as_the_run_trained_them(rng, tmp_path, capsys, task,
                                                                     command, loss, needle):
    """--loss with another link than the run's loss (all-1.0 "probabilities", a 0/1 matrix for
    labels, a softmax over one sigmoid output) is refused, before anything is written."""
    X, y = labelled(rng)
    if task == "regression":
        y = X @ rng.normal(size=2)
    ckpt = train_run(capsys, tmp_path, X, y,
                     loss="binary_cross_entropy" if task == "binary" else None)
    out = tmp_path / "p.csv"
    extra = ["--out", out] if command[0] == "predict" else []
    code, _, err = run_cli(capsys, *command, "--checkpoint", ckpt, "--loss", loss, *extra)
    assert code == 2
    one_line_error(err, f"--loss {loss!r} does not fit this run", "leave out --loss", needle)
    assert not out.exists()


def test_loss_override_with_the_runs_link_is_used(rng, tmp_path, capsys):
    X = rng.normal(size=(24, 2))
    y = X @ rng.normal(size=2)
    ckpt = train_run(capsys, tmp_path, X, y)
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--loss", "mae", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["loss"] == pytest.approx(result["mae"])


def test_loss_override_on_a_checkpoint_without_a_recorded_loss_fits_its_outputs(rng, tmp_path,
                                                                                capsys):
    """A model saved from Python records no loss: --loss says it, but a softmax over its one
    output would make every probability 1.0."""
    X, _ = labelled(rng)
    ckpt = tmp_path / "m.safetensors"
    dn.save(dn.MLP([2, 4, 1], backend="cpu", seed=0), ckpt)
    data = write_rows(tmp_path / "x.csv", X)
    out = tmp_path / "p.csv"
    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--data", data, "--proba",
                           "--loss", "cross_entropy", "--out", out)
    assert code == 2
    one_line_error(err, "2 or more outputs", "binary_cross_entropy")
    assert not out.exists()
    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--data", data, "--proba",
                           "--loss", "binary_cross_entropy", "--out", out)
    assert code == 0, err
    assert out.read_text().splitlines()[0] == "0,1"  # no labels recorded: 0..K-1
    assert np.loadtxt(out, delimiter=",", skiprows=1).shape == (len(X), 2)


def test_proba_of_a_binary_cross_entropy_run_has_a_column_per_sorted_label(rng, tmp_path, capsys):
    X, y = labelled(rng)
    ckpt = train_run(capsys, tmp_path, X, np.array([3, 7])[y], loss="binary_cross_entropy")
    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--proba",
                           "--out", tmp_path / "p.npy")
    assert code == 0, err
    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--out", tmp_path / "l.npy")
    assert code == 0, err
    proba, labels = np.load(tmp_path / "p.npy"), np.load(tmp_path / "l.npy")
    assert proba.shape == (len(X), 2)  # P(3), P(7)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    model, _ = dn.load(ckpt, backend="cpu")
    p7 = 1 / (1 + np.exp(-model.predict(X.astype(model.dtype))[:, 0].astype(np.float64)))
    np.testing.assert_allclose(proba[:, 1], p7, rtol=1e-5)
    np.testing.assert_array_equal(labels, np.array([3, 7])[proba.argmax(axis=1)])


def test_poisson_run_predicts_means_not_log_means(rng, tmp_path, capsys):
    X = rng.normal(size=(24, 2))
    ckpt = train_run(capsys, tmp_path, X, rng.poisson(3.0, size=24).astype(float),
                     loss="poisson")
    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--out", tmp_path / "p.npy")
    assert code == 0, err
    model, _ = dn.load(ckpt, backend="cpu")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"),
                               np.exp(model.predict(X.astype(model.dtype))), rtol=1e-6)


@pytest.mark.parametrize("key", ["target_column = 0", "header = true"])
def test_csv_only_keys_were_silently_ignored_for_other_datasets(rng, tmp_path, capsys, key):
    X, y = labelled(rng)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    cfg = write_config(tmp_path / "run.toml", tmp_path / "d.npz", tmp_path / "o", data=key)
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2
    one_line_error(err, f"data.{key.split()[0]} applies to .csv files only")


@pytest.mark.parametrize("section, body, needle", [
    ("optimizer", 'name = "adam"\nbetas = [1.5, 0.999]', "[optimizer] of 'adam': beta1"),
    ("optimizer", 'name = "sgd"\nmomentum = "x"', "[optimizer] of 'sgd': momentum"),
    ("schedule", 'name = "step"\nstep_size = 0', "[schedule] of 'step': step_size"),
    ("schedule", 'name = "warmup_cosine"\nwarmup_steps = -3',
     "[schedule] of 'warmup_cosine': warmup_steps"),
])
def test_optimizer_and_schedule_argument_errors_did_not_name_their_section(
        rng, tmp_path, capsys, section, body, needle):
    X, y = labelled(rng)
    data = write_rows(tmp_path / "d.csv", np.column_stack([X, y]))
    cfg = write_config(tmp_path / "run.toml", data, tmp_path / "o", **{section: body})
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2
    one_line_error(err, needle)


def test_batch_size_and_lr_flags_override_the_config(rng, tmp_path, capsys):
    X, y = labelled(rng)
    data = write_rows(tmp_path / "d.csv", np.column_stack([X, y]))
    cfg = write_config(tmp_path / "run.toml", data, tmp_path / "o")
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--batch-size", 5, "--lr", 0.125)
    assert code == 0, err
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["config"]["train"]["batch_size"] == 5
    assert run["config"]["optimizer"]["lr"] == 0.125
    for flag, value, needle in (("--batch-size", 0, "--batch-size must be a positive integer"),
                                ("--lr", "nan", "--lr must be a finite number > 0"),
                                ("--lr", -1, "--lr must be a finite number > 0")):
        code, _, err = run_cli(capsys, "train", "--config", cfg, flag, value)
        assert code == 2
        one_line_error(err, needle)
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--batch-size", "two")
    assert code == 2 and "invalid int value: 'two'" in err  # argparse's usage error


def test_test_size_leaving_no_training_rows_blamed_X(rng, tmp_path, capsys):
    X, y = labelled(rng, n=12)
    data = write_rows(tmp_path / "d.csv", np.column_stack([X, y]))
    cfg = write_config(tmp_path / "run.toml", data, tmp_path / "o").read_text()
    (tmp_path / "run.toml").write_text(cfg.replace("test_size = 0.25", "test_size = 0.99"))
    code, _, err = run_cli(capsys, "train", "--config", tmp_path / "run.toml")
    assert code == 2
    one_line_error(err, "test_size = 0.99 of 12 sample(s) leaves 0 for training")


@pytest.mark.parametrize("line, needle", [
    ('header = "yes"', 'data.header = \'yes\': expected "auto"'),
    ("target_column = 1.0", "data.target_column = 1.0: expected a column index"),
    ('target_column = ""', "data.target_column = '': expected a column index"),
    ('target_column = "nope"', "'nope' is not a column of"),
])
def test_bad_header_and_target_column_keys_are_config_errors(rng, tmp_path, capsys, line,
                                                              needle):
    X, y = labelled(rng)
    data = write_rows(tmp_path / "d.csv", np.column_stack([X, y]), header=["a", "b", "y"])
    cfg = write_config(tmp_path / "run.toml", data, tmp_path / "o", data=line)
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2
    one_line_error(err, needle)


def test_header_key_reads_a_numeric_header_in_train_and_eval(rng, tmp_path, capsys):
    X, y = labelled(rng)
    data = write_rows(tmp_path / "d.csv", np.column_stack([X, y]), header=["0", "1", "2"])
    cfg = write_config(tmp_path / "run.toml", data, tmp_path / "o",
                       data='header = true\ntarget_column = "2"')
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", "--checkpoint", tmp_path / "o" / "model.safetensors",
                             "--split", "all")
    assert code == 0, err
    assert f"({len(X)} samples)" in out  # the header row was not read as a sample


def test_eval_on_another_data_file_silently_used_a_random_fifth_of_it(rng, tmp_path, capsys):
    X, y = labelled(rng, n=24)
    data = write_rows(tmp_path / "d.csv", np.column_stack([X, y]))
    cfg = write_config(tmp_path / "run.toml", data, tmp_path / "o")
    assert run_cli(capsys, "train", "--config", cfg)[0] == 0
    ckpt = tmp_path / "o" / "model.safetensors"
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt)  # the run's own test split
    assert code == 0 and "(6 samples)" in out, err
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", data)  # same file
    assert code == 0 and "(6 samples)" in out, err
    Xn, yn = labelled(rng, n=10)
    other = write_rows(tmp_path / "held_out.csv", np.column_stack([Xn, yn]))
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", other)
    assert code == 0 and "(10 samples)" in out, err
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", other,
                             "--split", "test")  # said explicitly: as asked
    assert code == 0 and "(2 samples)" in out, err


@pytest.mark.parametrize("change", ["row_appended", "rows_reordered"])
def test_eval_refuses_the_runs_split_once_its_data_changed(rng, tmp_path, capsys, change):
    """The split picks rows by position: with one row more, or the rows in another order,
    "test" would hold rows the model trained on. The run records what its split was drawn
    from (rows, sha256) in run.json and the checkpoint; eval / predict --split refuse."""
    X, y = labelled(rng, n=40)
    ckpt = train_run(capsys, tmp_path, X, y)
    data = tmp_path / "o.csv"
    source = json.loads((tmp_path / "o" / "run.json").read_text())["split_source"]
    assert source["rows"] == 40 and len(source["sha256"]) == 64
    assert dn.io.read_metadata(ckpt)["extra"]["split_source"] == source
    if change == "row_appended":
        write_rows(data, np.column_stack([np.vstack([X, X[:1]]), np.append(y, y[0])]))
    else:
        write_rows(data, np.column_stack([X, y])[::-1])
    for command in (["eval"], ["eval", "--split", "train"],
                    ["predict", "--split", "test", "--out", tmp_path / "p.csv"]):
        code, _, err = run_cli(capsys, *command, "--checkpoint", ckpt)
        assert code == 2, command
        one_line_error(err, "the data changed since the run was trained", "--split all",
                       "train again")
    assert not (tmp_path / "p.csv").exists()
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--split", "all")
    assert code == 0 and f"({40 + (change == 'row_appended')} samples)" in out, err


def test_runs_split_on_another_data_file_warns_that_its_rows_are_not_the_held_out_ones(
        rng, tmp_path, capsys):
    X, y = labelled(rng, n=40)
    ckpt = train_run(capsys, tmp_path, X, y)
    copy = write_rows(tmp_path / "copy.csv", np.column_stack([X, y]))  # the same bytes
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", copy,
                             "--split", "test")
    assert code == 0 and "(10 samples)" in out and "warning" not in err, err
    other = write_rows(tmp_path / "other.csv", np.column_stack([X, y])[:36])
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", other,
                             "--split", "test")
    assert code == 0 and "(9 samples)" in out, err
    assert "devnet: warning:" in err and "drawn from 40 rows, the file has 36" in err
