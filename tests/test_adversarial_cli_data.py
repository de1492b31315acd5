"""Adversarial review of ``devnet.data`` and the ``devnet`` command: one regression test per
defect found, named after it, and the good paths they must not break.

Fresh random data each run (the ``rng`` fixture); the command runs in-process on tiny CSV /
NPZ files, training 1-2 epochs at most.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli_defects import one_line_error, run_cli  # the CLI's test conventions

import devnet as dn
from devnet.errors import ConfigError, DataError

# --- helpers --------------------------------------------------------------------------------


def write_rows(path, rows, header=None, bom=False):
    """A CSV of ``rows`` (floats written exactly with repr), optional header and BOM."""
    lines = ([",".join(header)] if header else []) + [
        ",".join(repr(float(v)) for v in row) for row in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def labelled(rng, n=24, d=2):
    """X (n, d) float and 0/1 labels, both classes at least twice."""
    X = rng.normal(size=(n, d))
    y = np.arange(n) % 2
    rng.shuffle(y)
    return X, y


def write_config(path, dataset, out, data="", epochs=1, optimizer="", schedule="", output=""):
    path.write_text(f"""
[data]
dataset = "{dataset}"
test_size = 0.25
{data}
[model]
hidden = [8]
[optimizer]
lr = 0.05
{optimizer}
[schedule]
{schedule}
[train]
epochs = {epochs}
batch_size = 8
device = "cpu"
progress = false
[output]
dir = "{out}"
{output}
""")
    return path


# --- good paths: what the loaders must keep doing -------------------------------------------

@pytest.mark.parametrize("header", [False, True])
def test_csv_round_trip_equals_the_numpy_array(rng, tmp_path, header):
    X = rng.normal(size=(17, 4)) * 10.0 ** rng.integers(-5, 6, size=(1, 4))
    y = rng.normal(size=17)
    names = ["a", "b", "c", "d", "target"] if header else None
    path = write_rows(tmp_path / "d.csv", np.column_stack([X, y]), header=names)
    Xf, yf = dn.data.load_csv(path, task="regression", dtype="float64")
    np.testing.assert_array_equal(Xf, X)  # repr round-trips float64 exactly
    np.testing.assert_array_equal(yf, y)
    # the default, float32: the float64 values cast once (no second rounding on the way)
    X32, y32 = dn.data.load_csv(path, task="regression")
    assert X32.dtype == y32.dtype == np.float32
    np.testing.assert_array_equal(X32, X.astype(np.float32))
    np.testing.assert_array_equal(y32, y.astype(np.float32))
    # the target taken from the middle: X keeps the other columns in order
    Xm, ym = dn.data.load_csv(path, target_column=1, task="regression", dtype="float64")
    np.testing.assert_array_equal(ym, X[:, 1])
    np.testing.assert_array_equal(Xm, np.column_stack([X[:, :1], X[:, 2:], y]))
    Xa, none = dn.data.load_csv(path, with_target=False, dtype=np.float64)
    assert none is None
    np.testing.assert_array_equal(Xa, np.column_stack([X, y]))


def test_labels_keep_their_mapping_through_train_eval_and_predict(rng, tmp_path, capsys):
    """Class labels -7, 3, 12 (not 0..K-1, named column first): predict gives labels back, in
    the same mapping eval and --proba use."""
    n = 36
    X = rng.normal(size=(n, 2))
    y = np.array([-7, 3, 12])[np.arange(n) % 3]
    rng.shuffle(y)
    path = write_rows(tmp_path / "d.csv", np.column_stack([y, X]), header=["label", "f1", "f2"])
    cfg = write_config(tmp_path / "run.toml", path, tmp_path / "o",
                       data='target_column = "label"', epochs=2)
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["classes"] == [-7, 3, 12]
    ckpt = tmp_path / "o" / "model.safetensors"
    for name, extra in (("labels.npy", []), ("proba.npy", ["--proba"])):
        code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--out",
                               tmp_path / name, *extra)
        assert code == 0, err
    pred, proba = np.load(tmp_path / "labels.npy"), np.load(tmp_path / "proba.npy")
    assert set(pred.tolist()) <= {-7, 3, 12}
    np.testing.assert_array_equal(pred, np.array([-7, 3, 12])[proba.argmax(axis=1)])
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--split", "all", "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(np.mean(pred == y))
    # a features-only file with a header predicts the same
    write_rows(tmp_path / "f.csv", X, header=["f1", "f2"])
    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--data", tmp_path / "f.csv",
                           "--out", tmp_path / "f.npy")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), pred)


# --- CSV defects ----------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_nan_inf_or_overflowing_csv_cell_was_loaded_silently(rng, tmp_path, cell):
    X, y = labelled(rng)
    lines = [f"{a!r},{b!r},{c}" for (a, b), c in zip(X.tolist(), y)]
    row = int(rng.integers(1, len(lines)))
    a, _, c = lines[row].split(",")
    lines[row] = f"{a},{cell},{c}"
    (tmp_path / "d.csv").write_text("f1,f2,y\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"line {row + 2}: column 2 \('f2'\) holds '{cell}', "
                                        "which is not a finite number"):
        dn.data.load_csv(tmp_path / "d.csv")


@pytest.mark.parametrize("first, bad", [("1,,0", "an empty cell"), ("0x10,2,0", "'0x10'"),
                                        ('"1,5",2,0', "'1,5'"), ("True,2,0", "'True'"),
                                        ("1j,2,1", "'1j'")])
def test_first_row_with_one_bad_cell_was_silently_dropped_as_a_header(rng, tmp_path, first,
                                                                       bad):
    X, y = labelled(rng)
    body = "\n".join(f"{a!r},{b!r},{c}" for (a, b), c in zip(X.tolist(), y))
    (tmp_path / "d.csv").write_text(first + "\n" + body + "\n")
    with pytest.raises(DataError, match=rf"line 1: the first row mixes numbers and text "
                                        rf"\({bad} in column"):
        dn.data.load_csv(tmp_path / "d.csv")


def test_header_argument_reads_a_numeric_looking_header(rng, tmp_path):
    """pandas writes unnamed columns as "0,1,2": header=True says it is a header."""
    X, y = labelled(rng)
    path = write_rows(tmp_path / "d.csv", np.column_stack([X, y]), header=["0", "1", "2"])
    Xf, yf = dn.data.load_csv(path, header=True, dtype="float64")
    np.testing.assert_array_equal(Xf, X)
    np.testing.assert_array_equal(yf, y)
    Xr, _ = dn.data.load_csv(path, header=False, task="regression")
    assert len(Xr) == len(X) + 1 and Xr[0].tolist() == [0.0, 1.0]
    with pytest.raises(ConfigError, match="header must be True, False or None"):
        dn.data.load_csv(path, header="yes")
    # header=False on a named header: the names are cells that are no numbers
    path = write_rows(tmp_path / "n.csv", np.column_stack([X, y]), header=["a", "b", "y"])
    with pytest.raises(DataError, match="line 1: column 1 holds a non-numeric value 'a'"):
        dn.data.load_csv(path, header=False)


@pytest.mark.parametrize("header", [None, ["f1", "f2", "y"]])
def test_byte_order_mark_ate_the_first_data_row(rng, tmp_path, header):
    X, y = labelled(rng)
    path = write_rows(tmp_path / "d.csv", np.column_stack([X, y]), header=header, bom=True)
    Xf, yf = dn.data.load_csv(path, target_column="y" if header else -1, dtype="float64")
    np.testing.assert_array_equal(Xf, X)
    np.testing.assert_array_equal(yf, y)


@pytest.mark.parametrize("names", [["a", "y"], ["a", "b", "c", "y"]])
def test_header_of_another_width_than_the_rows_was_accepted(rng, tmp_path, names):
    X, y = labelled(rng)
    path = write_rows(tmp_path / "d.csv", np.column_stack([X, y]), header=names)
    with pytest.raises(DataError, match=f"the header has {len(names)} names but the rows have 3"):
        dn.data.load_csv(path)


def test_empty_cell_in_a_later_row_names_its_line(rng, tmp_path):
    X, y = labelled(rng)
    lines = [f"{a!r},{b!r},{c}" for (a, b), c in zip(X.tolist(), y)]
    lines[5] = lines[5].split(",")[0] + ",," + str(y[5])
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n\n   \n")  # blank lines: skipped
    with pytest.raises(DataError, match=r"line 6: column 2 is empty; every cell must be a "
                                        "number"):
        dn.data.load_csv(tmp_path / "d.csv")


@pytest.mark.parametrize("sep, shown", [(";", "';'"), ("\t", "'\\\\t'")])
def test_other_separator_hints_that_devnet_reads_commas(rng, tmp_path, sep, shown):
    X, y = labelled(rng)
    text = "\n".join(sep.join([repr(a), repr(b), str(c)]) for (a, b), c in zip(X.tolist(), y))
    (tmp_path / "d.csv").write_text(text + "\n")
    with pytest.raises(DataError, match=f"has 1 column.*looks {shown}-separated"):
        dn.data.load_csv(tmp_path / "d.csv")


@pytest.mark.parametrize("big", ["1e20", "-1e19", "9007199254740993"])
def test_huge_class_labels_wrapped_to_another_class(rng, tmp_path, big):
    X, y = labelled(rng)
    lines = [f"{a!r},{b!r},{c}" for (a, b), c in zip(X.tolist(), y)]
    lines[0] = lines[0].rsplit(",", 1)[0] + "," + big
    lines[1] = lines[1].rsplit(",", 1)[0] + "," + big
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="is too large; class labels must be integers"):
        dn.data.load_csv(tmp_path / "d.csv", task="classification")


def test_huge_uint64_npz_labels_wrapped_to_minus_one(rng, tmp_path):
    X, y = labelled(rng)
    y = y.astype(np.uint64)
    y[y == 1] = np.iinfo(np.uint64).max
    np.savez(tmp_path / "d.npz", X=X, y=y)
    with pytest.raises(DataError, match="18446744073709551615 is too large"):
        dn.data.load_npz(tmp_path / "d.npz", task="classification")


@pytest.mark.parametrize("path", [3, None, 2.5, ["a.csv"]])
def test_non_path_argument_was_a_raw_type_error(path):
    with pytest.raises(ConfigError, match="data file path must be a str or os.PathLike"):
        dn.data.load_csv(path)
    with pytest.raises(ConfigError, match="data file path must be a str or os.PathLike"):
        dn.data.load_npz(path)


@pytest.mark.parametrize("bad", [2.0, None, True, 1.5, [1]])
def test_target_column_of_a_wrong_type_was_called_out_of_range(rng, tmp_path, bad):
    X, y = labelled(rng)
    path = write_rows(tmp_path / "d.csv", np.column_stack([X, y]))
    with pytest.raises(ConfigError, match=r"target_column must be a column index \(int\) or a "
                                          r"header name \(str\), got"):
        dn.data.load_csv(path, target_column=bad)


def test_target_column_by_header_name(rng, tmp_path):
    X, y = labelled(rng)
    table = np.column_stack([X[:, 0], y, X[:, 1]])
    path = write_rows(tmp_path / "d.csv", table, header=["f1", "label", "f2"])
    Xf, yf = dn.data.load_csv(path, target_column="label", dtype="float64")
    np.testing.assert_array_equal(Xf, X)
    np.testing.assert_array_equal(yf, y)
    with pytest.raises(ConfigError, match="'species' is not a column of .*valid names: 'f1', "
                                          "'label', 'f2'"):
        dn.data.load_csv(path, target_column="species")
    dup = write_rows(tmp_path / "dup.csv", table, header=["f", "f", "y"])
    with pytest.raises(ConfigError, match=r"'f' is ambiguous: .* 2 columns of that name "
                                          r"\(columns 1, 2\); .*target_column = 0 for the first"):
        dn.data.load_csv(dup, target_column="f")
    Xd, _ = dn.data.load_csv(dup, target_column="y", task="regression",
                             dtype="float64")  # duplicates elsewhere
    np.testing.assert_array_equal(Xd, table[:, :2])
    bare = write_rows(tmp_path / "bare.csv", table)
    with pytest.raises(ConfigError, match="names a column, but .* has no header row; give an "
                                          r"index -3\.\.2"):
        dn.data.load_csv(bare, target_column="label")


# --- NPZ, splitting, encoding, standardizing ------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_npz_with_nan_or_inf_in_X_was_loaded_silently(rng, tmp_path, value):
    X, y = labelled(rng)
    i, j = int(rng.integers(len(X))), int(rng.integers(2))
    X[i, j] = value
    np.savez(tmp_path / "d.npz", X=X, y=y)
    with pytest.raises(DataError, match=rf"X holds 1 NaN/Inf value\(s\), first at X\[{i}, {j}\]"):
        dn.data.load_npz(tmp_path / "d.npz")


def test_npz_integers_beyond_2_53_lost_precision_silently(rng, tmp_path):
    X = rng.integers(0, 100, size=(8, 2))
    X[3, 1] = 2**53 + 1
    np.savez(tmp_path / "d.npz", X=X, y=np.arange(8) % 2)
    with pytest.raises(DataError, match=r"integers beyond 2\*\*53"):
        dn.data.load_npz(tmp_path / "d.npz")


def test_train_test_split_with_mismatched_lengths_crashed_or_truncated(rng):
    X, y = labelled(rng, n=10)
    with pytest.raises(DataError, match="X has 10 rows but y has 5"):
        dn.data.train_test_split(X, y[:5], 0.3)
    with pytest.raises(DataError, match="X has 10 rows but y has 20"):
        dn.data.train_test_split(X, np.concatenate([y, y]), 0.3)


@pytest.mark.parametrize("n, test_size", [(1, 0.3), (10, 0.99), (2, 0.75)])
def test_train_test_split_left_an_empty_training_part(rng, n, test_size):
    X, y = labelled(rng, n=max(n, 2))
    with pytest.raises(DataError, match=f"test_size = {test_size} of {n} sample.* leaves 0 "
                                        "for training"):
        dn.data.train_test_split(X[:n], y[:n], test_size)


@pytest.mark.parametrize("kwargs, needle", [
    ({"test_size": "0.3"}, "test_size must be a number strictly between 0 and 1"),
    ({"test_size": None}, "test_size must be a number strictly between 0 and 1"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"seed": 1.5}, "seed must be a non-negative integer"),
])
def test_train_test_split_bad_arguments_were_raw_type_errors(rng, kwargs, needle):
    X, y = labelled(rng, n=10)
    with pytest.raises(ConfigError, match=needle):
        dn.data.train_test_split(X, y, **kwargs)


def test_train_test_split_takes_lists_and_keeps_rows_paired(rng):
    X, y = rng.normal(size=(12, 2)), rng.normal(size=12)
    Xtr, Xte, ytr, yte = dn.data.train_test_split(X.tolist(), y.tolist(), 0.25, seed=3)
    assert Xtr.shape == (9, 2) and Xte.shape == (3, 2)
    rows = {tuple(r): v for r, v in zip(X.tolist(), y.tolist())}
    for part_X, part_y in ((Xtr, ytr), (Xte, yte)):
        assert [rows[tuple(r)] for r in part_X.tolist()] == part_y.tolist()


def test_encode_labels_made_nan_a_class_and_flattened_2d(rng):
    with pytest.raises(DataError, match="NaN or Inf"):
        dn.data.encode_labels(np.array([1.0, np.nan, 1.0]))
    with pytest.raises(DataError, match="1-D array of labels"):
        dn.data.encode_labels(rng.integers(0, 3, size=(4, 2)))
    y = rng.choice(np.array([12, -7, 3]), size=20)
    classes, codes = dn.data.encode_labels(y)
    assert classes.tolist() == sorted(set(y.tolist()))
    np.testing.assert_array_equal(classes[codes], y)


def test_standardize_of_huge_values_overflowed_to_zeros(rng):
    a = rng.uniform(-1, 1, size=(50, 2)) * 1.5e308
    scaled = dn.data.standardize(a)
    assert np.all(np.isfinite(scaled))
    np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(scaled.std(axis=0), 1, rtol=1e-12)
    small = dn.data.standardize(a / 1e300)  # the same data, in range: the same result
    np.testing.assert_allclose(scaled, small, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), [[1.0, 2.0], [3.0]]])
def test_standardize_of_text_or_ragged_rows_was_a_raw_value_error(bad):
    with pytest.raises(DataError, match="standardize"):
        dn.data.standardize(bad)


# --- the command ----------------------------------------------------------------------------

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
