"""scikit-learn estimators backed by devnet: ``MLPClassifier`` and ``MLPRegressor``.

They take scikit-learn's MLP parameters (solvers ``"lbfgs"``, ``"sgd"`` and ``"adam"``) plus
``device=`` and ``dtype=``, and train devnet's fused MLP, losses and optimizers on that device::

    from devnet.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(256,), device="cuda", dtype="float32").fit(X, y)

The training mirrors scikit-learn's (initialisation, shuffling, early-stopping split, Adam
formula, L-BFGS-B call, ``loss_curve_``), so with the same data and seed the two agree to
rounding in float64. Fitted attributes are NumPy arrays whatever the device; the device network
is a cache, dropped on pickling and rebuilt from ``coefs_`` / ``intercepts_``.

Needs scikit-learn and SciPy: ``pip install 'devnet-mlp[sklearn]'``.
"""

from devnet.errors import MissingDependencyError

try:
    import scipy.optimize  # noqa: F401
    import sklearn  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingDependencyError(
        f"devnet.sklearn needs scikit-learn (and SciPy), which cannot be imported here "
        f"({exc}); install them with: pip install 'devnet-mlp[sklearn]'") from exc

from devnet.sklearn._estimators import (  # noqa: E402
    EXPECTED_FAILED_CHECKS,
    MLPClassifier,
    MLPRegressor,
)

__all__ = ["MLPClassifier", "MLPRegressor", "EXPECTED_FAILED_CHECKS"]
