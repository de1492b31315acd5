"""One loss default everywhere: evaluate, predict_proba and profile read "auto" as fit does."""

from __future__ import annotations

import numpy as np
import pytest

import devnet as dn

CEIL = {"copy_gbs": 1.0, "gemm_gflops": 1.0}


def _seed(rng) -> int:
    return int(rng.integers(1 << 30))


def _labels(rng, k: int, per_class: int) -> np.ndarray:
    """Every class 0..k-1 present at least twice, in a fresh random order."""
    return rng.permutation(np.repeat(np.arange(k), per_class))


def test_evaluate_default_scores_a_classifier_as_fit_trained_it(rng):
    # evaluate's default was "mse", which refused the labels fit's default had trained on
    X = rng.standard_normal((60, 5)).astype(np.float32)
    y = _labels(rng, 3, 20)
    model = dn.MLP([5, 8, 3], backend="cpu", seed=_seed(rng))
    hist = dn.fit(model, X, y, epochs=1, batch_size=16, progress=False)
    assert hist.params["loss"] == "cross_entropy"
    scores = dn.evaluate(model, X, y)
    assert scores == dn.evaluate(model, X, y, loss="cross_entropy")
    assert set(scores) == {"loss", "accuracy"}


def test_evaluate_default_on_one_output_and_regression_targets(rng):
    X = rng.standard_normal((40, 4)).astype(np.float32)
    binary = dn.MLP([4, 6, 1], backend="cpu", seed=_seed(rng))
    y01 = _labels(rng, 2, 20)
    assert dn.evaluate(binary, X, y01) == dn.evaluate(binary, X, y01,
                                                      loss="binary_cross_entropy")
    y_real = rng.standard_normal((40, 1)).astype(np.float32)
    assert dn.evaluate(binary, X, y_real) == dn.evaluate(binary, X, y_real, loss="mse")


def test_evaluate_default_refuses_ambiguous_labels_as_fit_does(rng):
    X = rng.standard_normal((5, 4)).astype(np.float32)
    model = dn.MLP([4, 3], backend="cpu", seed=_seed(rng))
    y = rng.permutation([0, 0, 1, 1, 2])  # label 2 occurs once: classes or targets?
    with pytest.raises(dn.DataError, match="task="):
        dn.evaluate(model, X, y)
    assert "accuracy" in dn.evaluate(model, X, y, task="classification")


def test_predict_proba_default_reads_a_one_output_model_as_binary(rng):
    # the default was cross_entropy, which refused the one-output model fit's "auto" trains
    X = rng.standard_normal((30, 4)).astype(np.float32)
    y = _labels(rng, 2, 15)
    model = dn.MLP([4, 6, 1], backend="cpu", seed=_seed(rng))
    assert dn.fit(model, X, y, epochs=1, progress=False).params["loss"] == "binary_cross_entropy"
    proba = dn.predict_proba(model, X)
    assert proba.shape == (30, 2)
    np.testing.assert_array_equal(proba, dn.predict_proba(model, X,
                                                          loss="binary_cross_entropy"))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_predict_proba_default_softmax_for_several_outputs(rng):
    X = rng.standard_normal((12, 4)).astype(np.float32)
    model = dn.MLP([4, 6, 5], backend="cpu", seed=_seed(rng))
    np.testing.assert_array_equal(dn.predict_proba(model, X),
                                  dn.predict_proba(model, X, loss="cross_entropy"))


def test_profile_accepts_auto(rng):
    X = rng.standard_normal((32, 6)).astype(np.float32)
    y = _labels(rng, 4, 8)
    model = dn.MLP([6, 8, 4], backend="cpu", seed=_seed(rng))
    report = dn.profile(model, X, y, loss="auto", repeats=1, warmup=1, ceilings=CEIL)
    assert report.loss == "cross_entropy"
    y_real = rng.standard_normal((32, 4)).astype(np.float32)
    assert dn.profile(model, X, y_real, loss="auto", repeats=1, warmup=1,
                      ceilings=CEIL).loss == "mse"
