"""The estimators' SGD / Adam epochs on the compiled CPU epoch end bit for bit where the Python
step ends: coefficients, loss curve, iterations, validation scores and optimizer state, for
both tasks, both solvers, both dtypes, sample weights (batches weighing 0 skipped), L2,
early stopping, partial_fit and warm_start. ``_base._ENGINE = "python"`` forces the Python
step for the comparison."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.exceptions import ConvergenceWarning  # noqa: E402

import devnet as dn  # noqa: E402
from devnet.sklearn import MLPClassifier, MLPRegressor, _base  # noqa: E402
from devnet.train import compiled  # noqa: E402

pytestmark = pytest.mark.skipif(compiled.unavailable(dn.get_backend("cpu")) is not None,
                                reason=str(compiled.unavailable(dn.get_backend("cpu"))))


def _targets(rng, task, n):
    if task == "multiclass":
        return rng.integers(0, 3, n)
    if task == "binary":
        return rng.integers(0, 2, n)
    if task == "multilabel":  # three logistic outputs: dL/dpred scaled by 3
        return rng.integers(0, 2, (n, 3))
    if task == "one_output":
        return rng.normal(size=n)
    return rng.normal(size=(n, 2))


def _weights(rng, kind, n, batch_size):
    if kind is None:
        return None
    w = rng.uniform(0.2, 2.0, n)
    if kind == "zero_batches":  # unshuffled: batch 1 and the last one weigh 0
        w[batch_size:2 * batch_size] = 0
        w[-(n % batch_size or batch_size):] = 0
    elif kind == "sparse":  # shuffled: most batches of 4 have a weight, some none
        w[rng.uniform(size=n) < 0.8] = 0
        w[0] = 1.0
    return w


def _fit(monkeypatch, engine, cls, X, y, sw, calls=1, partial=False, **kw):
    monkeypatch.setattr(_base, "_ENGINE", engine)
    est = cls(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i in range(calls):
            if partial:
                extra = {"classes": np.unique(y)} if cls is MLPClassifier and i == 0 else {}
                est.partial_fit(X, y, sample_weight=sw, **extra)
            else:
                est.fit(X, y, sample_weight=sw)
    return est


def _same(a, b):
    """Every fitted number of ``a`` and ``b`` bit for bit (NaN where the other has NaN)."""
    for x, y in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
    assert np.array_equal(a.loss_curve_, b.loss_curve_, equal_nan=True)
    assert a.n_iter_ == b.n_iter_ and a.t_ == b.t_
    assert np.array_equal(a.loss_, b.loss_, equal_nan=True)
    for name in ("best_loss_", "validation_scores_", "best_validation_score_"):
        assert np.array_equal(np.asarray(getattr(a, name, np.nan), dtype=float),
                              np.asarray(getattr(b, name, np.nan), dtype=float),
                              equal_nan=True), name
    _same_tree(a._optimizer.state_dict(), b._optimizer.state_dict(), "optimizer")


def _same_tree(a, b, where):
    """Nested dicts / lists of numbers, arrays and names, equal bit for bit."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray) or isinstance(a, float):
        assert np.array_equal(a, b, equal_nan=True), where
    else:
        assert a == b, where


# (estimator, task, solver parameters, dtype, sample weights, alpha, early_stopping): each a
# compiled driver structure of its own (seconds of Numba the first time, then disk-cached)
CASES = [
    (MLPClassifier, "multiclass", dict(solver="adam"), "float64", None, 1e-3, False),
    (MLPClassifier, "binary", dict(solver="sgd", momentum=0.9, nesterovs_momentum=True),
     "float32", "sparse", 1e-2, False),
    (MLPClassifier, "multilabel", dict(solver="sgd", momentum=0.5, nesterovs_momentum=False,
                                       learning_rate="invscaling"), "float64", "zero_batches",
     0.0, False),
    (MLPClassifier, "multiclass", dict(solver="adam"), "float32", "plain", 1e-4, True),
    (MLPRegressor, "two_outputs", dict(solver="adam"), "float32", "zero_batches", 0.1, False),
    (MLPRegressor, "one_output", dict(solver="sgd", momentum=0.9, nesterovs_momentum=True),
     "float64", None, 0.0, False),
    (MLPRegressor, "two_outputs", dict(solver="sgd", momentum=0.9, learning_rate="adaptive",
                                       tol=0.5, n_iter_no_change=1), "float64", "plain",
     1e-3, True),
]


@pytest.mark.parametrize("case", CASES, ids=[
    f"{c[0].__name__}-{c[1]}-{c[2]['solver']}-{c[3]}-w_{c[4]}-a{c[5]}-es{int(c[6])}"
    for c in CASES])
def test_compiled_epochs_end_where_the_python_step_ends(rng, monkeypatch, case):
    cls, task, solver, dtype, weights, alpha, early = case
    n, batch_size = int(rng.integers(41, 70)), int(rng.integers(4, 9))
    X = rng.normal(size=(n, 4))
    y = _targets(rng, task, n)
    sw = _weights(rng, weights, n, batch_size)
    kw = dict(hidden_layer_sizes=(6, 5), max_iter=int(rng.integers(4, 8)), alpha=alpha,
              batch_size=batch_size, random_state=int(rng.integers(1 << 30)), dtype=dtype,
              early_stopping=early, shuffle=weights != "zero_batches",
              learning_rate_init=0.01, **solver)
    python = _fit(monkeypatch, "python", cls, X, y, sw, **kw)
    fast = _fit(monkeypatch, "auto", cls, X, y, sw, **kw)
    assert python.engine_ == ("python", "engine='python' was asked for")
    assert fast.engine_[0] == "compiled", fast.engine_
    _same(python, fast)


def test_partial_fit_on_the_compiled_epoch_is_the_python_steps(rng, monkeypatch):
    n = int(rng.integers(30, 50))
    X, y = rng.normal(size=(n, 3)), rng.integers(0, 3, n)
    sw = rng.uniform(0, 2, n)
    kw = dict(hidden_layer_sizes=(5,), batch_size=7, solver="adam", alpha=1e-3,
              random_state=int(rng.integers(1 << 30)))
    python = _fit(monkeypatch, "python", MLPClassifier, X, y, sw, calls=3, partial=True, **kw)
    fast = _fit(monkeypatch, "auto", MLPClassifier, X, y, sw, calls=3, partial=True, **kw)
    assert fast.engine_[0] == "compiled"
    _same(python, fast)
    assert fast._optimizer.t == 3 * -(-n // 7)


def test_warm_start_on_the_compiled_epoch_is_the_python_steps(rng, monkeypatch):
    n = int(rng.integers(30, 50))
    X, y = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    kw = dict(hidden_layer_sizes=(5, 4), batch_size=6, solver="sgd", momentum=0.8,
              max_iter=3, warm_start=True, alpha=1e-2, random_state=int(rng.integers(1 << 30)))
    python = _fit(monkeypatch, "python", MLPRegressor, X, y, None, calls=2, **kw)
    fast = _fit(monkeypatch, "auto", MLPRegressor, X, y, None, calls=2, **kw)
    assert fast.engine_[0] == "compiled"
    _same(python, fast)


def test_the_engine_and_its_reason_are_recorded(rng, monkeypatch):
    X, y = rng.normal(size=(20, 3)), rng.integers(0, 2, 20)
    est = _fit(monkeypatch, "auto", MLPClassifier, X, y, None, hidden_layer_sizes=(3,),
               solver="lbfgs", max_iter=3)
    assert est.engine_[0] == "python" and "lbfgs" in est.engine_[1]
    monkeypatch.setattr(_base, "_ENGINE", "fast")
    with pytest.raises(dn.ConfigError, match="valid engines: auto"):
        MLPClassifier(hidden_layer_sizes=(3,), max_iter=1).fit(X, y)


@pytest.mark.parametrize("n", [1, 2, 17, 1797])
def test_the_epoch_shuffle_is_scikit_learns(rng, n):
    """The estimators shuffle each epoch's index as ``sklearn.utils.shuffle`` does, draw for
    draw, from the same RandomState: the same batches as scikit-learn's MLP."""
    from sklearn.utils import shuffle

    seed = int(rng.integers(2**31))
    index = rng.permutation(n) + 3
    ours, theirs = np.random.RandomState(seed), np.random.RandomState(seed)
    for _ in range(3):  # the state advances alike too
        np.testing.assert_array_equal(_base.shuffled(index, ours),
                                      shuffle(index, random_state=theirs))
