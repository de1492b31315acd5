"""Exact parity checks: fused vs reference kernels, and GPU vs CPU, step by step."""

import numpy as np
import pytest

import devnet as dn

PARITY_ACTS = ["relu", "tanh", "gelu"]
_EPS32 = float(np.finfo(np.float32).eps)
# Fused vs reference kernels on the CPU (same BLAS, same summation order in the matmuls).
# Measured worst over 5 epochs: loss 1.2e-6 relative; parameters 29 eps; gradients beside
# rtol 1e-4 need atol 5e-7 x the largest early on and 1.7e-5 x at gelu's step 275, where the
# last layer's softmax - onehot cancels as the loss falls. The bounds leave ~3x room or more;
# a 1% error in any kernel's output still fails them (tests/README.md, the mutation table).
CPU_TOL = {"loss": 1e-5, "grad_rtol": 1e-4, "grad_atol": 5e-5, "param": 96 * _EPS32}
# GPU vs CPU: cuBLAS sums in another order; kept at the earlier, looser values until measured
GPU_TOL = {"loss": 1e-4, "grad_rtol": 1e-3, "grad_atol": 2e-3, "param": 1e-4}


def _digits_batches(epochs, batch_size, seed=0):
    X, y = dn.data.load_digits()
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(X))
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            yield X[idx], y[idx]


def _run_in_lockstep(backend_a, backend_b, act, epochs, tol, optimizer="adam"):
    """Train two copies on the same batches and check every step on its own: the loss and
    the gradients (forward, loss and backward kernels), then the update from A's gradients
    (the optimizer kernel); then B takes A's state so errors cannot accumulate.

    ``tol``: ``loss`` (relative), ``grad_rtol`` and ``grad_atol`` (the latter relative to the
    largest gradient), ``param`` (relative to |old| + |new| + |update|, elementwise, so a 1%
    error in the update of any parameter fails).
    """
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
        assert values[1] == pytest.approx(values[0], rel=tol["loss"]), f"loss at step {steps}"
        ga = host[0](models[0].grads)
        scale = np.abs(ga).max()
        # an entry that cancels (a sum over the batch of terms of both signs) keeps the
        # absolute error of its terms: the atol part, relative to the largest gradient
        np.testing.assert_allclose(host[1](models[1].grads), ga, rtol=tol["grad_rtol"],
                                   atol=tol["grad_atol"] * scale,
                                   err_msg=f"gradients at step {steps}")
        models[1].grads[...] = models[1].backend.asarray(ga)
        old = {"parameters": host[0](models[0].params).astype(np.float64)}
        old.update({f"optimizer state {k!r}": host[0](b).astype(np.float64)
                    for k, b in opts[0].state.items()})
        for opt in opts:
            opt.step()
        new = [{"parameters": host[i](models[i].params),
                **{f"optimizer state {k!r}": host[i](b) for k, b in opts[i].state.items()}}
               for i in (0, 1)]
        for what, before in old.items():  # the update of each buffer, not only its value
            pa = new[0][what]
            bound = tol["param"] * (np.abs(before) + np.abs(pa) + np.abs(pa - before))
            err = np.abs(new[1][what].astype(np.float64) - pa)
            assert np.all(err <= bound), (
                f"{what} at step {steps}: {int((err > bound).sum())} outside the bound, worst "
                f"error/bound {float(np.max(err / np.maximum(bound, 1e-300))):.3g}")
        pa = new[0]["parameters"]
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
    steps = _run_in_lockstep(reference, fused, act, epochs=5, tol=CPU_TOL)
    assert steps == 5 * 57


@pytest.mark.gpu
@pytest.mark.parametrize("act", PARITY_ACTS)
def test_gpu_matches_cpu_step_by_step(act):
    """Digits, 3 epochs: CuPy + Numba-CUDA against NumPy + Numba, every step."""
    steps = _run_in_lockstep(dn.get_backend("cpu"), dn.get_backend("cuda"), act, epochs=3,
                             tol=GPU_TOL)
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
