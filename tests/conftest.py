"""Shared fixtures: a ``backend`` fixture over every device present (the CPU always)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import devnet as dn
from devnet.backend import cuda as cuda_backend


def _devices():
    params = [pytest.param("cpu", id="cpu")]
    reason = cuda_backend.unavailable_reason()
    params.append(pytest.param("cuda", id="cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(reason is not None, reason=f"no GPU: {reason}")]))
    return params


@pytest.fixture(params=_devices())
def backend(request):
    """Each available backend with its fused kernels."""
    return dn.get_backend(request.param)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # make test-source picks the simulator passes by marker: a kernelsim test that is not also
    # cudasim would land in the plain pass, and be skipped there without a word
    stray = [item.nodeid for item in items
             if item.get_closest_marker("kernelsim") and not item.get_closest_marker("cudasim")]
    if stray:
        raise pytest.UsageError(f"{', '.join(stray)}: marked kernelsim but not cudasim; "
                                "mark it cudasim too")
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
