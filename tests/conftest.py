"""Shared fixtures: ``backend``, the one device fixture (the CPU, a GPU, the CUDA simulator), and
``rng``. Helper functions are in the ``helpers`` package (tests/helpers/), not here.

Self-contained on purpose (devnet, NumPy and pytest only): packaging/test_simulator_passes.py
runs a copy of it outside this tree."""

from __future__ import annotations

import os

import numpy as np
import pytest

import devnet as dn
from devnet.backend import cuda as cuda_backend

# Which simulator this process runs, fixed before devnet is imported, so each is a pytest process
# of its own (make test-source): the whole CUDA backend over the CuPy stand-in and the simulated
# kernels, or the kernels alone on NumPy arrays (tests also marked kernelsim)
SIMULATORS = {"cudasim": "DEVNET_CUDA_SIMULATOR", "kernelsim": "NUMBA_ENABLE_CUDASIM"}
SIMULATED = os.environ.get(SIMULATORS["cudasim"]) == "1"

pytest.register_assert_rewrite("helpers")  # their asserts report values, as a test's do

if any(os.environ.get(env) == "1" for env in SIMULATORS.values()):
    from helpers import simulator  # the simulator's shared arrays, made thread-safe

    simulator.prepare()


def _devices(simulator: bool) -> list:
    """The ``backend`` fixture's parameters: the CPU and a GPU where one exists, or, for a test
    marked ``cudasim``, the CUDA backend on the simulator alone (its pass selects it by marker:
    a new simulator test joins no list)."""
    if simulator:
        return [pytest.param("cuda", id="cudasim")]
    reason = cuda_backend.unavailable_reason()
    return [pytest.param("cpu", id="cpu"),
            pytest.param("cuda", id="cuda", marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(reason is not None, reason=f"no GPU: {reason}")])]


def _parametrized_directly(metafunc, name: str) -> bool:
    """Whether the test's own ``parametrize`` names ``name`` (it then picks its devices)."""
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if name in names:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames and not _parametrized_directly(metafunc, "backend"):
        simulator = metafunc.definition.get_closest_marker("cudasim") is not None
        metafunc.parametrize("backend", _devices(simulator), indirect=True)


@pytest.fixture
def backend(request):
    """The device a test runs on (see ``_devices``), with its fused kernels."""
    return dn.get_backend(request.param)


def _simulator_skip(item) -> pytest.MarkDecorator | None:
    """A skip for a ``cudasim`` test outside its simulator's process, naming the command."""
    kind = "kernelsim" if item.get_closest_marker("kernelsim") else "cudasim"
    env = SIMULATORS[kind]
    if os.environ.get(env) == "1":
        return None
    return pytest.mark.skip(reason=f"needs {env}=1 set before devnet is imported (run: {env}=1 "
                                   f"python -m pytest -m cudasim {item.nodeid.split('::')[0]})")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # make test-source picks the simulator passes by marker: a kernelsim test that is not also
    # cudasim would land in the plain pass, and be skipped there without a word
    stray = [item.nodeid for item in items
             if item.get_closest_marker("kernelsim") and not item.get_closest_marker("cudasim")]
    if stray:
        raise pytest.UsageError(f"{', '.join(stray)}: marked kernelsim but not cudasim; "
                                "mark it cudasim too")
    for item in items:
        if item.get_closest_marker("cudasim"):
            skip = _simulator_skip(item)
            if skip is not None:
                item.add_marker(skip)
    reason = cuda_backend.unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs CuPy and a GPU: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    """A fresh random Generator each run; the seed is printed (shown on failure).

    Set DEVNET_TEST_SEED to replay a failing run.
    """
    seed = int(os.environ.get("DEVNET_TEST_SEED") or np.random.SeedSequence().entropy % 2**32)
    print(f"DEVNET_TEST_SEED={seed}")
    return np.random.default_rng(seed)


TOL = {np.dtype("float32"): dict(rtol=2e-5, atol=2e-6), np.dtype("float64"): dict(rtol=1e-12,
                                                                                     atol=1e-14)}
