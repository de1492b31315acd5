"""The simulator passes can be trusted with block-wide reductions: Numba's simulator, as this
suite prepares it (tests/helpers/simulator.py), gives every thread of a block the same shared
array however often the GIL switches between them."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.cudasim, pytest.mark.kernelsim]

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    from devnet.kernels import cuda as kcuda
    from devnet.kernels import reference
else:  # pragma: no cover - the module is skipped
    kcuda = reference = None


@pytest.fixture
def switch_often():
    """A 20 us GIL switch interval: without the fix, about 1 launch in 12 went wrong."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(2e-5)
    yield
    sys.setswitchinterval(before)


def test_a_block_reduction_is_exact_when_threads_switch_often(rng, switch_often):
    logits = rng.standard_normal((6, 3))
    labels = rng.integers(0, 3, 6)
    expected = reference.softmax_xent(logits, labels, np.empty_like(logits), None, 1.0)
    for _ in range(40):  # each launch allocates its block's shared arrays afresh
        value = kcuda.softmax_xent(logits, labels, np.empty_like(logits), None, 1.0)
        np.testing.assert_allclose(float(value), float(expected), rtol=1e-12)
