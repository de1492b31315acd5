"""The ``devnet`` command and ``devnet.data`` on a user's own files: columns matched by name,
what training inferred said up front, pandas' index column, headers on predictions, 1-based
column numbers, and loaders that return what the default model takes (float32).

Fresh random data each run (the ``rng`` fixture); the command runs in-process on tiny CSV /
NPZ files, training a few epochs at most.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
from helpers import datafiles
from helpers.cli import one_line_error, run_cli

import devnet as dn
from devnet.errors import ConfigError, DataError


def write_table(path, columns: dict, header=True, index=False):
    """A CSV of named columns (floats written exactly with repr); ``index`` adds the unnamed
    0..n-1 first column pandas' ``to_csv()`` writes."""
    names, values = list(columns), np.column_stack(list(columns.values()))
    lines = []
    if header:
        lines.append(",".join(([""] if index else []) + names))
    for i, row in enumerate(values.tolist()):
        cells = [repr(float(v)) if not float(v).is_integer() else str(int(v)) for v in row]
        lines.append(",".join(([str(i)] if index else []) + cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_config(path, dataset, out, data="", epochs=3):
    return datafiles.write_config(path, dataset, out, data=data, epochs=epochs, hidden=16,
                                  batch_size=16)


def separable(rng, n=120):
    """Three features on very different scales; the label depends on f0 and f1 only, so a
    model fed the columns in another order scores near chance."""
    X = rng.normal(size=(n, 3)) * np.array([1.0, 3.0, 50.0]) + np.array([0.0, 0.0, 200.0])
    y = (X[:, 0] - X[:, 1] / 3 > 0).astype(np.int64)
    return X, y


def train(capsys, tmp_path, columns, data="", name="o", epochs=3, **kwargs):
    """Train a CLI run on a CSV of ``columns``; returns (checkpoint, stdout, stderr)."""
    path = write_table(tmp_path / f"{name}.csv", columns, **kwargs)
    cfg = write_config(tmp_path / f"{name}.toml", path, tmp_path / name, data=data,
                       epochs=epochs)
    code, out, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    return tmp_path / name / "model.safetensors", out, err


def evaluate(capsys, ckpt, data, *extra):
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", data, "--json",
                             *extra)
    assert code == 0, err
    return json.loads(out), err


def predict(capsys, ckpt, data, out, *extra):
    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--data", data, "--out",
                           out, *extra)
    assert code == 0, err
    return err


# --- columns by name ------------------------------------------------------------------------

def test_reordered_columns_score_the_same_as_the_original(rng, tmp_path, capsys):
    X, y = separable(rng)
    cols = {"f0": X[:, 0], "f1": X[:, 1], "f2": X[:, 2], "label": y}
    ckpt, _, _ = train(capsys, tmp_path, cols, data="standardize = true", epochs=20)
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["feature_names"] == ["f0", "f1", "f2"] and run["target_name"] == "label"
    extra = dn.io.read_metadata(ckpt)["extra"]
    assert extra["feature_names"] == ["f0", "f1", "f2"] and extra["target_name"] == "label"

    same = write_table(tmp_path / "same.csv", cols)
    order = ["f1", "f2", "f0", "label"]  # the target last: by position, f1 would feed f0
    shuffled = write_table(tmp_path / "shuffled.csv", {k: cols[k] for k in order})
    base, _ = evaluate(capsys, ckpt, same)
    assert base["accuracy"] > 0.8  # learnt: a model fed the wrong columns would not score it
    moved, err = evaluate(capsys, ckpt, shuffled)
    assert moved == base and "note" not in err
    # predict: the reordered features (no target) give the same predictions
    feats = write_table(tmp_path / "f.csv", {k: cols[k] for k in ["f2", "f0", "f1"]})
    predict(capsys, ckpt, same, tmp_path / "a.npy")
    predict(capsys, ckpt, feats, tmp_path / "b.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


@pytest.mark.parametrize("change, needles", [
    ("rename", ["has column(s) 'g1' that the model was not trained on", "'f0', 'f1', 'f2'"]),
    ("drop", ["lacks the feature column(s) 'f2'"]),
    ("extra", ["has column(s) 'f3' that the model was not trained on"]),
    ("no_target", ["has no target column 'label'"]),
])
def test_renamed_missing_or_unknown_columns_are_refused_by_name(rng, tmp_path, capsys, change,
                                                                 needles):
    X, y = separable(rng, n=40)
    cols = {"f0": X[:, 0], "f1": X[:, 1], "f2": X[:, 2], "label": y}
    ckpt, _, _ = train(capsys, tmp_path, cols, epochs=1)
    bad = dict(cols)
    if change == "rename":
        bad = {("g1" if k == "f1" else k): v for k, v in cols.items()}
    elif change == "drop":
        del bad["f2"]
    elif change == "extra":
        bad["f3"] = rng.normal(size=len(y))
    else:
        del bad["label"]
    path = write_table(tmp_path / "bad.csv", bad)
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", path)
    assert code == 2 and out == ""
    one_line_error(err, str(path), *needles)
    pred = tmp_path / "p.csv"
    code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--data", path, "--out",
                           pred)
    if change == "no_target":  # predict needs only the features
        assert code == 0, err
        assert len(pred.read_text().splitlines()) == len(y) + 1
    else:
        assert code == 2 and not pred.exists()
        one_line_error(err, *needles)


def test_headerless_file_is_matched_by_position_and_says_so(rng, tmp_path, capsys):
    X, y = separable(rng, n=40)
    cols = {"f0": X[:, 0], "f1": X[:, 1], "f2": X[:, 2], "label": y}
    ckpt, _, _ = train(capsys, tmp_path, cols, epochs=1)
    named, _ = evaluate(capsys, ckpt, write_table(tmp_path / "named.csv", cols))
    bare = write_table(tmp_path / "bare.csv", cols, header=False)
    result, err = evaluate(capsys, ckpt, bare)
    assert result == named
    notes = [ln for ln in err.splitlines() if ln.startswith("devnet: note:")]
    assert len(notes) == 1 and "has no header row" in notes[0], err
    assert "matched to the model's inputs by position" in notes[0]
    assert "f0, f1, f2" in notes[0]  # what the model was trained on
    # a run trained without a header: a named file is matched by position too, with a note
    ckpt2, _, _ = train(capsys, tmp_path, cols, name="bare_run", header=False, epochs=1)
    assert json.loads((tmp_path / "bare_run" / "run.json").read_text())["feature_names"] is None
    err = predict(capsys, ckpt2, tmp_path / "named.csv", tmp_path / "p.npy")
    assert "the run recorded no column names" in err and "by position" in err


# --- what training inferred -----------------------------------------------------------------

def test_train_says_the_task_loss_classes_and_features(rng, tmp_path, capsys):
    X, _ = separable(rng, n=48)
    labels = np.array([-7, 3, 12])[np.arange(48) % 3]
    cols = {"f0": X[:, 0], "f1": X[:, 1], "f2": X[:, 2], "label": labels}
    _, out, _ = train(capsys, tmp_path, cols, epochs=1)
    line = out.splitlines()[0]
    assert line == ("devnet: classification (inferred from 'label': 3 integer values), loss "
                    "cross_entropy, 3 classes; 3 features: f0, f1, f2"), out
    target = X @ rng.normal(size=3)
    _, out, _ = train(capsys, tmp_path, {**{f"x{j}": X[:, j % 3] for j in range(8)},
                                         "price": target}, name="reg", epochs=1)
    assert out.splitlines()[0] == ("devnet: regression (inferred from 'price': non-integer "
                                   "values), loss mse, 1 output; 8 features: x0, x1, x2, ... "
                                   "(8)"), out
    _, out, _ = train(capsys, tmp_path, cols, name="cfg", data='task = "classification"',
                      header=False, epochs=1)
    assert out.splitlines()[0] == ("devnet: classification (data.task), loss cross_entropy, "
                                   "3 classes; 3 features"), out
    cfg = write_config(tmp_path / "xor.toml", "xor", tmp_path / "xor", epochs=1)
    cfg.write_text(cfg.read_text().replace("test_size = 0.25", "test_size = 0"))
    code, out, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    assert out.splitlines()[0].startswith("devnet: regression (inferred from the target: ")
    assert "loss mse, 1 output; 2 features" in out.splitlines()[0]


def test_many_classes_with_few_samples_each_warns(rng, tmp_path, capsys):
    """An integer age read as 41 classes of about 5 samples: said, with how to say
    regression."""
    n = 205
    age = 20 + rng.permutation(np.arange(n) % 41)
    X = np.column_stack([age + rng.normal(size=n), rng.normal(size=n)])
    _, out, err = train(capsys, tmp_path, {"a": X[:, 0], "b": X[:, 1], "age": age}, epochs=1)
    assert "classification (inferred from 'age': 41 integer values)" in out
    warning = [ln for ln in err.splitlines() if ln.startswith("devnet: warning:")]
    assert len(warning) == 1, err
    assert "41 classes and a median of 5 samples per class" in warning[0]
    assert 'set task = "regression" in [data]' in warning[0]
    # few classes with plenty of samples: no warning
    _, out, err = train(capsys, tmp_path, {"a": X[:, 0], "b": X[:, 1], "c": age % 2},
                        name="two", epochs=1)
    assert "2 classes" in out and "warning" not in err


# --- pandas files ---------------------------------------------------------------------------

def test_pandas_index_column_is_dropped_with_a_note(rng, tmp_path, capsys):
    X, y = separable(rng, n=30)
    cols = {"f0": X[:, 0], "f1": X[:, 1], "label": y}
    path = write_table(tmp_path / "pd.csv", cols, index=True)
    assert path.read_text().startswith(",f0,f1,label\n0,")
    with pytest.warns(dn.data.DataWarning, match="dropped column 1, which has no name and "
                                                  r"holds 0\.\.29"):
        Xf, yf = dn.data.load_csv(path, dtype="float64")
    np.testing.assert_array_equal(Xf, X[:, :2])
    np.testing.assert_array_equal(yf, y)
    with pytest.warns(dn.data.DataWarning):
        assert dn.data.csv_columns(path) == ["f0", "f1", "label"]
    # pandas' unnamed columns: ",0,1,2" above the index is a header, not a mixed row
    numbered = write_table(tmp_path / "num.csv", {"0": X[:, 0], "1": X[:, 1], "2": y},
                           index=True)
    with pytest.warns(dn.data.DataWarning):
        Xn, yn = dn.data.load_csv(numbered, dtype="float64")
    np.testing.assert_array_equal(Xn, X[:, :2])
    # the command: a note, and a model with two inputs
    ckpt, _, err = train(capsys, tmp_path, cols, name="cli", index=True, epochs=1)
    assert "devnet: note: " in err and "dropped column 1" in err and "index=False" in err
    model, _ = dn.load(ckpt, backend="cpu")
    assert model.n_in == 2
    run = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert run["feature_names"] == ["f0", "f1"]
    # an error in such a file numbers the columns as the file has them (the index is column 1)
    lines = path.read_text().splitlines()
    cells = lines[4].split(",")
    cells[2] = "x"
    lines[4] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(dn.data.DataWarning), pytest.raises(
            DataError, match=r"line 5: column 3 \('f1'\) holds a non-numeric value 'x'"):
        dn.data.load_csv(path)


@pytest.mark.parametrize("first", ["", " "])
def test_unnamed_column_that_is_no_index_is_refused(rng, tmp_path, first):
    X, y = separable(rng, n=12)
    text = f"{first},f1,label\n" + "".join(
        f"{a!r},{b!r},{c}\n" for a, b, c in zip(X[:, 0] + 5, X[:, 1], y))
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(DataError, match="line 1: column 1 of the header row has no name.*"
                                        r"to_csv\(index=False\)"):
        dn.data.load_csv(tmp_path / "d.csv")
    (tmp_path / "e.csv").write_text(text.replace(f"{first},f1,", "f0,,", 1))
    with pytest.raises(DataError, match="column 2 of the header row has no name"):
        dn.data.load_csv(tmp_path / "e.csv")


# --- predictions get a header ---------------------------------------------------------------

def test_predict_csv_has_a_header_row(rng, tmp_path, capsys):
    X, _ = separable(rng, n=36)
    labels = np.array([-7, 3, 12])[np.arange(36) % 3]
    cols = {"f0": X[:, 0], "f1": X[:, 1], "species": labels}
    ckpt, _, _ = train(capsys, tmp_path, cols, epochs=1)
    data = tmp_path / "o.csv"
    predict(capsys, ckpt, data, tmp_path / "l.csv")
    predict(capsys, ckpt, data, tmp_path / "p.csv", "--proba")
    lines = (tmp_path / "l.csv").read_text().splitlines()
    assert lines[0] == "species" and len(lines) == 37
    assert set(lines[1:]) <= {"-7", "3", "12"}
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "-7,3,12" and len(lines) == 37
    proba = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    # .npy stays an array, no header
    predict(capsys, ckpt, data, tmp_path / "l.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"),
                                  np.loadtxt(tmp_path / "l.csv", skiprows=1))
    # regression: the target's name; without one "prediction"; several outputs output_1..k
    reg = {"a": X[:, 0], "b": X[:, 1], "price": X[:, 0] * 2.5 + 0.1}
    ckpt, _, _ = train(capsys, tmp_path, reg, name="reg", epochs=1)
    predict(capsys, ckpt, tmp_path / "reg.csv", tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == "price"
    ckpt, _, _ = train(capsys, tmp_path, reg, name="bare", header=False, epochs=1)
    predict(capsys, ckpt, tmp_path / "bare.csv", tmp_path / "b.csv")
    assert (tmp_path / "b.csv").read_text().splitlines()[0] == "prediction"
    np.savez(tmp_path / "multi.npz", X=X[:, :2], y=np.column_stack([X[:, 0], -X[:, 1]]))
    cfg = write_config(tmp_path / "multi.toml", tmp_path / "multi.npz", tmp_path / "multi",
                       epochs=1)
    assert run_cli(capsys, "train", "--config", cfg)[0] == 0
    predict(capsys, tmp_path / "multi" / "model.safetensors", tmp_path / "multi.npz",
            tmp_path / "m.csv")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == "output_1,output_2" and len(lines[1].split(",")) == 2


# --- 1-based columns ------------------------------------------------------------------------

def test_csv_errors_count_lines_and_columns_from_one(rng, tmp_path):
    n, d = 10, 4
    table = rng.normal(size=(n, d))
    i, j = int(rng.integers(n)), int(rng.integers(d - 1))
    rows = [[repr(v) for v in row] for row in table.tolist()]
    rows[i][j] = ""
    (tmp_path / "d.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=rf"line {i + 1}: column {j + 1} is empty"):
        # header=False: an empty cell in the first row would otherwise make it a mixed header
        dn.data.load_csv(tmp_path / "d.csv", task="regression", header=False)
    rows[i][j] = "abc"
    names = [f"c{k + 1}" for k in range(d)]
    (tmp_path / "h.csv").write_text(",".join(names) + "\n"
                                    + "\n".join(",".join(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=rf"line {i + 2}: column {j + 1} \('c{j + 1}'\) holds a "
                                        "non-numeric value 'abc'"):
        dn.data.load_csv(tmp_path / "h.csv", task="regression")
    (tmp_path / "m.csv").write_text("1,two,3\n4,5,6\n")
    with pytest.raises(DataError, match=r"line 1: the first row mixes numbers and text "
                                        r"\('two' in column 2\)"):
        dn.data.load_csv(tmp_path / "m.csv")


# --- float32 loaders ------------------------------------------------------------------------

def test_loaders_return_what_the_default_model_takes(rng, tmp_path):
    n = 64
    X = rng.normal(size=(n, 3)) * 10.0 ** rng.integers(-3, 4, size=(1, 3))
    y = X @ rng.normal(size=3)
    path = write_table(tmp_path / "d.csv", {"a": X[:, 0], "b": X[:, 1], "c": X[:, 2],
                                            "y": y})
    Xf, yf = dn.data.load_csv(path)
    assert Xf.dtype == np.float32 and yf.dtype == np.float32
    np.testing.assert_array_equal(Xf, X.astype(np.float32))  # one rounding, from float64
    # the obvious own-data flow: no dtype error, and it learns
    model = dn.MLP([Xf.shape[1], 16, 1], backend="cpu", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dn.validation.DataConversionWarning)
        hist = dn.fit(model, Xf, yf, epochs=3, batch_size=16, progress=False)
    assert np.isfinite(hist.history["loss"][-1])
    X64, y64 = dn.data.load_csv(path, dtype="float64")
    assert X64.dtype == y64.dtype == np.float64
    np.testing.assert_array_equal(X64, X)
    # class labels stay int64 whatever the dtype
    labels = write_table(tmp_path / "l.csv", {"a": X[:, 0], "k": np.arange(n) % 3})
    assert dn.data.load_csv(labels)[1].dtype == np.int64
    # .npz and bundled data too
    np.savez(tmp_path / "d.npz", X=X, y=y)
    Xn, yn = dn.data.load_npz(tmp_path / "d.npz")
    assert Xn.dtype == yn.dtype == np.float32
    assert dn.data.load_npz(tmp_path / "d.npz", dtype=np.float64)[0].dtype == np.float64
    Xx, yx = dn.data.load_dataset("xor")
    assert Xx.dtype == yx.dtype == np.float32
    for bad in ("float16", "int64", None, "f32x"):
        with pytest.raises(ConfigError, match="valid dtypes: float32, float64"):
            dn.data.load_csv(path, dtype=bad)


def test_values_beyond_float32_are_an_error_naming_the_cell(rng, tmp_path):
    X = rng.normal(size=(8, 2))
    X[5, 1] = 1e39
    path = write_table(tmp_path / "d.csv", {"a": X[:, 0], "b": X[:, 1], "y": np.arange(8) % 2})
    with pytest.raises(DataError, match=r"line 7: column 2 \('b'\) holds 1e\+39, beyond the "
                                        "range of float32.*dtype='float64'"):
        dn.data.load_csv(path)
    assert dn.data.load_csv(path, dtype="float64")[0][5, 1] == 1e39
    big_y = write_table(tmp_path / "y.csv", {"a": X[:, 0], "y": -X[:, 1]})
    with pytest.raises(DataError, match="the target holds -1e\\+39, beyond the range"):
        dn.data.load_csv(big_y, task="regression")


def test_bundled_split_hash_is_the_one_earlier_runs_recorded():
    """The split hash of a bundled dataset is a sha256 of its features as float64, whatever
    dtype the loaders return, so a run folder's recorded hash matches on every later read."""
    pytest.importorskip("sklearn")
    from devnet.cli.dataset import split_source

    X = np.asarray(dn.data.load_digits()[0], dtype=np.float64)
    digest = hashlib.sha256(f"{X.dtype.str} {X.shape}".encode() + X.tobytes()).hexdigest()
    X32, _ = dn.data.load_dataset("digits")
    assert X32.dtype == np.float32
    assert split_source("digits", X32) == {"rows": len(X), "sha256": digest}
