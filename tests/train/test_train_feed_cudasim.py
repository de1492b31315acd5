"""devnet.train's feeds on the CUDA backend (Numba's simulator and the CuPy stand-in).

Runs only in its own pytest process with ``DEVNET_CUDA_SIMULATOR=1`` set before devnet is
imported:

    DEVNET_CUDA_SIMULATOR=1 python -m pytest -q -m cudasim tests/train/test_train_feed_cudasim.py
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.cudasim  # conftest skips it outside a DEVNET_CUDA_SIMULATOR=1 process

import devnet as dn  # noqa: E402
from devnet.train.feed import DeviceFeed, HostFeed, make_feed  # noqa: E402


def test_feeds_on_the_gpu_give_the_same_batches(backend, rng):
    n = 13
    X = rng.standard_normal((n, 3)).astype(np.float32)
    y = rng.integers(0, 2, n).astype(np.int64)
    w = rng.uniform(0.5, 2.0, n).astype(np.float32)
    order = rng.permutation(n)
    host, device = (make_feed(backend, X, y, w, capacity=4, kind=k) for k in ("host", "device"))
    assert isinstance(host, HostFeed) and isinstance(device, DeviceFeed)
    for feed in (host, device):
        feed.start_epoch(order)
        for lo in range(0, n, 4):
            xb, yb, wb, rows, _ = feed.batch(lo, min(lo + 4, n))
            assert backend.is_array(xb) and backend.is_array(yb) and backend.is_array(wb)
            np.testing.assert_array_equal(backend.to_numpy(xb), X[order[lo:lo + 4]])
            np.testing.assert_array_equal(backend.to_numpy(yb), y[order[lo:lo + 4]])
            np.testing.assert_array_equal(backend.to_numpy(wb), w[order[lo:lo + 4]])


def test_fit_on_the_gpu_is_the_same_whichever_feed(backend, rng, monkeypatch):
    X = rng.standard_normal((12, 3)).astype(np.float32)
    y = rng.integers(0, 2, 12).astype(np.int64)
    runs = []
    for kind in ("host", "device"):
        monkeypatch.setattr("devnet.train.loop.make_feed",
                            lambda *a, kind=kind, **k: make_feed(*a, **k, kind=kind))
        model = dn.MLP([3, 4, 2], backend=backend, seed=1)
        hist = dn.fit(model, X, y, loss="cross_entropy", epochs=1, batch_size=5,
                      progress=False, train_metrics=False)
        runs.append((hist["loss"], backend.to_numpy(model.params)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
