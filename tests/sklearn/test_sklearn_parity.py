"""devnet.sklearn against scikit-learn itself, in float64 on the same data and seed: L-BFGS,
Adam and SGD runs (whole loss curves and final coefficients), the Poisson loss, the reported
log-loss of saturated outputs, and scikit-learn's max_fun, hidden partial_fit and
messages."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from devnet.kernels import reference  # noqa: E402
from scipy.special import expit  # noqa: E402
from sklearn import datasets  # noqa: E402
from sklearn import neural_network as sk_nn  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network._base import binary_log_loss, log_loss, poisson_loss  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import devnet as dn  # noqa: E402
from devnet.sklearn import MLPClassifier, MLPRegressor, _lbfgs, _logloss, _optim  # noqa: E402

RTOL = 1e-10  # float64: the runs agree to rounding, far below this


def _digits(n=300, n_class=10):
    X, y = datasets.load_digits(n_class=n_class, return_X_y=True)
    return StandardScaler().fit_transform(X[:n]), y[:n]


def _poisson_data(rng, n=120):
    X = rng.uniform(0, 1, (n, 3))
    y = rng.poisson(np.exp(X @ np.array([0.5, -0.3, 1.0]) + 0.5))
    return X, y


def _close_params(ours, theirs, rtol=RTOL):
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_,
                    strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * np.abs(b).max())


def _fit_both(ours_cls, theirs_cls, X, y, sample_weight=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = theirs_cls(**kw).fit(X, y, sample_weight=sample_weight)
        ours = ours_cls(device="cpu", **kw).fit(X, y, sample_weight=sample_weight)
    return ours, theirs


# --- L-BFGS ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["multiclass", "binary", "multilabel", "weighted"])
def test_lbfgs_classifier_matches_scikit_learn(case, rng):
    if case == "multilabel":
        X, y = datasets.make_multilabel_classification(n_samples=80, n_classes=4,
                                                       random_state=int(rng.integers(1000)))
    else:
        X, y = _digits(200, n_class=2 if case == "binary" else 10)
    sw = rng.uniform(0.5, 2.0, len(X)) if case == "weighted" else None
    kw = dict(hidden_layer_sizes=(12,), activation="tanh", solver="lbfgs", max_iter=25,
              alpha=1e-3, random_state=int(rng.integers(1000)))
    ours, theirs = _fit_both(MLPClassifier, sk_nn.MLPClassifier, X, y, sw, **kw)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=RTOL)
    _close_params(ours, theirs)
    # absolute, like the parameters' check: L-BFGS's iterates amplify rounding, and a
    # probability's relative error grows as it nears 0 (seen: 2.6e-9 relative, 1.7e-10 abs)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=0,
                               atol=1e-9)
    assert not hasattr(ours, "loss_curve_") and not hasattr(theirs, "loss_curve_")


@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
def test_lbfgs_regressor_matches_scikit_learn(loss, rng):
    X, y = _poisson_data(rng)
    if loss == "squared_error":
        y = np.column_stack([y, rng.standard_normal(len(y))])  # two outputs
    # 12 iterations: in this ill-conditioned valley scikit-learn drifts from itself by 1e-10
    # at 40 iterations when X moves by one ulp, so a longer run would test the valley
    kw = dict(loss=loss, hidden_layer_sizes=(6,), activation="relu", solver="lbfgs",
              max_iter=12, random_state=int(rng.integers(1000)))
    ours, theirs = _fit_both(MLPRegressor, sk_nn.MLPRegressor, X, y, **kw)
    assert ours.n_iter_ == theirs.n_iter_ and ours.out_activation_ == theirs.out_activation_
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=RTOL)
    _close_params(ours, theirs)
    # relative to the outputs' scale: an output that cancels to near 0 (1.7e-5 among outputs of
    # ~5) differs by rounding (1.9e-14) that is 1e-9 of itself
    want = theirs.predict(X)
    np.testing.assert_allclose(ours.predict(X), want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


def test_lbfgs_warnings_and_max_fun_follow_scikit_learn():
    X, y = _digits(150)
    texts = []
    for cls in (sk_nn.MLPClassifier, MLPClassifier):
        for kw in (dict(max_iter=3), dict(max_fun=5)):
            with pytest.warns(ConvergenceWarning) as record:
                est = cls(hidden_layer_sizes=(8,), solver="lbfgs", random_state=0, **kw).fit(X, y)
            texts.append((est.n_iter_, [str(w.message) for w in record]))
    assert texts[:2] == texts[2:]
    assert "lbfgs failed to converge after 3 iteration(s)" in texts[0][1][0]
    assert "max_iter=3" in texts[0][1][0]


def test_max_fun_accepted_so_scikit_learn_params_port():
    for theirs_cls, ours_cls in ((sk_nn.MLPClassifier, MLPClassifier),
                                 (sk_nn.MLPRegressor, MLPRegressor)):
        params = theirs_cls(solver="lbfgs", max_fun=77, alpha=0.5).get_params()
        ours = ours_cls(**params)
        assert ours.get_params()["max_fun"] == 77
        assert set(params) <= set(ours.get_params())
    with pytest.raises(ValueError, match="max_fun"):
        MLPClassifier(solver="lbfgs", max_fun=0).fit(*_digits(20))


def test_partial_fit_hidden_for_lbfgs_as_scikit_learn():
    for cls in (MLPClassifier, MLPRegressor):
        assert not hasattr(cls(solver="lbfgs"), "partial_fit")
        assert hasattr(cls(solver="sgd"), "partial_fit")
    with pytest.raises(AttributeError, match="partial_fit"):
        MLPClassifier(solver="lbfgs").partial_fit  # noqa: B018


def test_lbfgs_objective_gradient_and_layout(rng):
    """The packed gradient is the loss's derivative, entry by entry (central differences)."""
    X = rng.standard_normal((7, 4))
    y = rng.integers(0, 3, 7)
    y[:3] = [0, 1, 2]
    clf = MLPClassifier(hidden_layer_sizes=(5, 3), solver="lbfgs", max_iter=1, alpha=0.1,
                        activation="tanh", random_state=int(rng.integers(1000)), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    Y = clf._label_binarizer.transform(y)
    theta = np.hstack([p.ravel() for p in clf.coefs_ + clf.intercepts_])  # scikit-learn's
    value, grad = clf._loss_grad_lbfgs(theta, X, Y, None, [], [], [], [])
    for a, b in zip(clf.coefs_ + clf.intercepts_,
                    np.split(theta, np.cumsum([p.size for p in clf.coefs_ + clf.intercepts_])),
                    strict=False):
        np.testing.assert_array_equal(a.ravel(), b)  # the network is left at theta
    eps = 1e-6
    numeric = np.empty_like(theta)
    for i in range(theta.size):
        d = np.zeros_like(theta)
        d[i] = eps
        numeric[i] = (clf._loss_grad_lbfgs(theta + d, X, Y)[0]
                      - clf._loss_grad_lbfgs(theta - d, X, Y)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    order, coef_slices = _lbfgs.packed_layout([4, 5, 3, 3])
    assert sorted(order.tolist()) == list(range(order.size))
    assert coef_slices[-1].stop == 4 * 5 + 5 * 3 + 3 * 3


def test_lbfgs_same_path_on_every_device(backend):
    X, y = _digits(120)
    kw = dict(hidden_layer_sizes=(10,), solver="lbfgs", max_iter=8, random_state=0,
              dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cpu = MLPClassifier(device="cpu", **kw).fit(X, y)
        dev = MLPClassifier(device=backend.device, **kw).fit(X, y)
    assert dev.n_iter_ == cpu.n_iter_
    np.testing.assert_allclose(dev.loss_, cpu.loss_, rtol=1e-9)


# --- Adam and SGD: whole loss curves -----------------------------------------------------------

@pytest.mark.parametrize("solver", ["adam", "sgd", "sgd_plain"])
def test_stochastic_loss_curves_match_scikit_learn(solver, rng):
    X, y = _digits(250)
    extra = dict(momentum=0.0) if solver == "sgd_plain" else {}
    kw = dict(hidden_layer_sizes=(16,), solver=solver.split("_")[0], max_iter=30,
              learning_rate_init=0.01, alpha=1e-3, batch_size=64,
              random_state=int(rng.integers(1000)), **extra)
    ours, theirs = _fit_both(MLPClassifier, sk_nn.MLPClassifier, X, y, **kw)
    assert ours.n_iter_ == theirs.n_iter_ == len(ours.loss_curve_)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=RTOL)
    _close_params(ours, theirs)
    assert ours._optimizer.learning_rate == pytest.approx(theirs._optimizer.learning_rate,
                                                          rel=1e-15)


@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
def test_regressor_adam_loss_curves_match_scikit_learn(loss, rng):
    X, y = _poisson_data(rng, 150)
    kw = dict(loss=loss, hidden_layer_sizes=(8,), max_iter=40, learning_rate_init=0.01,
              random_state=int(rng.integers(1000)))
    ours, theirs = _fit_both(MLPRegressor, sk_nn.MLPRegressor, X, y, **kw)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=RTOL)
    _close_params(ours, theirs)


def test_estimator_adam_folds_bias_correction_into_step_size(rng):
    """The defect: the estimators used devnet's Adam (eps added to sqrt(v_hat)), scikit-learn
    adds it to sqrt(v) and corrects the step size; dn.optim.Adam keeps PyTorch's formula."""
    model = dn.MLP([3, 4, 2], dtype="float64", backend="cpu", seed=0)
    p0 = model.params.copy()
    g = rng.standard_normal(p0.size) * 1e-6  # small gradients: where eps matters
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    ours = _optim.SklearnAdam(model, lr=lr, betas=(b1, b2), eps=eps)
    m = np.zeros_like(p0)
    v = np.zeros_like(p0)
    expected = p0.copy()
    for t in range(1, 4):
        model.grads[...] = g * t
        ours.step()
        m = b1 * m + (1 - b1) * g * t
        v = b2 * v + (1 - b2) * (g * t) ** 2
        lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        expected += -lr_t * m / (np.sqrt(v) + eps)
        assert ours.learning_rate == lr_t
    np.testing.assert_allclose(model.params, expected, rtol=1e-14)
    model.params[...] = p0
    torch_like = dn.optim.Adam(model, lr=lr, betas=(b1, b2), eps=eps)
    for t in range(1, 4):
        model.grads[...] = g * t
        torch_like.step()
    assert np.abs(model.params - expected).max() > 1e-6  # the two formulas really differ


# --- Poisson -------------------------------------------------------------------------------------

def test_poisson_loss_matches_scikit_learn_and_reference(rng, backend):
    z = rng.standard_normal((40, 3))
    t = rng.poisson(2.0, (40, 3)).astype(np.float64)
    loss = dn.losses.get("poisson")
    value, grad = loss(backend.asarray(z), backend.asarray(t))
    # scikit-learn's half deviance averages samples and sums outputs; devnet's averages both
    assert value == pytest.approx(poisson_loss(t, np.exp(z)) / 3, rel=1e-12)
    ref = np.empty_like(z)
    ref_value = reference.poisson(z, t, ref, None, 1 / z.size)
    np.testing.assert_allclose(backend.to_numpy(grad), ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(backend.to_numpy(grad), (np.exp(z) - t) / z.size, rtol=1e-12)
    assert value == pytest.approx(float(ref_value), rel=1e-12)
    with pytest.raises(dn.errors.DataError, match="poisson targets must be >= 0"):
        loss(z, -t - 1)


def test_poisson_regressor_refuses_negative_targets(rng):
    X, y = _poisson_data(rng, 30)
    y = y - y.max() - 1.0
    with pytest.raises(ValueError, match="negative.*loss='poisson'"):
        MLPRegressor(loss="poisson", device="cpu").fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPRegressor(loss="squared_error", max_iter=2, device="cpu").fit(X, y)  # fine there


# --- the reported log-loss: probabilities clipped to [eps, 1 - eps] ---------------------------
# scikit-learn reports the log-loss of clipped probabilities (its gradient is the unclipped
# one). The exact loss of the logits parts from it once outputs saturate, and so would the
# tol / n_iter_no_change stopping epoch (unscaled breast_cancer, sgd, invscaling,
# learning_rate_init=1.0: 13 epochs against scikit-learn's 12).

def _saturating(case):
    """(X, y, sample_weight, estimator keywords) of a fit whose outputs saturate."""
    X, y = datasets.load_breast_cancer(return_X_y=True)  # unscaled: logits of 1e3..1e8
    kw = dict(solver="sgd", learning_rate="invscaling", learning_rate_init=1.0,
              random_state=0)
    sw = None
    if case == "weighted":
        sw = np.random.default_rng(0).uniform(0.5, 2.0, len(X))
    elif case == "float32":
        X = X.astype(np.float32)
    elif case == "multiclass":
        X, y = datasets.load_digits(return_X_y=True)
        X, y = X[:300], y[:300]
        kw = dict(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=1.0, max_iter=40,
                  random_state=0)
    elif case == "multilabel":
        X, y = datasets.make_multilabel_classification(n_samples=200, n_classes=4,
                                                       random_state=0)
        kw = dict(solver="sgd", learning_rate_init=1.0, max_iter=40, random_state=0)
    return X, y, sw, kw


@pytest.mark.parametrize("case", ["binary", "weighted", "float32", "multiclass", "multilabel"])
def test_saturated_loss_curve_and_stopping_epoch_follow_scikit_learn(case):
    X, y, sw, kw = _saturating(case)
    ours, theirs = _fit_both(MLPClassifier, sk_nn.MLPClassifier, X, y, sw, **kw)
    assert ours.n_iter_ == theirs.n_iter_ == len(ours.loss_curve_)
    if case != "multiclass" and case != "multilabel":
        assert ours.n_iter_ < ours.max_iter  # stopped by tol / n_iter_no_change, as theirs
    # float32: both compute in float32 (matmul sums in another order)
    rtol = 1e-6 if case == "float32" else RTOL
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=rtol)
    if case != "float32":
        _close_params(ours, theirs)


def test_saturated_lbfgs_objective_follows_scikit_learn():
    X, y = datasets.load_breast_cancer(return_X_y=True)
    kw = dict(hidden_layer_sizes=(16,), solver="lbfgs", max_iter=10, random_state=0)
    ours, theirs = _fit_both(MLPClassifier, sk_nn.MLPClassifier, X, y, **kw)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=RTOL)
    _close_params(ours, theirs)


@pytest.mark.parametrize("saturated", [False, True])
def test_clipped_loss_changes_the_report_only(saturated, monkeypatch):
    """Training is unchanged bit for bit (the gradient stays the unclipped one, as
    scikit-learn's); without saturation the curve is the exact loss's, to rounding."""
    if saturated:
        X, y, _, kw = _saturating("binary")
    else:
        X, y = _digits(300)
        kw = dict(hidden_layer_sizes=(16,), random_state=0)
    kw.update(max_iter=6, n_iter_no_change=100, device="cpu")  # six epochs, both ways
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clipped = MLPClassifier(**kw).fit(X, y)
        monkeypatch.setattr(_logloss.ClippedLoss, "make", lambda *a, **k: None)
        exact = MLPClassifier(**kw).fit(X, y)
    for a, b in zip(clipped.coefs_ + clipped.intercepts_, exact.coefs_ + exact.intercepts_,
                    strict=True):
        np.testing.assert_array_equal(a, b)
    if saturated:  # exact losses of 1e7 per sample against scikit-learn's -log(eps) = 36
        assert clipped.loss_curve_[0] < 0.01 * exact.loss_curve_[0]
    else:
        np.testing.assert_allclose(clipped.loss_curve_, exact.loss_curve_, rtol=1e-13)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("link", ["logistic", "softmax"])
def test_sample_losses_are_scikit_learns_clipped_log_loss(link, dtype, rng, backend):
    n, k = 64, 1 if link == "logistic" else 5
    # moderate logits and saturated ones (far past -log(eps) = 36 / 16), either side, in one
    # batch; none in between, where p's last bit decides scikit-learn's log(1 - p) and NumPy's
    # exp and SciPy's expit may round it differently
    big = 60.0 if dtype == "float64" else 30.0
    z = rng.uniform(-5, 5, (n, k)) + rng.choice([0.0, big, -big, 1e6], (n, k), p=[.4, .2, .2, .2])
    z = z.astype(dtype)
    if link == "softmax":
        t = np.eye(k, dtype=dtype)[rng.integers(0, k, n)]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        expected = [log_loss(t[i:i + 1], p[i:i + 1]) for i in range(n)]
    else:
        t = rng.integers(0, 2, (n, k)).astype(dtype)
        p = expit(z)  # scikit-learn's logistic output, in z's dtype
        expected = [binary_log_loss(t[i:i + 1], p[i:i + 1]) for i in range(n)]
    got = backend.to_numpy(_logloss.sample_losses(
        backend.xp, link, backend.asarray(np.ascontiguousarray(z.T)),
        backend.asarray(np.ascontiguousarray(t.T))))
    assert got.dtype == np.dtype(dtype)
    eps = np.finfo(dtype).eps
    assert got.max() == pytest.approx(-np.log(eps), rel=1e-6)  # some clipped at -log(eps)
    np.testing.assert_allclose(got, expected, rtol=1e-12 if dtype == "float64" else 1e-5,
                               atol=4 * eps)


def test_batch_factors_weigh_as_np_average_and_skip_empty_batches():
    w = np.array([1.0, 3.0, 0.0, 0.0, 2.0])
    order = np.array([4, 0, 2, 3, 1])  # batches of 2: (2, 1), (0, 0) skipped, (3)
    weighs = np.array([True, False, True])
    f = _logloss.batch_factors(w, order, 2, weighs)
    np.testing.assert_allclose(f, [2 * 2 / 3, 2 * 1 / 3, 1 * 3 / 3])


# --- messages and private state ------------------------------------------------------------------

def test_stratified_early_stopping_error_names_labels_as_scikit_learn():
    X = [[1, 2], [2, 3], [3, 4], [4, 5]]
    y = [0, 0, 0, 1]
    messages = []
    for cls in (sk_nn.MLPClassifier, MLPClassifier):
        with pytest.raises(ValueError) as info:
            cls(early_stopping=True).fit(X, y)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "Classes with too few members are: ['True']" in messages[1]


def test_partial_fit_continues_from_hand_set_coefs(rng):
    X = rng.standard_normal((6, 3))
    y = np.array([0, 1, 0, 1, 1, 0])
    coefs = [rng.standard_normal((3, 2)), rng.standard_normal((2, 1))]
    intercepts = [rng.standard_normal(2), rng.standard_normal(1)]
    runs = []
    for cls in (sk_nn.MLPClassifier, MLPClassifier):
        est = cls(solver="sgd", hidden_layer_sizes=2, momentum=0, learning_rate_init=0.1,
                  alpha=0.1, activation="logistic")
        est.coefs_ = [c.copy() for c in coefs]
        est.intercepts_ = [b.copy() for b in intercepts]
        est.n_outputs_, est.n_features_in_, est.n_layers_ = 1, 3, 3
        est.n_iter_, est.t_, est.out_activation_ = 0, 0, "logistic"
        est.best_loss_, est.loss_curve_, est._no_improvement_count = np.inf, [], 0
        est.partial_fit(X, y, classes=[0, 1])
        runs.append(est)
    _close_params(runs[1], runs[0])


def test_import_without_scikit_learn_says_how_to_install():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "try:\n    import devnet.sklearn\n"
            "except ImportError as exc:\n"
            "    from devnet.errors import MissingDependencyError\n"
            "    assert isinstance(exc, MissingDependencyError), type(exc)\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'devnet-mlp[sklearn]'" in out.stdout


def test_bench_lbfgs_runs_on_tiny_sizes():
    from benchmarks import bench_lbfgs

    rows = bench_lbfgs.run("cpu", {"synthetic": (80, 12)}, max_iter=2, log=lambda *a: None)
    assert rows[0]["devnet_iters"] == rows[0]["sklearn_iters"] <= 2
    assert rows[0]["devnet_over_sklearn"] > 0
