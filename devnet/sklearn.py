"""scikit-learn estimators backed by devnet: ``MLPClassifier`` and ``MLPRegressor``.

They take scikit-learn's MLP parameters (stochastic solvers ``"sgd"`` and ``"adam"``) plus
``device=`` and ``dtype=``, and train devnet's fused MLP, losses and optimizers on that device::

    from devnet.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(256,), device="cuda", dtype="float32").fit(X, y)

The epoch loop mirrors scikit-learn's (same initialisation, shuffling, early-stopping split and
random-state use, same loss convention for ``loss_curve_``), so with the same data and seed the
two agree within floating-point noise. Fitted attributes are NumPy arrays whatever the device;
the device copy of the network is a cache, dropped when the estimator is pickled and rebuilt
from ``coefs_`` / ``intercepts_`` on the next call.

Needs scikit-learn (``pip install 'devnet[sklearn]'``).
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from scipy import sparse as _sparse
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d, gen_batches, shuffle
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from devnet import losses as losses_mod
from devnet import optim as optim_mod
from devnet.backend import get_backend
from devnet.kernels import reference
from devnet.nn import MLP

__all__ = ["MLPClassifier", "MLPRegressor", "EXPECTED_FAILED_CHECKS"]

# scikit-learn's activation names -> devnet's
_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}

#: scikit-learn estimator checks these estimators are known not to pass, with the reason
#: (used as ``expected_failed_checks`` in the tests; also listed in each class docstring).
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


def _as_host(a):
    """``a`` as something ``validate_data`` accepts: torch/JAX/CuPy tensors go to NumPy."""
    if a is None or isinstance(a, (np.ndarray, list, tuple)) or _sparse.issparse(a):
        return a
    if hasattr(a, "__dlpack__") or hasattr(a, "__cuda_array_interface__"):
        from devnet.interop import to_numpy

        return to_numpy(a)
    return a


def _set_lr(opt, lr: float) -> None:
    """Change an SGD optimizer's rate the way scikit-learn does.

    scikit-learn's velocity holds ``lr * gradient`` sums while devnet's momentum buffer holds
    plain gradient sums, scaled by the current rate at each step: rescaling the buffer by
    ``old / new`` keeps the velocity already built up, as scikit-learn's does.
    """
    buf = opt.state.get("momentum_buffer")
    if buf is not None and lr != opt.base_lr:
        buf *= opt.base_lr / lr
    opt.base_lr = lr


class _BaseMLP(BaseEstimator):
    """Shared fit loop; see MLPClassifier / MLPRegressor for the parameters."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(_ACTIVATIONS))],
        "solver": [StrOptions({"sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        # devnet's momentum buffer needs momentum < 1 (momentum = 1 never converges anyway)
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "device": [str],
        "dtype": [None, StrOptions({"float32", "float64"})],
    }

    # --- the task: overridden by the two estimators -----------------------------------------

    def _task(self):
        """(devnet loss name, loss-value scale, gradient scale, out_activation_)."""
        raise NotImplementedError

    # --- fitting ----------------------------------------------------------------------------

    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(int(s) != s or s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {sizes}")
        return [int(s) for s in sizes]

    def _fit(self, X, y, sample_weight=None, incremental=False):
        X, y, sample_weight = _as_host(X), _as_host(y), _as_host(sample_weight)
        hidden = self._hidden_sizes()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if _sparse.issparse(X):
            X = X.toarray()
        if first_pass:
            self._dtype = np.dtype(self.dtype) if self.dtype is not None else X.dtype
        X = np.ascontiguousarray(X, dtype=self._dtype)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=self._dtype)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if not first_pass and y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} outputs but the fitted network has "
                             f"{self.n_outputs_}; refit without warm_start to change it")
        layer_units = [X.shape[1], *hidden, y.shape[1]]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units)
        elif [c.shape[0] for c in self.coefs_] + [self.n_outputs_] != layer_units:
            raise ValueError(f"warm_start/partial_fit needs the fitted layer sizes "
                             f"{[c.shape[0] for c in self.coefs_] + [self.n_outputs_]}, "
                             f"got {layer_units}")
        self._fit_stochastic(X, y, sample_weight, incremental)
        if not all(np.isfinite(w).all() for w in (*self.coefs_, *self.intercepts_)):
            raise ValueError("Solver produced non-finite parameter weights. The input data may "
                             "contain large values and need to be preprocessed.")
        return self

    def _initialize(self, y, layer_units):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._task()[3]
        # Glorot-uniform weights and biases, drawn exactly as scikit-learn does
        factor = 2.0 if self.activation == "logistic" else 6.0
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:], strict=True):
            bound = np.sqrt(factor / (fan_in + fan_out))
            coef = self._random_state.uniform(-bound, bound, (fan_in, fan_out))
            intercept = self._random_state.uniform(-bound, bound, fan_out)
            self.coefs_.append(coef.astype(self._dtype))
            self.intercepts_.append(intercept.astype(self._dtype))
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [b.copy() for b in self.intercepts_]
        for name in ("_model", "_optimizer", "_optimizer_state"):
            self.__dict__.pop(name, None)

    def _network(self) -> MLP:
        """The device network holding ``coefs_`` / ``intercepts_`` (built or refreshed)."""
        model = self.__dict__.get("_model")
        sizes = [c.shape[0] for c in self.coefs_] + [self.coefs_[-1].shape[1]]
        if model is None or model.layer_sizes != sizes or model.dtype != self.coefs_[0].dtype:
            model = MLP(sizes, activation=_ACTIVATIONS[self.activation],
                        output_activation="identity", dtype=self.coefs_[0].dtype.name,
                        backend=get_backend(self.device), seed=None)
            self._model = model
            self._synced = None
        if self.__dict__.get("_synced") is not self.coefs_:
            # fitted attributes are the truth: upload them (they may have been set by hand)
            be = model.backend
            for layer, W, b in zip(model.layers, self.coefs_, self.intercepts_,
                                   strict=True):
                layer.W[...] = be.asarray(W, dtype=model.dtype)
                layer.b[...] = be.asarray(b, dtype=model.dtype)
            self._synced = self.coefs_
        return model

    def _download(self, model) -> None:
        """Copy the device parameters back into ``coefs_`` / ``intercepts_`` (NumPy)."""
        flat = model.backend.to_numpy(model.params)
        self._set_flat(model, flat)

    def _set_flat(self, model, flat) -> None:
        coefs, intercepts, offset = [], [], 0
        for layer in model.layers:
            end = offset + layer.n_in * layer.n_out
            coefs.append(flat[offset:end].reshape(layer.n_in, layer.n_out).copy())
            intercepts.append(flat[end:end + layer.n_out].copy())
            offset = end + layer.n_out
        self.coefs_, self.intercepts_ = coefs, intercepts
        self._synced = coefs

    def _make_optimizer(self, model):
        if self.solver == "sgd":
            nesterov = bool(self.nesterovs_momentum and self.momentum > 0)
            return optim_mod.SGD(model, lr=self.learning_rate_init, momentum=self.momentum,
                                 nesterov=nesterov)
        return optim_mod.Adam(model, lr=self.learning_rate_init,
                              betas=(self.beta_1, self.beta_2), eps=self.epsilon)

    def _get_optimizer(self, model, incremental):
        opt = self.__dict__.get("_optimizer")
        if incremental and opt is not None and opt.params.data is model.params:
            return opt
        state = self.__dict__.pop("_optimizer_state", None)
        if incremental and state is not None:  # after unpickling: resume the moments
            opt = optim_mod.from_state_dict(model.parameters(), state)
        elif incremental and opt is not None:  # same optimizer, moved to a new network
            state = opt.state_dict()
            opt = optim_mod.from_state_dict(model.parameters(), state)
        else:
            opt = self._make_optimizer(model)
        self._optimizer = opt
        return opt

    def _fit_stochastic(self, X, y, sample_weight, incremental):
        model = self._network()
        be, xp = model.backend, model.backend.xp
        opt = self._get_optimizer(model, incremental)
        loss_name, value_scale, grad_scale, _ = self._task()
        loss = losses_mod.get(loss_name)
        y = y.astype(self._dtype)

        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        if early_stopping:
            stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
            parts = (X, y) if sample_weight is None else (X, y, sample_weight)
            split = train_test_split(*parts, random_state=self._random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
            X, X_val, y, y_val = split[:4]
            sample_weight, sw_val = (split[4], split[5]) if sample_weight is not None \
                else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            y_val = self._val_targets(y_val)
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped", stacklevel=3)
            batch_size = int(np.clip(self.batch_size, 1, n))

        # the whole training set goes to the device once; batches are gathered there
        Xd, yd = be.asarray(X), be.asarray(y)
        swd = None if sample_weight is None else be.asarray(sample_weight)
        grads: dict[int, object] = {}
        sample_idx = np.arange(n)
        weights = [layer.W for layer in model.layers]
        dweights = [layer.dW for layer in model.layers]
        alpha = float(self.alpha)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    sample_idx = shuffle(sample_idx, random_state=self._random_state)
                    idx_d = be.asarray(sample_idx)
                total = 0.0
                for sl in gen_batches(n, batch_size):
                    if self.shuffle:
                        bi = idx_d[sl]
                        xb, yb = Xd[bi], yd[bi]
                        wb = None if swd is None else swd[bi]
                    else:
                        xb, yb = Xd[sl], yd[sl]
                        wb = None if swd is None else swd[sl]
                    nb = xb.shape[0]
                    grad = grads.get(nb)
                    if grad is None:
                        grad = grads[nb] = be.empty((nb, model.n_out), model.dtype)
                    pred = model.forward(xb)
                    value = loss.forward_backward_(pred, yb, grad, wb, backend=be)
                    if grad_scale != 1.0:
                        grad *= grad_scale
                    model.backward(grad, input_grad=False)
                    batch_loss = value * value_scale
                    if alpha > 0:
                        # L2 on the weights only, over the batch's total sample weight
                        sw_sum = nb if wb is None else wb.sum()
                        sq = sum(xp.dot(W.ravel(), W.ravel()) for W in weights)
                        batch_loss = batch_loss + 0.5 * alpha * sq / sw_sum
                        for W, dW in zip(weights, dweights, strict=True):
                            dW += (alpha / sw_sum) * W
                    opt.step()
                    total = total + batch_loss * (sl.stop - sl.start)
                self.n_iter_ += 1
                self.loss_ = float(total) / n
                self.t_ += n
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._download(model)
                self._update_no_improvement_count(early_stopping, X_val if early_stopping
                                                  else None, y_val if early_stopping else None,
                                                  sw_val if early_stopping else None)
                if self.solver == "sgd" and self.learning_rate == "invscaling":
                    _set_lr(opt, float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t)
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if early_stopping else "Training loss"
                    msg = (f"{what} did not improve more than tol={self.tol:f} for "
                           f"{self.n_iter_no_change} consecutive epochs.")
                    if self._trigger_stopping(opt, msg):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                                  "reached and the optimization hasn't converged yet.",
                                  ConvergenceWarning, stacklevel=3)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        if early_stopping:  # restore the best weights
            self.coefs_, self.intercepts_ = self._best_coefs, self._best_intercepts
            self._synced = None

    def _trigger_stopping(self, opt, msg) -> bool:
        """scikit-learn's rule: adaptive SGD divides the rate by 5 until it is <= 1e-6."""
        if self.solver == "sgd" and self.learning_rate == "adaptive":
            if opt.base_lr > 1e-6:
                _set_lr(opt, opt.base_lr / 5.0)
                if self.verbose:
                    print(msg + f" Setting learning rate to {opt.base_lr:f}")
                return False
            if self.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        if self.verbose:
            print(msg + " Stopping.")
        return True

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, sw_val):
        if early_stopping:
            score = self._score(X_val, y_val, sample_weight=sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_coefs = [c.copy() for c in self.coefs_]
                self._best_intercepts = [b.copy() for b in self.intercepts_]
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _val_targets(self, y_val):
        return y_val

    # --- inference --------------------------------------------------------------------------

    def _outputs(self, X, check_input=True):
        """Raw network outputs (n, n_outputs_) as NumPy, after the output activation."""
        X = _as_host(X)
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"],
                              dtype=(np.float64, np.float32), reset=False)
        if _sparse.issparse(X):
            X = X.toarray()
        X = np.ascontiguousarray(X, dtype=self.coefs_[0].dtype)
        out = self._network().predict(X)
        if self.out_activation_ == "identity":
            return out
        link = "sigmoid" if self.out_activation_ == "logistic" else "softmax"
        return reference.act_fwd(link, out)

    def _score_with_function(self, X, y, sample_weight, score_function):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return score_function(y, y_pred, sample_weight=sample_weight)

    # --- pickling: the device network and optimizer are caches ------------------------------

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else dict(
            self.__dict__)
        state = dict(state)
        opt = state.pop("_optimizer", None)
        if opt is not None:
            state["_optimizer_state"] = opt.state_dict()
        state.pop("_model", None)
        state.pop("_synced", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # densified at the edge
        return tags

    def fit(self, X, y, sample_weight=None):
        """Fit the network to X (n_samples, n_features) and y; returns self.

        X may be a NumPy array, a SciPy sparse matrix (densified) or a torch/JAX/CuPy tensor.
        sample_weight: (n_samples,) or None.
        """
        self._validate_params()
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier (scikit-learn's API) trained by devnet on any device.

    Parameters are scikit-learn's ``MLPClassifier`` ones for the stochastic solvers
    (``solver="sgd" | "adam"``; L-BFGS is not offered, nor ``max_fun``), plus:

    device : str, default="auto"
        ``"auto" | "cpu" | "cuda" | "cuda:N"`` (see ``devnet.get_backend``).
    dtype : {None, "float32", "float64"}, default=None
        Compute dtype; None follows X (float64 or float32) as scikit-learn does. On a GPU
        ``"float32"`` is much faster.

    Binary and multi-label targets train logistic outputs with ``binary_cross_entropy``,
    multi-class ones a softmax with ``cross_entropy``. ``loss_curve_`` follows scikit-learn's
    convention (mean log-loss plus ``0.5 * alpha * ||W||^2 / batch_size`` per batch).

    Fitted attributes (NumPy): ``classes_``, ``coefs_``, ``intercepts_``, ``loss_``,
    ``loss_curve_``, ``best_loss_``, ``validation_scores_``, ``best_validation_score_``,
    ``n_iter_``, ``t_``, ``n_features_in_``, ``feature_names_in_``, ``n_layers_``,
    ``n_outputs_``, ``out_activation_``.

    scikit-learn estimator checks: all pass (``parametrize_with_checks``); none is marked as
    expected to fail (see ``EXPECTED_FAILED_CHECKS``).
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, device="auto",
                 dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.dtype = dtype

    def _task(self):
        if self._label_binarizer.y_type_ == "multiclass":
            return "cross_entropy", 1.0, 1.0, "softmax"
        # scikit-learn's binary log-loss sums over the outputs: devnet's BCE averages them
        k = float(self.n_outputs_)
        return "binary_cross_entropy", k, k, "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
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
        y = self._label_binarizer.transform(y).astype(bool)
        return X, y

    def _val_targets(self, y_val):
        return self._label_binarizer.inverse_transform(y_val)

    def _predict(self, X, check_input=True):
        y_pred = self._outputs(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    def predict(self, X):
        """Predicted classes (n_samples,) or, multi-label, (n_samples, n_classes)."""
        check_is_fitted(self)
        return self._predict(X)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns ordered as ``classes_``."""
        check_is_fitted(self)
        y_pred = self._outputs(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y); ``classes`` (every label) is required on the first call."""
        self._validate_params()
        y = _as_host(y)
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


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor (scikit-learn's API) trained by devnet on any device.

    Parameters are scikit-learn's ``MLPRegressor`` ones for the stochastic solvers
    (``solver="sgd" | "adam"``, ``loss="squared_error"``; no L-BFGS, no Poisson loss), plus
    ``device`` and ``dtype`` as in :class:`MLPClassifier`. Multi-output targets (n, k) train k
    identity outputs. ``loss_curve_`` is scikit-learn's half squared error
    (``mean((y - p)**2) / 2``) plus ``0.5 * alpha * ||W||^2 / batch_size`` per batch.

    Fitted attributes (NumPy): ``coefs_``, ``intercepts_``, ``loss_``, ``loss_curve_``,
    ``best_loss_``, ``validation_scores_``, ``best_validation_score_``, ``n_iter_``, ``t_``,
    ``n_features_in_``, ``feature_names_in_``, ``n_layers_``, ``n_outputs_``,
    ``out_activation_``.

    scikit-learn estimator checks: all pass (``parametrize_with_checks``); none is marked as
    expected to fail (see ``EXPECTED_FAILED_CHECKS``).
    """

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error"})],
    }

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, device="auto",
                 dtype=None):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.dtype = dtype

    def _task(self):
        # scikit-learn: loss mean((p - y)**2) / 2 but gradient (p - y) / n_samples (not / k);
        # devnet's mse: mean((p - y)**2) with gradient 2 (p - y) / (n k)
        k = float(self.n_outputs_)
        return "mse", 0.5, k / 2.0, "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             y_numeric=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _predict(self, X, check_input=True):
        y_pred = self._outputs(X, check_input=check_input)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)

    def predict(self, X):
        """Predicted values (n_samples,) or, multi-output, (n_samples, n_outputs)."""
        check_is_fitted(self)
        return self._predict(X)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights and optimizer state."""
        self._validate_params()
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)
