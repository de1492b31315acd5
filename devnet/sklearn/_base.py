"""The estimators' shared machinery: parameters, initialisation, the solvers' loops, inference
and pickling. ``MLPClassifier`` / ``MLPRegressor`` (``_estimators.py``) add the task.
"""

from __future__ import annotations

import functools
from numbers import Integral, Real

import numpy as np
from scipy import sparse as _sparse
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state, column_or_1d, gen_batches
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from devnet import losses as losses_mod
from devnet.backend import get_backend
from devnet.errors import ConfigError, DataError, lookup, warn
from devnet.kernels import reference
from devnet.nn import MLP
from devnet.nn.usage import Usage
from devnet.sklearn import _lbfgs, _logloss, _optim
from devnet.train import engine as engine_mod
from devnet.train.feed import make_feed

# scikit-learn's activation names -> devnet's
ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_STOCHASTIC_SOLVERS = ("sgd", "adam")
# Which engine runs the stochastic solvers' epochs (``devnet.train.engine.choose``): "auto"
# (the compiled CPU epoch where eligible, else the Python step) or "python". Private, not a
# scikit-learn parameter: tests set it to compare the two engines bit for bit.
_ENGINE = "auto"


def as_host(a, name: str = "X"):
    """``a`` as something ``validate_data`` accepts: torch/JAX/CuPy tensors go to NumPy.

    name: the argument, for the error when a tensor has no NumPy form (bfloat16, sparse).
    """
    if a is None or isinstance(a, (np.ndarray, list, tuple)) or _sparse.issparse(a):
        return a
    if hasattr(a, "__dlpack__") or hasattr(a, "__cuda_array_interface__"):
        from devnet.interop import to_numpy

        try:
            return to_numpy(a)
        except (TypeError, RuntimeError, ValueError, BufferError) as exc:
            raise DataError(f"{name} ({type(a).__module__}.{type(a).__name__}, dtype "
                            f"{getattr(a, 'dtype', '?')}) has no NumPy form: {exc}. Convert "
                            f"it to a dense float32/float64 array first") from exc
    return a


def shuffled(index: np.ndarray, random_state: np.random.RandomState) -> np.ndarray:
    """``sklearn.utils.shuffle(index, random_state=random_state)``: the same draws, the same
    order, without its per-call parameter validation (a tenth of a compiled digits fit)."""
    order = np.arange(index.shape[0])
    random_state.shuffle(order)
    return index[order]


def _batch_has_weight(sample_weight, order, n: int, batch_size: int) -> np.ndarray:
    """For each batch of an epoch taken in ``order``: does it weigh more than 0 in total?

    scikit-learn divides a batch's L2 term by its total weight (and crashes with a
    ZeroDivisionError when that is 0); such a batch carries no data, so it is skipped.
    """
    n_batches = -(-n // batch_size)
    if sample_weight is None or sample_weight.min() > 0:
        return np.ones(n_batches, dtype=bool)
    return np.add.reduceat(sample_weight[order], np.arange(0, n, batch_size)) > 0


def _weighted_runs(weighs: np.ndarray) -> list[tuple[int, int]]:
    """(first batch, count) of each run of consecutive batches that weigh (``weighs``)."""
    edges = np.diff(np.concatenate(([0], weighs.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(a), int(b - a)) for a, b in zip(starts, stops, strict=True)]


def _usage(estimator) -> Usage:
    """The estimator's Usage (``devnet.nn.usage``), made on first use; ``setdefault`` is
    atomic, so two threads starting at once get the same one."""
    usage = estimator.__dict__.get("_usage")
    return usage if usage is not None else estimator.__dict__.setdefault("_usage", Usage())


def _holding(mode: str, what: str):
    """Run the method holding the estimator's Usage in ``mode``: "exclusive" for a fit (it
    replaces ``coefs_`` and the network, so another thread's fit or predict of the same
    estimator meanwhile is a ModelBusyError, and the claim waits for the predictions already
    running), "shared" for one inference."""
    def wrap(method):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            with getattr(_usage(self), mode)(f"{type(self).__name__}.{what}"):
                return method(self, *args, **kwargs)
        return run
    return wrap


def store_params(estimator, params: dict) -> None:
    """Set ``__init__``'s arguments (its ``locals()``) as attributes, unchanged, as
    scikit-learn's estimator contract asks."""
    for name, value in params.items():
        if name != "self":
            setattr(estimator, name, value)


class BaseMLP(BaseEstimator):
    """Shared fit loops; see MLPClassifier / MLPRegressor for the parameters."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
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
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "device": [str],
        "dtype": [None, StrOptions({"float32", "float64"})],
    }

    # --- the task: overridden by the two estimators -----------------------------------------

    def _task(self):
        """(devnet loss name, loss-value scale, gradient scale, out_activation_)."""
        raise NotImplementedError

    # --- fitting ----------------------------------------------------------------------------

    def _hidden_sizes(self) -> list[int]:
        """``hidden_layer_sizes`` as a list of positive ints (integral floats allowed)."""
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        for size in sizes:
            # bool is an int to Python but never a layer width; NaN, inf, text, nested
            # sequences and 2-D arrays would otherwise reach int() and fail there
            if isinstance(size, (bool, np.bool_)) or not isinstance(size, Real) \
                    or not np.isfinite(size):
                raise ConfigError(f"hidden_layer_sizes must be a positive int or a sequence "
                                  f"of positive ints (one width per hidden layer), got "
                                  f"{self.hidden_layer_sizes!r}")
        if any(int(s) != s or s <= 0 for s in sizes):
            raise ConfigError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _check_data(self, X, y, reset: bool, **kwargs):
        """``validate_data`` of (X, y) as both estimators take them; a (n, 1) y as (n,)."""
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset, **kwargs)
        return X, column_or_1d(y, warn=True) if y.ndim == 2 and y.shape[1] == 1 else y

    def _check_solver(self) -> bool:
        """scikit-learn's rule: ``partial_fit`` exists only for the stochastic solvers."""
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError("partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    @_holding("exclusive", "fit")
    def _fit(self, X, y, sample_weight=None, incremental=False):
        X, y = as_host(X), as_host(y, "y")
        sample_weight = as_host(sample_weight, "sample_weight")
        hidden = self._hidden_sizes()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if _sparse.issparse(X):
            X = X.toarray()
        if first_pass:
            self._dtype = np.dtype(self.dtype) if self.dtype is not None else X.dtype
        elif self.__dict__.get("_dtype") is None:  # coefs_ set by hand: follow them
            self._dtype = np.asarray(self.coefs_[0]).dtype
        X = np.ascontiguousarray(X, dtype=self._dtype)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=self._dtype)
            if sample_weight.min() < 0:
                # devnet's losses divide each batch by its mean weight only when it is > 0:
                # negative weights would train by gradient ascent, not scikit-learn's objective
                raise DataError(f"sample_weight must be >= 0 (devnet's losses weigh samples, "
                                f"they do not subtract them); got a minimum of "
                                f"{sample_weight.min():g}")
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if not first_pass and y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} outputs but the fitted network has "
                             f"{self.n_outputs_}; refit without warm_start to change it")
        layer_units = [X.shape[1], *hidden, y.shape[1]]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units)
        elif (fitted := [c.shape[0] for c in self.coefs_] + [self.n_outputs_]) != layer_units:
            raise ValueError(f"warm_start/partial_fit needs the fitted layer sizes {fitted}, "
                             f"got {layer_units}")
        # the network is this thread's until the fit returns: another thread's fit or predict
        # of this estimator meanwhile is a ModelBusyError, not a write into its parameters
        with self._network()._usage.exclusive(f"{type(self).__name__}.fit"):
            if self.solver in _STOCHASTIC_SOLVERS:
                self._fit_stochastic(X, y, sample_weight, incremental)
            else:
                self._fit_lbfgs(X, y, sample_weight)
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
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [b.copy() for b in self.intercepts_]
        if self.solver in _STOCHASTIC_SOLVERS:  # as scikit-learn: no loss_curve_ for lbfgs
            self.loss_curve_ = []
            self._no_improvement_count = 0
            early = self.early_stopping
            self.validation_scores_ = [] if early else None
            self.best_validation_score_ = -np.inf if early else None
            self.best_loss_ = None if early else np.inf
        for name in ("_model", "_optimizer", "_optimizer_state"):
            self.__dict__.pop(name, None)

    def _network(self, refresh: bool = True) -> MLP:
        """The device network holding ``coefs_`` / ``intercepts_`` (built or refreshed).

        The fitted attributes are the truth (a user may edit them or set ``activation`` /
        ``device``): the network is rebuilt when its shape, activation, dtype or device no
        longer match, and the parameters are uploaded unless ``refresh`` is False (the fit
        loop, between its own downloads) and ``coefs_`` is the list the last download made.
        """
        coefs, intercepts = self._checked_parameters()
        sizes = [c.shape[0] for c in coefs] + [coefs[-1].shape[1]]
        dtype = np.dtype(self.__dict__.get("_dtype") or coefs[0].dtype)
        activation = lookup(ACTIVATIONS, self.activation, "activation")
        backend = get_backend(self.device)
        model = self.__dict__.get("_model")
        if model is None or model.layer_sizes != sizes or model.dtype != dtype \
                or model.activation != activation or model.backend is not backend:
            model = MLP(sizes, activation=activation, output_activation="identity",
                        dtype=dtype.name, backend=backend, seed=None)
            self._model = model
            self._synced = None
        if refresh or self.__dict__.get("_synced") is not self.coefs_:
            be = model.backend
            # an upload is refused while another thread's fit trains this network
            with model._usage.shared(f"{type(self).__name__}.predict"):
                for layer, W, b in zip(model.layers, coefs, intercepts, strict=True):
                    be.assign(layer.W, W.reshape(layer.W.shape))
                    be.assign(layer.b, b.reshape(layer.b.shape))
            self._synced = self.coefs_
        return model

    def _checked_parameters(self):
        """``coefs_`` / ``intercepts_`` as arrays, checked to chain into one network."""
        coefs = [np.asarray(c) for c in self.coefs_]
        intercepts = [np.asarray(b) for b in self.intercepts_]
        shapes = [c.shape for c in coefs]
        problem = None
        if not coefs or len(coefs) != len(intercepts):
            problem = (f"{len(coefs)} coefs_ arrays but {len(intercepts)} intercepts_; one "
                       f"of each per layer")
        elif any(c.ndim != 2 for c in coefs) or any(
                a[1] != b[0] for a, b in zip(shapes[:-1], shapes[1:], strict=True)):
            problem = f"coefs_ shapes {shapes} do not chain (each (n_in, n_out))"
        elif [b.size for b in intercepts] != [s[1] for s in shapes]:
            problem = (f"intercepts_ sizes {[b.size for b in intercepts]} do not match the "
                       f"coefs_ shapes {shapes}")
        elif shapes[0][0] != getattr(self, "n_features_in_", shapes[0][0]):
            problem = (f"coefs_[0] has {shapes[0][0]} rows but the estimator was fitted on "
                       f"{self.n_features_in_} features")
        elif shapes[-1][1] != getattr(self, "n_outputs_", shapes[-1][1]):
            problem = (f"coefs_[-1] has {shapes[-1][1]} columns but the estimator has "
                       f"{self.n_outputs_} outputs")
        if problem is not None:
            raise ValueError(f"The fitted parameters are inconsistent: {problem}. Refit, or "
                             f"set coefs_ / intercepts_ of matching shapes.")
        return coefs, intercepts

    def _download(self, model) -> None:
        """Copy the device parameters back into ``coefs_`` / ``intercepts_`` (NumPy)."""
        flat = model.backend.to_numpy(model.params)
        coefs, intercepts, offset = [], [], 0
        for layer in model.layers:
            end = offset + layer.n_in * layer.n_out
            coefs.append(flat[offset:end].reshape(layer.n_in, layer.n_out).copy())
            intercepts.append(flat[end:end + layer.n_out].copy())
            offset = end + layer.n_out
        self.coefs_, self.intercepts_ = coefs, intercepts
        self._synced = coefs

    # --- L-BFGS -----------------------------------------------------------------------------

    def _fit_lbfgs(self, X, y, sample_weight):
        model = self._network()
        objective = _lbfgs.Objective(self, model, X, y, sample_weight)
        self.engine_ = ("python", "solver='lbfgs': SciPy's L-BFGS asks for the full-batch "
                        "loss and gradient, one Step.loss_and_grad per evaluation")
        result, self.n_iter_ = _lbfgs.minimize(self, objective)
        self.loss_ = result.fun
        self._download(model)

    def _loss_grad_lbfgs(self, packed_coef_inter, X, y, sample_weight=None, *buffers):
        """scikit-learn's private objective: (loss, packed gradient) at ``packed_coef_inter``.

        X (n, n_features); y the encoded targets (n, n_outputs); the trailing work buffers
        scikit-learn passes are accepted and ignored. Leaves the network at that point.
        """
        X = np.asarray(X.toarray() if _sparse.issparse(X) else X)
        y = np.asarray(y).reshape(X.shape[0], -1)
        model = self._network()
        objective = _lbfgs.Objective(self, model, X, y, sample_weight)
        loss, grad = objective(np.asarray(packed_coef_inter, dtype=np.float64))
        self._download(model)
        return loss, grad

    # --- the stochastic solvers -------------------------------------------------------------

    def _get_optimizer(self, model, incremental):
        opt = self.__dict__.get("_optimizer")
        if incremental and opt is not None and opt.params.data is model.params:
            return opt
        state = self.__dict__.pop("_optimizer_state", None)
        if incremental and opt is not None:  # same optimizer, moved to a new network
            state = opt.state_dict()
        # incremental: resume the moments (also after unpickling)
        self._optimizer = _optim.make(self.solver, model, self, state if incremental else None)
        return self._optimizer

    def _fit_stochastic(self, X, y, sample_weight, incremental):
        model = self._network()  # uploads coefs_: a warm start begins from them as they are
        opt = self._get_optimizer(model, incremental)
        loss_name, value_scale, grad_scale, link = self._task()
        loss = losses_mod.get(loss_name)

        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if self.early_stopping and not 0 < self.validation_fraction < 1:
            # train_test_split would reject test_size=0.0, a name the user never gave
            raise ConfigError(f"validation_fraction must be in (0, 1) with "
                              f"early_stopping=True (the share of X held out to score each "
                              f"epoch), got {self.validation_fraction!r}")
        early_stopping = self.early_stopping
        X_val = y_val = sw_val = None
        if early_stopping:
            # stratified on the encoded targets (before the cast), as scikit-learn does
            stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
            parts = (X, y) if sample_weight is None else (X, y, sample_weight)
            split = train_test_split(*parts, random_state=self._random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
            X, X_val, y, y_val = split[:4]
            sample_weight, sw_val = split[4:] or (None, None)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            y_val = self._decode(y_val)
        y = y.astype(self._dtype)
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warn("Got `batch_size` less than 1 or larger than sample size. It is "
                     "going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n))

        # one Step with scikit-learn's objective as its hook; the feed keeps the data on the
        # device when it fits (gathering batches there), else stages each batch from the host.
        # A classifier's Step records its logits: the reported loss clips as scikit-learn's
        clipped = _logloss.ClippedLoss.make(model, link, n)
        step = _logloss.RecordingStep(
            model, loss, opt, recorder=clipped,
            hooks=[_optim.SklearnObjective(model, value_scale, grad_scale, self.alpha)])
        feed = make_feed(model.backend, X, y, sample_weight, capacity=batch_size)
        # the compiled CPU epoch where the step's plan covers it (the hook and the recording
        # declare their ops); each batch's mean loss weighs its row count, as below
        choice = engine_mod.choose(_ENGINE, step, feed, batch_size,
                                   weighted=sample_weight is not None, batch_weight="rows")
        self.engine_ = (choice.name, choice.reason)
        runner = choice.runner
        sample_idx = np.arange(n)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    sample_idx = shuffled(sample_idx, self._random_state)
                feed.start_epoch(sample_idx if self.shuffle else None)
                step.reset()
                if clipped is not None:
                    clipped.start()
                weighs = _batch_has_weight(sample_weight, sample_idx, n, batch_size)
                if runner is not None:  # the runs of batches that weigh, a call each
                    for first, count in _weighted_runs(weighs):
                        runner.run(sample_idx, first, count)
                else:
                    for sl in gen_batches(n, batch_size):
                        if not weighs[sl.start // batch_size]:
                            continue  # no sample counts: no gradient, and the L2 term is / 0
                        batch = feed.batch(sl.start, sl.stop)
                        # the running sum weighs each batch's mean loss by its sample count
                        step(batch.x, batch.y, batch.w, weight=sl.stop - sl.start)
                # read on the model's device and stream (not ordered with another's)
                with step.scope():
                    running = step.running  # sum_b n_b loss_b (a classifier's: L2 terms)
                    if clipped is not None:  # scikit-learn's log-loss of clipped outputs
                        factors = None if sample_weight is None else _logloss.batch_factors(
                            sample_weight, sample_idx, batch_size, weighs)
                        running = clipped.total(factors, start=running)
                    self.loss_ = float(running) / n
                self.n_iter_ += 1
                self.t_ += n
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._download(model)
                self._update_no_improvement_count(early_stopping, X_val, y_val, sw_val)
                if self.solver == "sgd" and self.learning_rate == "invscaling":
                    opt.set_learning_rate(float(self.learning_rate_init)
                                          / (self.t_ + 1) ** self.power_t)
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
                    warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                         "reached and the optimization hasn't converged yet.",
                         ConvergenceWarning)
        except KeyboardInterrupt:
            warn("Training interrupted by user.")
        if early_stopping:  # restore the best weights
            self.coefs_, self.intercepts_ = self._best_coefs, self._best_intercepts
            self._synced = None

    def _trigger_stopping(self, opt, msg) -> bool:
        """scikit-learn's rule: adaptive SGD divides the rate by 5 until it is <= 1e-6."""
        if self.solver == "sgd" and self.learning_rate == "adaptive":
            if opt.base_lr > 1e-6:
                opt.set_learning_rate(opt.base_lr / 5.0)
                if self.verbose:
                    print(msg + f" Setting learning rate to {opt.base_lr:f}")
                return False
            msg += " Learning rate too small."
        if self.verbose:
            print(msg + " Stopping.")
        return True

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, sw_val):
        if early_stopping:
            score = self._score(X_val, y_val, sample_weight=sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            worse = score < self.best_validation_score_ + self.tol
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_coefs = [c.copy() for c in self.coefs_]
                self._best_intercepts = [b.copy() for b in self.intercepts_]
        else:
            loss = self.loss_curve_[-1]
            worse = loss > self.best_loss_ - self.tol
            self.best_loss_ = min(self.best_loss_, loss)  # the old one on a tie or NaN
        self._no_improvement_count = self._no_improvement_count + 1 if worse else 0

    # --- inference --------------------------------------------------------------------------

    @_holding("shared", "predict")
    def _outputs(self, X, check_input=True):
        """Raw network outputs (n, n_outputs_) as NumPy, after the output activation."""
        X = as_host(X)
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"],
                              dtype=(np.float64, np.float32), reset=False)
        if _sparse.issparse(X):
            X = X.toarray()
        # the public door uploads coefs_ (they may have been edited); the fit loop's
        # validation scores follow its own download and skip that copy
        model = self._network(refresh=check_input)
        out = model.predict(np.ascontiguousarray(X, dtype=model.dtype))
        if self.out_activation_ == "identity":
            return out
        if self.out_activation_ == "exp":  # Poisson's log link
            return np.exp(out, out=out)
        link = "sigmoid" if self.out_activation_ == "logistic" else "softmax"
        return reference.act_fwd(link, out)

    def _decode(self, y):
        """Network outputs (or encoded targets) as the estimator's targets."""
        return y

    def _predict(self, X, check_input=True):
        y_pred = self._outputs(X, check_input=check_input)
        return self._decode(y_pred.ravel() if y_pred.shape[1] == 1 else y_pred)

    def predict(self, X):
        """Predicted classes or values for X: (n_samples,), or (n_samples, n_outputs) for
        multi-label or multi-output targets."""
        check_is_fitted(self)
        return self._predict(X)

    def _score(self, X, y, sample_weight=None):
        """``_metric`` (accuracy or R^2) of the predictions; NaN when one is not finite."""
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return self._metric(y, y_pred, sample_weight=sample_weight)

    # --- pickling: the device network and optimizer are caches ------------------------------

    def __getstate__(self):
        state = dict(super().__getstate__())
        opt = state.pop("_optimizer", None)
        if opt is not None:
            state["_optimizer_state"] = opt.state_dict()
        for cache in ("_model", "_synced", "_usage"):  # _usage: which threads use it, not state
            state.pop(cache, None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # densified at the edge
        return tags

    def fit(self, X, y, sample_weight=None):
        """Fit the network to X (n_samples, n_features) and y; returns self.

        X may be a NumPy array, a SciPy sparse matrix (densified) or a torch/JAX/CuPy tensor.
        sample_weight: (n_samples,) >= 0, or None (scikit-learn also takes negative weights;
        devnet's losses refuse them: a batch weighing < 0 in total would train uphill).
        """
        self._validate_params()
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)
