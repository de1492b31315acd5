"""Launches and allocations of the estimators' L2 term and of clip_norm on the simulated GPU.

Regression ("clip_norm and the estimator's L2 must not add a dozen CuPy
launches"): before, the L2 hook ran a dot, a scaled copy of W and an add per layer plus the
value arithmetic (allocating each step), and ``_clip_`` five CuPy ops. Runs in the
``DEVNET_CUDA_SIMULATOR=1`` pytest process (as ``tests/devices/test_cuda_launch_bench.py``):

    DEVNET_CUDA_SIMULATOR=1 python -m pytest -q -m cudasim tests/kernels/test_l2_clip_cudasim.py
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.cudasim  # conftest skips it outside a DEVNET_CUDA_SIMULATOR=1 process

import devnet as dn  # noqa: E402
from benchmarks.bench_launch import count_allocations, count_launches  # noqa: E402
from devnet.train.step import Step  # noqa: E402

F32 = dict(rtol=2e-4, atol=2e-5)  # a few float32 steps on two backends


def _estimator_step(backend, data, weighted):
    """A Step as the estimators build it (SklearnAdam, scikit-learn's MSE scaling, alpha)."""
    try:  # here, not at the top: without scikit-learn / SciPy only the estimators' test skips
        from devnet.sklearn._optim import SklearnAdam, SklearnObjective
    except ImportError as exc:  # MissingDependencyError names what to install
        pytest.skip(str(exc))
    model = dn.MLP([5, 7, 6, 2], backend=backend, seed=3)
    hook = SklearnObjective(model, value_scale=0.5, grad_scale=1.0, alpha=0.01)
    step = Step(model, dn.losses.get("mse"), SklearnAdam(model, lr=1e-2), hooks=[hook])
    x, y, w = (backend.asarray(a) for a in data)
    return model, hook, step, (x, y, w if weighted else None)


@pytest.mark.parametrize("weighted", (False, True))
def test_estimator_l2_step_is_one_launch_and_allocates_nothing(backend, weighted):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((12, 5)).astype(np.float32),
            rng.standard_normal((12, 2)).astype(np.float32),
            rng.uniform(0.5, 2.0, 12).astype(np.float32))
    model, hook, step, batch = _estimator_step(backend, data, weighted)
    cpu_model, _, cpu_step, cpu_batch = _estimator_step(dn.get_backend("cpu"), data, weighted)
    seen = []
    param_grad = hook.param_grad_

    def counted(value, b):  # the hook alone: its launches and allocations
        with count_launches() as launches, count_allocations(backend) as allocs:
            out = param_grad(value, b)
        seen.append((dict(launches), allocs["n"]))
        return out

    hook.param_grad_ = counted
    for i in range(3):
        with count_launches() as launches, count_allocations(backend) as allocs:
            value = step(*batch)
        cpu_value = cpu_step(*cpu_batch)
        np.testing.assert_allclose(float(value), float(cpu_value), **F32)
        np.testing.assert_allclose(backend.to_numpy(model.params), cpu_model.params, **F32)
        # one launch; after the first step (which uploads the spans) no allocation
        assert seen[-1] == ({"l2_penalty": 1}, 1 if i == 0 else 0), (i, seen[-1])
        assert launches["l2_penalty"] == 1
        if i and not weighted:  # the loss normalises sample weights with CuPy ops (its own)
            assert allocs["n"] == 0, (i, allocs)


def test_adam_clip_step_is_one_more_launch_and_allocates_nothing(backend):
    rng = np.random.default_rng(1)
    models = [dn.MLP([4, 6, 3], backend=be, seed=5) for be in (backend, dn.get_backend("cpu"))]
    opts = [dn.optim.Adam(m, lr=1e-2, clip_norm=0.5) for m in models]
    for i in range(4):
        g = (rng.standard_normal(models[1].n_params) * (0.01 if i == 2 else 5)).astype(np.float32)
        models[0].grads[...] = backend.asarray(g)
        models[1].grads[...] = g
        with count_launches() as launches, count_allocations(backend) as allocs:
            opts[0].step()
        opts[1].step()
        assert dict(launches) == {"opt_clip": 1, "opt_advance": 1, "adam_step_hyper": 1}
        if i:  # the first step uploads hyper and its table through a temporary
            assert allocs["n"] == 0, (i, allocs)
        np.testing.assert_array_equal(backend.to_numpy(models[0].grads), g)  # left unscaled
        np.testing.assert_allclose(backend.to_numpy(models[0].params), models[1].params, **F32)
