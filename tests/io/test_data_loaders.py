"""``devnet.data``'s loaders on a user's CSV / NPZ files (cells, headers, byte order marks,
labels, integers past 2**53), its split, encoding and standardizing: bad input is refused by
name, never loaded silently; the good paths round-trip exactly, through the command too.

Fresh random data each run (the ``rng`` fixture); the command runs in-process on tiny CSV /
NPZ files, training 1-2 epochs at most.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.cli import run_cli
from helpers.datafiles import labelled, write_config, write_rows

import devnet as dn
from devnet.errors import ConfigError, DataError

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


# --- CSV cells and headers refused or read as written --------------------------------------

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
