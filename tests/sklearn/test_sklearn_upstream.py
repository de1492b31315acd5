"""scikit-learn's own MLP tests, run against devnet's estimators.

The installed scikit-learn ships ``sklearn/neural_network/tests/test_mlp.py``. It is loaded here
from its install location (never copied into this project) with ``sklearn.neural_network``'s
``MLPClassifier`` / ``MLPRegressor`` replaced by devnet's while the module body runs, so every
test in it builds devnet's estimators; pytest then collects its test functions from this
module's namespace. The estimators run on the CPU (``DEVNET_DEVICE=cpu``), as in CI.
"""

from __future__ import annotations

import importlib.util
import os
from unittest import mock

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

import sklearn.neural_network as _sk_nn  # noqa: E402

import devnet.sklearn as _dn_sk  # noqa: E402

_SPEC = importlib.util.find_spec("sklearn.neural_network.tests.test_mlp")
if _SPEC is None or _SPEC.origin is None or not os.path.isfile(_SPEC.origin):
    pytest.skip("this scikit-learn install does not ship sklearn/neural_network/tests/"
                "test_mlp.py", allow_module_level=True)

#: upstream tests that are skipped, with the reason (none at the moment)
SKIPPED: dict[str, str] = {}


def _load_upstream():
    spec = importlib.util.spec_from_file_location("devnet_upstream_test_mlp", _SPEC.origin)
    module = importlib.util.module_from_spec(spec)
    with mock.patch.object(_sk_nn, "MLPClassifier", _dn_sk.MLPClassifier), \
            mock.patch.object(_sk_nn, "MLPRegressor", _dn_sk.MLPRegressor):
        spec.loader.exec_module(module)
    assert module.MLPClassifier is _dn_sk.MLPClassifier
    assert module.MLPRegressor is _dn_sk.MLPRegressor
    return module


_UPSTREAM = _load_upstream()

for _name, _obj in vars(_UPSTREAM).items():
    if _name.startswith("test_") and callable(_obj):
        if _name in SKIPPED:
            _obj = pytest.mark.skip(reason=SKIPPED[_name])(_obj)
        globals()[_name] = _obj


@pytest.fixture
def global_random_seed():
    """scikit-learn's conftest fixture (its default seed, 42)."""
    return 42


@pytest.fixture(autouse=True)
def _cpu_device(monkeypatch):
    # "auto" resolves through DEVNET_DEVICE: the upstream tests never pass device=
    monkeypatch.setenv("DEVNET_DEVICE", "cpu")


def test_upstream_module_uses_devnet_estimators():
    """The harness really swapped the estimators in (a test that fails if the patch broke)."""
    assert _UPSTREAM.MLPClassifier.__module__.startswith("devnet.sklearn")
    assert _UPSTREAM.__file__ == _SPEC.origin
    n_tests = sum(name.startswith("test_") for name in vars(_UPSTREAM))
    assert n_tests >= 40
