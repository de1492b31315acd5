"""Bad input gets a clear error: the class, and key words naming the argument and expectation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import devnet as dn
from devnet.validation import DataConversionWarning

N_IN, N_OUT = 5, 3


def _data(rng, n=40):
    X = rng.standard_normal((n, N_IN)).astype(np.float32)
    y = rng.integers(0, N_OUT, n)
    return X, y


def _model(**kw):
    return dn.MLP([N_IN, 8, N_OUT], backend="cpu", seed=1, **kw)


def _fit(X, y, **kw):
    kw.setdefault("loss", "cross_entropy")
    kw.setdefault("epochs", 1)
    kw.setdefault("progress", False)
    return dn.fit(_model(), X, y, **kw)


def _nan(X, i=3, j=2, v=np.nan):
    X = X.copy()
    X[i, j] = v
    return X


# (id, function of (X, y, rng), exception class, words that must appear in the message)
CASES = [
    ("wrong_feature_count", lambda X, y, r: _fit(X[:, :4], y),
     dn.DataError, ["X", "4 features", "n_in=5"]),
    ("length_mismatch", lambda X, y, r: _fit(X, y[:-3]),
     dn.DataError, ["X", "y", "40 rows", "37"]),
    ("X_1d", lambda X, y, r: _fit(X[:, 0], y),
     dn.DataError, ["X", "2-D", "reshape"]),
    ("X_3d", lambda X, y, r: _fit(X[:, :, None], y),
     dn.DataError, ["X", "2-D", "3-D"]),
    ("labels_out_of_range", lambda X, y, r: _fit(X, np.where(y == 0, 7, y)),
     dn.DataError, ["labels", "y", "[0, 3)", "n_out=3"]),
    ("labels_negative", lambda X, y, r: _fit(X, np.where(y == 0, -1, y)),
     dn.DataError, ["labels", "[0, 3)", "-1"]),
    ("labels_non_integer", lambda X, y, r: _fit(X, y + 0.5),
     dn.DataError, ["cross_entropy", "integer", "labels", "y"]),
    ("xent_probs_wrong_shape", lambda X, y, r: _fit(X, np.ones((40, 2), np.float32) / 2),
     dn.DataError, ["cross_entropy", "(40, 3)", "y"]),
    ("mse_target_wrong_shape", lambda X, y, r: _fit(X, r.random((40, 2)), loss="mse"),
     dn.DataError, ["mse", "y", "(40, 3)", "(40, 2)"]),
    ("bce_target_out_of_range", lambda X, y, r: _fit(X, r.random((40, 3)) * 3,
                                                    loss="binary_cross_entropy"),
     dn.DataError, ["binary_cross_entropy", "[0, 1]", "y"]),
    ("nan_in_X", lambda X, y, r: _fit(_nan(X), y),
     dn.DataError, ["X", "NaN/Inf", "X[3, 2]", "finite"]),
    ("inf_in_X", lambda X, y, r: _fit(_nan(X, 5, 0, np.inf), y),
     dn.DataError, ["X", "NaN/Inf", "X[5, 0]"]),
    ("nan_in_y", lambda X, y, r: _fit(X, _nan(r.random((40, 3)), 1, 1), loss="mse"),
     dn.DataError, ["y", "NaN/Inf", "y[1, 1]"]),
    ("empty_X", lambda X, y, r: _fit(X[:0], y[:0]),
     dn.DataError, ["X", "empty", "0 samples"]),
    ("string_X", lambda X, y, r: _fit(X.astype(str), y),
     dn.DataError, ["X", "dtype", "string", "numeric"]),
    ("object_y", lambda X, y, r: _fit(X, y.astype(object)),
     dn.DataError, ["y", "object", "numeric"]),
    ("ragged_X", lambda X, y, r: _fit([[1.0, 2.0], [1.0]], y[:2]),
     dn.DataError, ["X", "ragged"]),
    ("X_none", lambda X, y, r: _fit(None, y),
     dn.DataError, ["X", "None"]),
    ("batch_size_zero", lambda X, y, r: _fit(X, y, batch_size=0),
     dn.ConfigError, ["batch_size", "positive integer", "0"]),
    ("batch_size_negative", lambda X, y, r: _fit(X, y, batch_size=-8),
     dn.ConfigError, ["batch_size", "positive integer", "-8"]),
    ("batch_size_string", lambda X, y, r: _fit(X, y, batch_size="32"),
     dn.ConfigError, ["batch_size", "positive integer", "str"]),
    ("epochs_zero", lambda X, y, r: _fit(X, y, epochs=0),
     dn.ConfigError, ["epochs", "positive integer"]),
    ("epochs_fraction", lambda X, y, r: _fit(X, y, epochs=2.5),
     dn.ConfigError, ["epochs", "positive integer", "2.5"]),
    ("epochs_none", lambda X, y, r: _fit(X, y, epochs=None),
     dn.ConfigError, ["epochs", "positive integer", "None"]),
    ("lr_zero", lambda X, y, r: _fit(X, y, lr=0.0),
     dn.ConfigError, ["lr", "> 0"]),
    ("lr_negative", lambda X, y, r: _fit(X, y, lr=-1e-3),
     dn.ConfigError, ["lr", "> 0", "-0.001"]),
    ("lr_nan", lambda X, y, r: _fit(X, y, lr=float("nan")),
     dn.ConfigError, ["lr", "finite"]),
    ("lr_string", lambda X, y, r: _fit(X, y, lr="fast"),
     dn.ConfigError, ["lr", "number", "fast"]),
    ("validation_split_zero", lambda X, y, r: _fit(X, y, validation_split=0.0),
     dn.ConfigError, ["validation_split", "between 0 and 1"]),
    ("validation_split_one", lambda X, y, r: _fit(X, y, validation_split=1.0),
     dn.ConfigError, ["validation_split", "between 0 and 1"]),
    ("validation_split_negative", lambda X, y, r: _fit(X, y, validation_split=-0.2),
     dn.ConfigError, ["validation_split", "between 0 and 1"]),
    ("validation_split_too_small", lambda X, y, r: _fit(X, y, validation_split=0.001),
     dn.DataError, ["validation_split", "0 for validation"]),
    ("validation_both", lambda X, y, r: _fit(X, y, validation_split=0.2,
                                             validation_data=(X, y)),
     dn.ConfigError, ["validation_data", "validation_split", "not both"]),
    ("validation_data_not_tuple", lambda X, y, r: _fit(X, y, validation_data=X),
     dn.ConfigError, ["validation_data", "tuple"]),
    ("validation_X_features", lambda X, y, r: _fit(X, y, validation_data=(X[:, :2], y)),
     dn.DataError, ["validation_data[0]", "2 features", "n_in=5"]),
    ("unknown_loss", lambda X, y, r: _fit(X, y, loss="hinge"),
     dn.ConfigError, ["unknown loss", "'hinge'", "cross_entropy", "mse"]),
    ("unknown_optimizer", lambda X, y, r: _fit(X, y, optimizer="adagrad"),
     dn.ConfigError, ["unknown optimizer", "adagrad", "adam", "sgd", "rmsprop"]),
    ("unknown_schedule", lambda X, y, r: _fit(X, y, schedule="linear"),
     dn.ConfigError, ["unknown schedule", "linear", "cosine", "warmup_cosine"]),
    ("unknown_activation", lambda X, y, r: dn.MLP([5, 4, 3], activation="swish2"),
     dn.ConfigError, ["unknown activation", "swish2", "relu", "tanh"]),
    ("unknown_device", lambda X, y, r: dn.MLP([5, 3], backend="tpu"),
     dn.ConfigError, ["unknown device", "tpu", "cpu", "cuda"]),
    ("lossy_dtype", lambda X, y, r: _fit(X.astype(np.float64) + 1e-9, y),
     dn.DataError, ["X", "float64", "float32", "lose precision", "astype"]),
    ("lossy_int_dtype", lambda X, y, r: _fit((X * 1e8).astype(np.int64), y),
     dn.DataError, ["X", "int64", "float32", "lose precision"]),
    ("sample_weight_shape", lambda X, y, r: _fit(X, y, sample_weight=np.ones(39)),
     dn.DataError, ["sample_weight", "(40,)", "(39,)"]),
    ("sample_weight_negative", lambda X, y, r: _fit(X, y, sample_weight=-np.ones(40)),
     dn.DataError, ["sample_weight", ">= 0"]),
    ("callback_class_not_instance", lambda X, y, r: _fit(X, y, callbacks=[dn.EarlyStopping]),
     dn.ConfigError, ["callbacks", "instantiate"]),
    ("not_a_model", lambda X, y, r: dn.fit("model", X, y),
     dn.ConfigError, ["model", "devnet.MLP", "str"]),
    ("predict_wrong_features", lambda X, y, r: dn.predict(_model(), X[:, :3]),
     dn.DataError, ["X", "3 features", "n_in=5"]),
    ("evaluate_length_mismatch", lambda X, y, r: dn.evaluate(_model(), X, y[:10],
                                                             loss="cross_entropy"),
     dn.DataError, ["X", "y", "40 rows", "10"]),
    ("seed_negative", lambda X, y, r: _fit(X, y, seed=-1),
     dn.ConfigError, ["seed", "non-negative integer"]),
    ("poisson_negative_targets", lambda X, y, r: _fit(X, r.random((40, 3)) - 0.5,
                                                      loss="poisson"),
     dn.DataError, ["poisson", ">= 0", "y", "mse"]),
    ("poisson_negative_validation_targets",
     lambda X, y, r: _fit(X, r.random((40, 3), np.float32), loss="poisson",
                          validation_data=(X, r.random((40, 3), np.float32) - 0.5)),
     dn.DataError, ["poisson", ">= 0", "validation_data[1]"]),
    ("evaluate_poisson_negative_targets",
     lambda X, y, r: dn.evaluate(_model(), X, r.random((40, 3)) - 0.5, loss="poisson"),
     dn.DataError, ["poisson", ">= 0", "y"]),
    ("xent_probs_rows_not_summing_to_1", lambda X, y, r: _fit(X, r.random((40, 3))),
     dn.DataError, ["cross_entropy", "probabilities", "y", "sum to 1", "normalise"]),
    ("xent_probs_all_zero_row", lambda X, y, r: _fit(X, _zero_row(np.eye(3)[y], 7)),
     dn.DataError, ["cross_entropy", "sum to 1", "1 row(s)", "row 7 summing to 0"]),
    ("evaluate_xent_probs_not_summing_to_1",
     lambda X, y, r: dn.evaluate(_model(), X, 0.5 * np.eye(3)[y], loss="cross_entropy"),
     dn.DataError, ["cross_entropy", "sum to 1", "40 row(s)"]),
    ("fit_bfloat16_tensor", lambda X, y, r: _fit(_bfloat16(X), y),
     dn.DataError, ["X", "bfloat16", "no NumPy form", "float32"]),
    ("evaluate_bfloat16_tensor",
     lambda X, y, r: dn.evaluate(_model(), X, _bfloat16(np.eye(3)[y]), loss="cross_entropy"),
     dn.DataError, ["y", "bfloat16", "no NumPy form", "float32"]),
    ("predict_bfloat16_tensor", lambda X, y, r: dn.predict(_model(), _bfloat16(X)),
     dn.DataError, ["X", "bfloat16", "no NumPy form", "float32"]),
    ("predict_float64_beyond_float32", lambda X, y, r: dn.predict(_model(), _huge(X)),
     dn.DataError, ["X", "too large for float32", "X[3, 2] = 1e+300", "overflow", "float64"]),
    ("fit_float64_beyond_float32", lambda X, y, r: _fit(_huge(X), y),
     dn.DataError, ["X", "too large for float32", "overflow"]),
    ("model_predict_float64_beyond_float32", lambda X, y, r: _model().predict(_huge(X)),
     dn.DataError, ["X", "too large for float32", "X[3, 2] = 1e+300", "overflow", "float64"]),
]


def _zero_row(probs, i):
    probs = probs.copy()
    probs[i] = 0.0
    return probs


def _bfloat16(a):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.asarray(a, np.float32)).to(torch.bfloat16)


def _huge(X):
    """X as float64 with one finite value (1e300) far beyond float32's range."""
    return _nan(X.astype(np.float64), v=1e300)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(case, rng):
    _, call, exc, words = case
    X, y = _data(rng)
    with pytest.raises(exc) as info:
        call(X, y, rng)
    assert isinstance(info.value, dn.DevnetError)
    msg = str(info.value)
    missing = [w for w in words if w not in msg]
    assert not missing, f"message {msg!r} lacks {missing}"


def test_case_catalogue_is_large_enough():
    assert len(CASES) >= 25


def test_errors_are_also_builtin_kinds():
    assert issubclass(dn.DataError, ValueError) and issubclass(dn.ConfigError, ValueError)
    assert issubclass(dn.DivergenceError, FloatingPointError)


def test_lossless_dtype_conversion_warns_and_trains(rng):
    X, y = _data(rng)
    X64 = X.astype(np.float64)  # exactly representable in float32
    with pytest.warns(DataConversionWarning, match="X converted from float64 to float32"):
        h1 = _fit(X64, y, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h2 = _fit(X, y, seed=0)
    assert h1["loss"] == h2["loss"]


def test_float_labels_that_are_integers_are_accepted(rng):
    X, y = _data(rng)
    h1 = _fit(X, y.astype(np.float64), seed=0)
    h2 = _fit(X, y, seed=0)
    assert h1["loss"] == h2["loss"]


def test_validation_is_not_repeated_in_the_step(rng, monkeypatch):
    """The checks run once per fit at the edge, not per batch."""
    import devnet.train.loop as train

    calls = []
    real = train.check_X
    monkeypatch.setattr(train, "check_X", lambda *a, **k: calls.append(1) or real(*a, **k))
    X, y = _data(rng, 64)
    _fit(X, y, epochs=3, batch_size=4)
    assert len(calls) == 1


def test_every_warning_points_at_the_callers_line(tmp_path, rng):
    # through fit's thread claim, the estimators' locks and scikit-learn's fit wrapper: the
    # warning names this file, where the user would look, not a line inside devnet
    from devnet.optim import schedules
    from devnet.sklearn import MLPRegressor

    X = rng.standard_normal((40, 3)).astype(np.float32)
    y = X[:, 0] + 0.1 * rng.standard_normal(40).astype(np.float32)
    model = dn.MLP([3, 4, 1], seed=int(rng.integers(1 << 30)))
    path = tmp_path / "run.safetensors"
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        dn.fit(model, X, y, epochs=3, progress=False, schedule=schedules.Cosine(0.01, 2),
               checkpoint=path)
        dn.fit(model, X, y, epochs=3, progress=False, resume_from=path)
        dn.fit(model, X.astype(np.float64), y, epochs=1, progress=False)
        MLPRegressor(hidden_layer_sizes=(3,), max_iter=2).fit(X, y)
    kinds = {w.category.__name__ for w in got}
    assert {"ScheduleHorizonWarning", "UserWarning", "DataConversionWarning",
            "ConvergenceWarning"} <= kinds, kinds
    assert [(w.filename, w.category.__name__) for w in got if w.filename != __file__] == []
