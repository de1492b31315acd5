"""Exact parity checks: fused vs reference kernels, and GPU vs CPU, step by step."""

import numpy as np
import pytest

import devnet as dn

PARITY_ACTS = ["relu", "tanh", "gelu"]


def _digits_batches(epochs, batch_size, seed=0):
    X, y = dn.data.load_digits()
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(X))
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            yield X[idx], y[idx]


def _run_in_lockstep(backend_a, backend_b, act, epochs, rtol, atol, optimizer="adam"):
    """Train two copies on the same batches and check every step on its own: the loss and
    the gradients (forward, loss and backward kernels), then the update from A's gradients
    (the optimizer kernel); then B takes A's state so errors cannot accumulate."""
    models = [dn.MLP([64, 128, 64, 10], activation=act, seed=0, backend=be)
              for be in (backend_a, backend_b)]
    opts = [dn.optim.get(optimizer, m.parameters(), lr=1e-3) for m in models]
    loss = dn.losses.get("cross_entropy")
    host = [m.backend.to_numpy for m in models]
    grads = {}
    steps = 0
    for Xb, yb in _digits_batches(epochs, 32):
        values = []
        for m in models:
            be = m.backend
            g = grads.setdefault((id(m), len(Xb)), be.empty((len(Xb), 10), m.dtype))
            pred = m.forward(be.asarray(Xb))
            values.append(float(loss.forward_backward_(pred, be.asarray(yb), g, backend=be)))
            m.backward(g, input_grad=False)
        assert values[1] == pytest.approx(values[0], rel=rtol), f"loss at step {steps}"
        ga = host[0](models[0].grads)
        scale = np.abs(ga).max()
        # float32 sums over a batch in another order: compare relative to the largest gradient
        np.testing.assert_allclose(host[1](models[1].grads), ga, rtol=10 * rtol,
                                   atol=20 * rtol * scale,
                                   err_msg=f"gradients at step {steps}")
        models[1].grads[...] = models[1].backend.asarray(ga)
        for opt in opts:
            opt.step()
        pa = host[0](models[0].params)
        np.testing.assert_allclose(host[1](models[1].params), pa, rtol=rtol, atol=atol,
                                   err_msg=f"parameters at step {steps}")
        models[1].params[...] = models[1].backend.asarray(pa)
        for name, buf in opts[0].state.items():
            opts[1].state[name][...] = models[1].backend.asarray(host[0](buf))
        steps += 1
    return steps


@pytest.mark.parametrize("act", PARITY_ACTS)
def test_fused_cpu_kernels_match_reference_step_by_step(act):
    """Digits, 5 epochs: the fused CPU kernels track the reference kernels at float32
    tolerance at every step."""
    fused = dn.get_backend("cpu")
    reference = dn.get_backend("cpu", kernels="reference")
    assert fused.kernels.source != reference.kernels.source
    steps = _run_in_lockstep(reference, fused, act, epochs=5, rtol=1e-5, atol=1e-6)
    assert steps == 5 * 57


@pytest.mark.gpu
@pytest.mark.parametrize("act", PARITY_ACTS)
def test_gpu_matches_cpu_step_by_step(act):
    """Digits, 3 epochs: CuPy + Numba-CUDA against NumPy + Numba, every step."""
    steps = _run_in_lockstep(dn.get_backend("cpu"), dn.get_backend("cuda"), act, epochs=3,
                             rtol=1e-4, atol=1e-5)
    assert steps == 3 * 57


@pytest.mark.gpu
def test_gpu_fit_matches_cpu_fit():
    """The same fit on both devices ends with close parameters and the same accuracy."""
    X, y = dn.data.load_digits()
    results = []
    for device in ("cpu", "cuda"):
        model = dn.MLP([64, 64, 10], seed=1, backend=device, dtype="float64")
        dn.fit(model, X, y, loss="cross_entropy", epochs=3, batch_size=64, seed=2,
               progress=False)
        results.append(model.backend.to_numpy(model.params))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-7, atol=1e-9)
