"""``MLPClassifier`` and ``MLPRegressor``: scikit-learn's MLP estimators trained by devnet."""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted

from devnet.errors import DataError
from devnet.sklearn._base import BaseMLP, as_host, store_params

#: scikit-learn estimator checks these estimators are known not to pass, with the reason
#: (used as ``expected_failed_checks`` in the tests; also listed in each class docstring).
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


class MLPClassifier(ClassifierMixin, BaseMLP):
    """Multi-layer perceptron classifier (scikit-learn's API) trained by devnet on any device.

    Parameters are scikit-learn's ``MLPClassifier`` ones (``solver="lbfgs" | "sgd" | "adam"``,
    ``max_fun`` for lbfgs; ``partial_fit`` only for the stochastic solvers), plus:

    device : str, default="auto"
        ``"auto" | "cpu" | "cuda" | "cuda:N"`` (see ``devnet.get_backend``).
    dtype : {None, "float32", "float64"}, default=None
        Compute dtype; None follows X (float64 or float32) as scikit-learn does. On a GPU
        ``"float32"`` is much faster.

    Binary and multi-label targets train logistic outputs with ``binary_cross_entropy``,
    multi-class ones a softmax with ``cross_entropy``. ``loss_curve_`` (``loss_``,
    ``best_loss_``, the ``tol`` rule) is scikit-learn's: per batch, the mean log-loss of the
    probabilities clipped to ``[eps, 1 - eps]`` (a saturated output counts ``-log(eps)``) plus
    ``0.5 * alpha * ||W||^2 / batch_size``; the gradient is the unclipped one, as theirs.

    Fitted attributes (NumPy): ``classes_``, ``coefs_``, ``intercepts_``, ``loss_``,
    ``loss_curve_``, ``best_loss_``, ``validation_scores_``, ``best_validation_score_``,
    ``n_iter_``, ``t_``, ``n_features_in_``, ``feature_names_in_``, ``n_layers_``,
    ``n_outputs_``, ``out_activation_``; and ``engine_``, (name, reason): what ran the last
    fit's steps, ``"compiled"`` (sgd / adam on the CPU: one Numba call per run of batches, the
    Python step's results bit for bit; compiled once per network structure, cached on disk)
    or ``"python"`` (one Step call per batch or L-BFGS evaluation; the reason says why).

    Stricter than scikit-learn (each a ValueError, never a quiet difference): ``momentum``
    < 1; ``sample_weight`` >= 0; ``warm_start`` / ``partial_fit`` refuse a changed
    ``hidden_layer_sizes``. A batch whose samples all weigh 0 is skipped (scikit-learn raises
    ZeroDivisionError). The device network follows the fitted attributes and ``activation`` /
    ``device`` as they are at each call. All scikit-learn estimator checks pass
    (``EXPECTED_FAILED_CHECKS`` is empty).
    """

    _metric = staticmethod(accuracy_score)

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 device="auto", dtype=None):
        store_params(self, locals())

    def _task(self):
        if self._label_binarizer.y_type_ == "multiclass":
            return "cross_entropy", 1.0, 1.0, "softmax"
        # scikit-learn's binary log-loss sums over the outputs: devnet's BCE averages them
        k = float(self.n_outputs_)
        return "binary_cross_entropy", k, k, "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = self._check_data(X, y, reset)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same "
                                     "classes as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` "
                                 f"has {self.classes_}. 'y' has {classes}.")
        # one-hot rows (multi-class), one column (binary) or an indicator matrix (multi-label)
        return X, self._label_binarizer.transform(y).astype(bool)

    def _decode(self, y):
        return self._label_binarizer.inverse_transform(y)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns ordered as ``classes_``."""
        check_is_fitted(self)
        y_pred = self._outputs(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y); ``classes`` (every label) is required on the first call."""
        self._validate_params()
        y = as_host(y, "y")
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, BaseMLP):
    """Multi-layer perceptron regressor (scikit-learn's API) trained by devnet on any device.

    Parameters are scikit-learn's ``MLPRegressor`` ones (``solver="lbfgs" | "sgd" | "adam"``,
    ``loss="squared_error" | "poisson"``, ``max_fun``), plus ``device`` and ``dtype`` as in
    :class:`MLPClassifier`. Multi-output targets (n, k) train k outputs. ``loss_curve_`` is
    scikit-learn's half squared error (``mean((y - p)**2) / 2``), or for ``"poisson"`` its half
    Poisson deviance summed over the outputs (an exp output, targets >= 0), plus
    ``0.5 * alpha * ||W||^2 / batch_size`` per batch. ``loss="poisson"`` refuses negative
    targets; ``engine_``, the estimator checks and the other differences from scikit-learn are
    :class:`MLPClassifier`'s.

    Fitted attributes (NumPy): ``coefs_``, ``intercepts_``, ``loss_``, ``loss_curve_``,
    ``best_loss_``, ``validation_scores_``, ``best_validation_score_``, ``n_iter_``, ``t_``,
    ``n_features_in_``, ``feature_names_in_``, ``n_layers_``, ``n_outputs_``,
    ``out_activation_``.
    """

    _parameter_constraints: dict = {
        **BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }
    _metric = staticmethod(r2_score)

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 device="auto", dtype=None):
        store_params(self, locals())

    def _task(self):
        k = float(self.n_outputs_)
        if self.loss == "poisson":
            # scikit-learn: half deviance averaged over samples, summed over outputs, through
            # an exp output; devnet's poisson averages over both, on the log-mean
            return "poisson", k, k, "exp"
        # scikit-learn: loss mean((p - y)**2) / 2 but gradient (p - y) / n_samples (not / k);
        # devnet's mse: mean((p - y)**2) with gradient 2 (p - y) / (n k)
        return "mse", 0.5, k / 2.0, "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = self._check_data(X, y, reset, y_numeric=True)
        if y.dtype.kind not in "biuf":
            # validate_data converts object arrays only: text (numbers or not) would fail
            # later, in a cast deep in the fit loop or in the Poisson check
            try:
                y = y.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{type(self).__name__} needs numeric targets y; got dtype "
                                f"{y.dtype} that does not convert to float ({exc})") from None
        if self.loss == "poisson" and y.size and y.min() < 0:
            # scikit-learn's own MLP would return NaN losses here; its GLMs refuse, so do we
            raise ValueError(f"Some value(s) of y are negative, which is not allowed for "
                             f"loss='poisson' (a Poisson mean is >= 0); got a minimum of "
                             f"{y.min():g}")
        return X, y

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights and optimizer state."""
        self._validate_params()
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)
