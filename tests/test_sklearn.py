"""devnet.sklearn: scikit-learn's estimator checks, parity with scikit-learn's own MLPs, and the
meta-estimator tools (Pipeline, GridSearchCV, clone, pickle)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn import datasets  # noqa: E402
from sklearn import neural_network as sk_nn  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from devnet.sklearn import EXPECTED_FAILED_CHECKS, MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

_CHECKED = [
    MLPClassifier(max_iter=40, random_state=0, device="cpu"),
    MLPClassifier(solver="sgd", max_iter=40, random_state=0, device="cpu"),
    MLPRegressor(max_iter=40, random_state=0, device="cpu"),
    MLPRegressor(solver="sgd", learning_rate="adaptive", max_iter=40, random_state=0,
                 device="cpu"),
]


@parametrize_with_checks(_CHECKED, expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _split(loader, standardize_y=False):
    X, y = loader(return_X_y=True)
    if standardize_y:
        y = (y - y.mean()) / y.std()
    Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
    scaler = StandardScaler().fit(Xtr)
    return scaler.transform(Xtr), scaler.transform(Xte), ytr, yte


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("name", ["digits", "breast_cancer", "diabetes"])
def test_parity_with_scikit_learn(name, solver):
    loader = getattr(datasets, f"load_{name}")
    Xtr, Xte, ytr, yte = _split(loader, standardize_y=name == "diabetes")
    ours_cls, theirs_cls = ((MLPRegressor, sk_nn.MLPRegressor) if name == "diabetes"
                            else (MLPClassifier, sk_nn.MLPClassifier))
    kw = dict(hidden_layer_sizes=(32,), max_iter=60, random_state=0, solver=solver,
              learning_rate_init=0.01 if solver == "sgd" else 0.001, alpha=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = theirs_cls(**kw).fit(Xtr, ytr)
        ours = ours_cls(device="cpu", **kw).fit(Xtr, ytr)
    # same initialisation, shuffles and loss convention: the curves agree to float noise
    np.testing.assert_allclose(ours.loss_curve_[:5], theirs.loss_curve_[:5], rtol=1e-4)
    assert ours.n_iter_ == theirs.n_iter_
    assert abs(ours.score(Xte, yte) - theirs.score(Xte, yte)) < 0.02
    assert ours.score(Xte, yte) > (0.9 if name != "diabetes" else 0.2)
    for a, b in zip(ours.coefs_, theirs.coefs_, strict=True):
        assert isinstance(a, np.ndarray) and a.shape == b.shape


def test_float32_tracks_float64():
    Xtr, Xte, ytr, yte = _split(datasets.load_breast_cancer)
    kw = dict(hidden_layer_sizes=(16,), max_iter=30, random_state=1, device="cpu")
    a = MLPClassifier(dtype="float32", **kw).fit(Xtr, ytr)
    b = MLPClassifier(dtype="float64", **kw).fit(Xtr, ytr)
    assert a.coefs_[0].dtype == np.float32 and b.coefs_[0].dtype == np.float64
    assert a.predict_proba(Xte).dtype == np.float32
    np.testing.assert_allclose(a.predict_proba(Xte), b.predict_proba(Xte), atol=1e-3)


def test_multilabel_and_multioutput():
    X, Y = datasets.make_multilabel_classification(n_samples=120, n_classes=4, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(20,), max_iter=200, random_state=0,
                        device="cpu").fit(X, Y)
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 4
    assert clf.predict(X).shape == Y.shape
    assert clf.score(X, Y) > 0.3  # subset accuracy
    ref = sk_nn.MLPClassifier(hidden_layer_sizes=(20,), max_iter=200, random_state=0).fit(X, Y)
    np.testing.assert_allclose(clf.loss_curve_[:3], ref.loss_curve_[:3], rtol=1e-4)

    X, Y = datasets.make_regression(n_samples=100, n_features=5, n_targets=3, random_state=0)
    Y = Y / Y.std()
    reg = MLPRegressor(hidden_layer_sizes=(20,), max_iter=100, random_state=0,
                       device="cpu").fit(X, Y)
    ref = sk_nn.MLPRegressor(hidden_layer_sizes=(20,), max_iter=100, random_state=0).fit(X, Y)
    assert reg.predict(X).shape == (100, 3)
    np.testing.assert_allclose(reg.loss_curve_[:3], ref.loss_curve_[:3], rtol=1e-4)


def test_early_stopping_and_schedules_follow_scikit_learn():
    Xtr, _, ytr, _ = _split(datasets.load_digits)
    for kw in (dict(early_stopping=True, n_iter_no_change=3),
               dict(solver="sgd", learning_rate="invscaling", power_t=0.25,
                    learning_rate_init=0.05),
               dict(solver="sgd", learning_rate="adaptive", tol=1e-2, n_iter_no_change=2)):
        kw = dict(hidden_layer_sizes=(16,), max_iter=40, random_state=0, **kw)
        theirs = sk_nn.MLPClassifier(**kw).fit(Xtr, ytr)
        ours = MLPClassifier(device="cpu", **kw).fit(Xtr, ytr)
        assert ours.n_iter_ == theirs.n_iter_, kw
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-3)
        if kw.get("early_stopping"):
            np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_)
            assert ours.best_loss_ is None and ours.best_validation_score_ > 0.8


def test_warm_start_and_partial_fit():
    Xtr, Xte, ytr, yte = _split(datasets.load_breast_cancer)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0, warm_start=True,
                        device="cpu").fit(Xtr, ytr)
    first = clf.loss_curve_[-1]
    clf.fit(Xtr, ytr)
    assert len(clf.loss_curve_) == 10 and clf.loss_curve_[-1] < first
    inc = MLPClassifier(hidden_layer_sizes=(8,), random_state=0, device="cpu")
    for _ in range(3):
        inc.partial_fit(Xtr, ytr, classes=[0, 1])
    assert inc.n_iter_ == 1 and len(inc.loss_curve_) == 3 and inc.t_ == 3 * len(Xtr)
    # the pickled estimator resumes with its optimizer state
    restored = pickle.loads(pickle.dumps(inc))
    inc.partial_fit(Xtr, ytr)
    restored.partial_fit(Xtr, ytr)
    np.testing.assert_allclose(restored.coefs_[0], inc.coefs_[0], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="classes not in"):
        inc.partial_fit(Xtr, ytr + 5)


def test_pipeline_gridsearch_clone_pickle():
    X, y = datasets.load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=60, random_state=0,
                                                         learning_rate_init=0.05,
                                                         device="cpu"))
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(4,), (16,)]}, cv=2)
    grid.fit(X, y)
    assert grid.best_params_["mlpclassifier__hidden_layer_sizes"] in [(4,), (16,)]
    assert grid.score(X, y) > 0.7
    est = grid.best_estimator_[-1]
    cloned = clone(est)
    assert cloned.get_params() == est.get_params() and not hasattr(cloned, "coefs_")
    blob = pickle.dumps(grid.best_estimator_)
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.predict_proba(X), grid.best_estimator_.predict_proba(X))
    assert "_model" not in again[-1].__dict__ or again[-1]._model is not est._model


def test_fitted_attributes_are_numpy_and_coefs_drive_predictions():
    X, y = datasets.load_iris(return_X_y=True)
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=20, random_state=0,
                        device="cpu").fit(X, y)
    for name in ("coefs_", "intercepts_"):
        assert all(isinstance(a, np.ndarray) for a in getattr(clf, name))
    assert clf.n_layers_ == 3 and clf.out_activation_ == "softmax"
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), clf.predict_proba(X),
                               rtol=1e-6)
    clf.coefs_ = [np.zeros_like(c) for c in clf.coefs_]  # set by hand: predictions follow
    proba = clf.predict_proba(X)
    assert np.allclose(proba, proba[0])


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    X, y = datasets.load_iris(return_X_y=True)
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=10, random_state=0, device="cpu")
    reg.fit(torch.from_numpy(X), torch.from_numpy(y.astype(float)))
    np.testing.assert_allclose(reg.predict(torch.from_numpy(X)), reg.predict(X))


def test_bad_parameters_name_the_problem():
    X, y = datasets.load_iris(return_X_y=True)
    with pytest.raises(ValueError, match="solver"):
        MLPClassifier(solver="newton").fit(X, y)
    with pytest.raises(ValueError, match="device"):
        MLPClassifier(device="tpu", max_iter=1).fit(X, y)
