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

from devnet.errors import ConfigError, DataError  # noqa: E402
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


_FAST = dict(hidden_layer_sizes=(6,), max_iter=4, random_state=0)


_ACT = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "identity": lambda z: z,
        "logistic": lambda z: 1 / (1 + np.exp(-z))}


def _data(rng, n=24, d=3):
    X = rng.normal(size=(n, d))
    return X, rng.integers(0, 3, n), rng.normal(size=n)


def _forward(est, X, activation):
    """The network's raw outputs computed from the fitted attributes (the test oracle)."""
    a = X
    for i, (W, b) in enumerate(zip(est.coefs_, est.intercepts_, strict=True)):
        a = a @ W + b
        if i < len(est.coefs_) - 1:
            a = _ACT[activation](a)
    return a


@pytest.mark.parametrize("activation", ["tanh", "logistic", "identity"])
def test_set_params_activation_after_fit_is_used_by_predict(rng, activation):
    """A changed activation rebuilds the network: predict must not keep the one built with the
    earlier activation (it would silently stay relu)."""
    X, _, y = _data(rng)
    reg = MLPRegressor(device="cpu", **_FAST).fit(X, y)
    reg.set_params(activation=activation)
    np.testing.assert_allclose(reg.predict(X), _forward(reg, X, activation).ravel(),
                               rtol=1e-12, atol=1e-12)


def test_warm_start_with_changed_activation_trains_like_scikit_learn(rng):
    """Was: the warm-started fit trained the old activation's network."""
    X, y, _ = _data(rng)
    kw = dict(warm_start=True, **_FAST)
    ours = MLPClassifier(device="cpu", **kw).fit(X, y).set_params(activation="tanh").fit(X, y)
    theirs = sk_nn.MLPClassifier(**kw).fit(X, y).set_params(activation="tanh").fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)


def test_unknown_activation_after_fit_lists_the_valid_names(rng):
    X, _, y = _data(rng)
    reg = MLPRegressor(device="cpu", **_FAST).fit(X, y).set_params(activation="softplus")
    with pytest.raises(ConfigError, match="relu"):
        reg.predict(X)


def test_set_params_device_after_fit_moves_the_network(rng):
    """The network follows ``device``; an unknown one is a clear error, not a stale model."""
    X, _, y = _data(rng)
    reg = MLPRegressor(device="auto", **_FAST).fit(X, y)
    before = reg.predict(X)
    reg.set_params(device="cpu")
    np.testing.assert_allclose(reg.predict(X), before, rtol=1e-12)
    from devnet.backend import get_backend
    assert reg._model.backend is get_backend("cpu")
    reg.set_params(device="tpu")
    with pytest.raises(ConfigError, match="cuda"):
        reg.predict(X)


def test_coefs_edited_in_place_drive_predictions(rng):
    """Was: in-place edits of ``coefs_`` / ``intercepts_`` (or list items replaced) were not
    seen: predict used the stale device copy; scikit-learn uses the attributes."""
    X, y, _ = _data(rng)
    clf = MLPClassifier(device="cpu", **_FAST).fit(X, y)
    clf.predict(X)  # the device network exists and is in sync
    clf.coefs_[-1] *= -rng.uniform(1, 2)
    clf.intercepts_[-1] += rng.normal(size=clf.intercepts_[-1].shape)
    expected = _forward(clf, X, "relu")
    expected = np.exp(expected - expected.max(1, keepdims=True))
    np.testing.assert_allclose(clf.predict_proba(X), expected / expected.sum(1, keepdims=True),
                               rtol=1e-12, atol=1e-14)
    clf.coefs_[0] = rng.normal(size=clf.coefs_[0].shape)  # item replaced, same list
    np.testing.assert_array_equal(clf.predict(X),
                                  clf.classes_[_forward(clf, X, "relu").argmax(1)])


def test_partial_fit_starts_from_coefs_edited_in_place(rng):
    X, _, y = _data(rng)
    ours = MLPRegressor(solver="sgd", device="cpu", **_FAST).partial_fit(X, y)
    theirs = sk_nn.MLPRegressor(solver="sgd", **_FAST).partial_fit(X, y)
    for est in (ours, theirs):
        est.coefs_[0][:, 0] = 0.5
        est.partial_fit(X, y)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-9, atol=1e-12)


def test_coefs_with_inconsistent_shapes_name_the_problem(rng):
    """Was: a raw NumPy reshape error ("cannot reshape array of size ...")."""
    X, _, y = _data(rng)
    reg = MLPRegressor(device="cpu", **_FAST).fit(X, y)
    reg.coefs_ = [c[:2] for c in reg.coefs_]
    with pytest.raises(ValueError, match="coefs_"):
        reg.predict(X)
    reg = MLPRegressor(device="cpu", **_FAST).fit(X, y)
    reg.intercepts_ = reg.intercepts_[:1]
    with pytest.raises(ValueError, match="intercepts_"):
        reg.predict(X)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_negative_sample_weight_is_refused(rng, solver):
    """Was: all-negative weights trained by gradient *ascent* (batch mean < 0 was not divided
    out) and mixed signs silently diverged from scikit-learn; devnet's losses take weights
    >= 0, so the estimators refuse them with a clear error."""
    X, y, _ = _data(rng)
    for w in (-np.ones(len(y)), np.where(np.arange(len(y)) % 3, 1.0, -0.5)):
        with pytest.raises(DataError, match="sample_weight"):
            MLPClassifier(solver=solver, device="cpu", **_FAST).fit(X, y, sample_weight=w)
    with pytest.raises(DataError, match="sample_weight"):
        MLPRegressor(solver="sgd", device="cpu", **_FAST).partial_fit(
            X, X[:, 0], sample_weight=-np.ones(len(y)))


def test_nonnegative_sample_weight_still_follows_scikit_learn(rng):
    X, y, _ = _data(rng)
    w = rng.uniform(0, 3, len(y))
    w[:3] = 0
    ours = MLPClassifier(device="cpu", **_FAST).fit(X, y, sample_weight=w)
    theirs = sk_nn.MLPClassifier(**_FAST).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-9)


def test_regressor_non_numeric_y_is_a_clear_error(rng):
    """Was: ``could not convert string to float`` from deep in the fit loop, or a
    UFuncTypeError for loss='poisson'."""
    X, _, _ = _data(rng)
    for kw in (dict(), dict(solver="lbfgs"), dict(loss="poisson")):
        with pytest.raises(DataError, match="numeric"):
            MLPRegressor(device="cpu", **kw, **_FAST).fit(X, np.array(["a", "b"] * 12))


def test_regressor_numeric_strings_convert_like_object_arrays(rng):
    X, _, y = _data(rng)
    as_text = MLPRegressor(device="cpu", **_FAST).fit(X, y.astype(str))
    as_object = MLPRegressor(device="cpu", **_FAST).fit(X, y.astype(str).astype(object))
    np.testing.assert_array_equal(as_text.predict(X), as_object.predict(X))


@pytest.mark.parametrize("sizes", [((3,),), ("a",), (np.nan,), (np.inf,), (2.5,), (True,),
                                   np.array([[3, 2]]), (0,), (-5,)])
def test_hidden_layer_sizes_that_are_not_positive_ints_are_clear_errors(rng, sizes):
    """Was: TypeError / OverflowError from ``int()`` (nested, text, NaN, inf, 2-D)."""
    X, _, y = _data(rng)
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        MLPRegressor(hidden_layer_sizes=sizes, device="cpu", max_iter=1).fit(X, y)


def test_hidden_layer_sizes_accepts_ints_of_any_kind(rng):
    X, _, y = _data(rng)
    for sizes in (4, (4,), [np.int64(4)], np.array([4]), (4.0,)):
        reg = MLPRegressor(hidden_layer_sizes=sizes, device="cpu", max_iter=1).fit(X, y)
        assert [c.shape for c in reg.coefs_] == [(3, 4), (4, 1)]


@pytest.mark.parametrize("fraction", [0.0])
def test_early_stopping_validation_fraction_zero_names_the_parameter(rng, fraction):
    """Was: an error about ``train_test_split``'s ``test_size``, a name the user never gave."""
    X, y, _ = _data(rng)
    with pytest.raises(ConfigError, match="validation_fraction"):
        MLPClassifier(early_stopping=True, validation_fraction=fraction, device="cpu",
                      **_FAST).fit(X, y)
    # without early stopping the fraction is unused, as in scikit-learn
    MLPClassifier(validation_fraction=fraction, device="cpu", **_FAST).fit(X, y)


def test_string_labels_and_proba_columns_follow_scikit_learn(rng):
    X, y, _ = _data(rng)
    labels = np.array(["zeta", "alpha", "mid"])[y]
    ours = MLPClassifier(device="cpu", **_FAST).fit(X, labels)
    theirs = sk_nn.MLPClassifier(**_FAST).fit(X, labels)
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-9)
    np.testing.assert_allclose(ours.predict_proba(X).sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_divergence_is_an_error_not_a_nan_model(rng):
    X, _, y = _data(rng)
    for dtype in ("float32", "float64"):
        with pytest.raises(ValueError, match="non-finite"):
            MLPRegressor(solver="sgd", learning_rate_init=1e6, device="cpu", dtype=dtype,
                         **_FAST).fit(X * 100, y * 1e6)


def test_pickled_estimator_refits_and_predicts_identically(rng):
    X, y, _ = _data(rng)
    clf = MLPClassifier(solver="sgd", device="cpu", **_FAST).partial_fit(X, y, classes=[0, 1, 2])
    copy = pickle.loads(pickle.dumps(clf))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.partial_fit(X, y)
        copy.partial_fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X), copy.predict_proba(X))


def test_tensor_without_numpy_form_is_a_clear_error(rng):
    """Was: ``TypeError: Got unsupported ScalarType BFloat16`` from the tensor export."""
    torch = pytest.importorskip("torch")
    X, _, y = _data(rng)
    with pytest.raises(DataError, match="X .*bfloat16.*float32"):
        MLPRegressor(device="cpu", **_FAST).fit(torch.tensor(X, dtype=torch.bfloat16), y)
    reg = MLPRegressor(device="cpu", **_FAST).fit(X, y)
    with pytest.raises(DataError, match="X .*Convert"):
        reg.predict(torch.tensor(X).to_sparse())


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_batch_of_zero_weight_is_skipped_not_nan(rng, solver):
    """Was: a batch whose samples all weigh 0 divided the L2 term by 0 and the fit ended in
    "Solver produced non-finite parameter weights" (scikit-learn: ZeroDivisionError). Such a
    batch carries no data: training equals training without those rows."""
    X, _, y = _data(rng, n=30)
    w = np.ones(30)
    w[:10] = 0
    kw = dict(solver=solver, shuffle=False, batch_size=10, device="cpu", **_FAST)
    weighted = MLPRegressor(**kw).fit(X, y, sample_weight=w)
    dropped = MLPRegressor(**kw).fit(X[10:], y[10:])
    np.testing.assert_allclose(weighted.predict(X), dropped.predict(X), rtol=1e-12, atol=1e-14)
    # shuffled: zero-weight batches come and go at random; the fit stays finite
    w = (rng.uniform(size=30) < 0.3).astype(float)
    w[0] = 1
    kw.update(shuffle=True, batch_size=2)
    assert np.isfinite(MLPRegressor(**kw).fit(X, y, sample_weight=w).predict(X)).all()


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_partial_fit_after_activation_or_device_change_keeps_the_optimizer(rng, solver):
    """The rebuilt network inherits the optimizer's moments: the run continues exactly as
    scikit-learn's does after ``set_params(activation=...)``, and a device change (here
    "auto" -> "cpu", a new network on the same machine) changes nothing."""
    X, y, _ = _data(rng)
    kw = dict(solver=solver, **_FAST)
    ours = MLPClassifier(device="auto", **kw).partial_fit(X, y, classes=[0, 1, 2])
    theirs = sk_nn.MLPClassifier(**kw).partial_fit(X, y, classes=[0, 1, 2])
    ours.partial_fit(X, y)
    theirs.partial_fit(X, y)
    ours.set_params(activation="tanh", device="cpu")
    theirs.set_params(activation="tanh")
    for _ in range(2):
        ours.partial_fit(X, y)
        theirs.partial_fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-9,
                               atol=1e-12)
