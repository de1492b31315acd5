"""The whole CUDA backend end to end on Numba's CUDA simulator and the CuPy stand-in.

Runs only in its own pytest process with ``DEVNET_CUDA_SIMULATOR=1`` set before devnet (and
numba) is imported; ``make test`` does that:

    DEVNET_CUDA_SIMULATOR=1 python -m pytest -q -m cudasim tests/devices/test_cuda_sim_e2e.py

``get_backend("cuda")`` is then the real ``CUDABackend``: its device scopes, streams, pinned
staging, kernel table and launch checks run as on a GPU; only the kernels' threads and CuPy's
arrays are simulated. The simulator runs each GPU thread in Python, so the data are tiny.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.cudasim  # conftest skips it outside a DEVNET_CUDA_SIMULATOR=1 process

import devnet as dn  # noqa: E402
from devnet.backend import cuda as cuda_backend  # noqa: E402

F32 = dict(rtol=2e-4, atol=2e-5)  # a few float32 steps: matmul sums in another order


@pytest.fixture(scope="module")
def digits():
    """48 digits (every class), pixels in [0, 1]: the simulator runs each GPU thread in Python."""
    X, y = dn.data.load_digits()
    idx = np.random.default_rng(0).permutation(len(y))[:48]
    return X[idx].astype(np.float32), y[idx].astype(np.int64)


def _params(model):
    return [model.backend.to_numpy(p.data).copy() for p in model.parameters()]


def test_cuda_is_the_real_backend_over_the_simulator(backend):
    from devnet.testing import cupy_sim

    assert type(backend) is cuda_backend.CUDABackend and backend.simulated
    assert backend.name == "cuda" and backend.device == "cuda:0" and backend.xp is cupy_sim
    assert backend.kernels.source == "devnet.kernels.cuda"
    assert dn.available_backends()[1:] == [f"cuda:{i}" for i in range(cupy_sim.DEVICE_COUNT)]
    assert dn.get_backend("auto").name == "cpu"  # "auto" never picks the simulator


def test_standin_refuses_implicit_host_conversion(backend, rng):
    a = backend.asarray(rng.standard_normal(3))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    np.testing.assert_array_equal(backend.to_numpy(a), a.get())


def test_step_parity_with_cpu(backend, rng):
    """Fused CUDA kernels vs fused CPU kernels, parameters compared after every step."""
    X = rng.standard_normal((20, 6)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    models, opts = {}, {}
    for dev in ("cpu", "cuda"):
        models[dev] = dn.MLP([6, 8, 3], activation="tanh", backend=dev, seed=3)
        opts[dev] = dn.optim.Adam(models[dev].parameters(), lr=1e-2)
    loss = dn.losses.get("cross_entropy")
    for _ in range(3):
        values = {}
        for dev, model in models.items():
            be = model.backend
            pred = model.forward(be.asarray(X))
            grad = be.xp.empty_like(pred)
            values[dev] = float(loss.forward_backward_(pred, be.asarray(y), grad, backend=be))
            model.backward(grad)
            opts[dev].step()
        assert values["cuda"] == pytest.approx(values["cpu"], rel=1e-5)
        for a, b in zip(_params(models["cuda"]), _params(models["cpu"])):
            np.testing.assert_allclose(a, b, **F32)


def test_fit_on_digits_matches_the_cpu(backend, digits):
    X, y = digits
    hist, models = {}, {}
    for dev in ("cpu", "cuda"):
        models[dev] = dn.MLP([64, 12, 10], backend=dev, seed=0)
        hist[dev] = dn.fit(models[dev], X, y, loss="cross_entropy", optimizer="adam", lr=3e-2,
                           epochs=2, batch_size=24, progress=False, train_metrics=False)
    np.testing.assert_allclose(hist["cuda"].history["loss"], hist["cpu"].history["loss"],
                               rtol=1e-5)
    assert hist["cuda"].history["loss"][-1] < hist["cuda"].history["loss"][0]
    assert backend.is_array(models["cuda"].layers[0].W)
    proba = dn.predict_proba(models["cuda"], X[:5])
    assert isinstance(proba, np.ndarray) and proba.shape == (5, 10)
    np.testing.assert_allclose(proba, dn.predict_proba(models["cpu"], X[:5]), **F32)


def test_sklearn_estimators(digits):
    from devnet.sklearn import MLPClassifier, MLPRegressor

    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, batch_size=48, device="cuda",
                        random_state=0).fit(X, y)
    assert clf.predict(X[:7]).shape == (7,) and set(clf.classes_) <= set(range(10))
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=2, batch_size=48, device="cuda",
                       random_state=0).fit(X[:, :10], X[:, 10])
    assert np.isfinite(reg.predict(X[:5, :10])).all()


def test_profile_runs_on_the_gpu_path(digits):
    X, y = digits
    model = dn.MLP([64, 16, 10], backend="cuda", seed=0)
    report = dn.profile(model, X[:16], y[:16], repeats=1, warmup=1,
                        ceilings={"copy_gbs": 1.0, "gemm_gflops": 1.0})
    names = " ".join(op.op for op in report.ops)
    for op in ("matmul", "bias+relu", "relu' + bias grad", "softmax_xent", "adam_step"):
        assert op in names
    # on the GPU path each op has its launch's host time and its events' device time
    timed = [op for op in report.ops if op.layer != "step"]
    assert all(op.host_s > 0 and op.time_s > 0 for op in timed)
    assert "host us" in str(report)


def test_checkpoint_across_devices_is_bit_identical(tmp_path, digits):
    X, y = digits
    model = dn.MLP([64, 8, 10], backend="cuda", seed=0)
    opt = dn.optim.Adam(model.parameters(), lr=1e-2)
    dn.fit(model, X[:16], y[:16], loss="cross_entropy", optimizer=opt, epochs=1,
           batch_size=16, progress=False, train_metrics=False)
    dn.save(model, tmp_path / "gpu.safetensors", optimizer=opt)
    on_cpu, opt_cpu = dn.load(tmp_path / "gpu.safetensors", backend="cpu")
    for a, b in zip(_params(on_cpu), _params(model)):
        np.testing.assert_array_equal(a, b)
    dn.save(on_cpu, tmp_path / "cpu.safetensors", optimizer=opt_cpu)
    back, _ = dn.load(tmp_path / "cpu.safetensors", backend="cuda")
    assert back.backend.name == "cuda"
    for a, b in zip(_params(back), _params(model)):
        np.testing.assert_array_equal(a, b)


def test_resume_matches_an_uninterrupted_run(tmp_path, digits):
    X, y = digits
    X, y = X[:16], y[:16]
    kw = dict(loss="cross_entropy", optimizer="adam", batch_size=8, progress=False, seed=1,
              train_metrics=False)
    straight = dn.MLP([64, 8, 10], backend="cuda", seed=0)
    dn.fit(straight, X, y, epochs=2, **kw)
    first = dn.MLP([64, 8, 10], backend="cuda", seed=0)
    ck = tmp_path / "ck.safetensors"
    dn.fit(first, X, y, epochs=1, checkpoint=ck, **kw)
    resumed = dn.MLP([64, 8, 10], backend="cuda", seed=0)
    dn.fit(resumed, X, y, epochs=2, resume_from=ck, **kw)
    for a, b in zip(_params(resumed), _params(straight)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_divergence_guard(digits):
    X, y = digits
    model = dn.MLP([64, 8, 10], backend="cuda", seed=0)
    with pytest.raises(dn.DivergenceError):
        dn.fit(model, X[:8] * 1e30, y[:8], loss="cross_entropy", optimizer="sgd", lr=1e30,
               epochs=2, batch_size=8, progress=False, train_metrics=False)


# --- device state: per backend, never global -----------------------------------------------------

def test_each_backend_allocates_and_launches_on_its_own_device(rng):
    be0, be1 = dn.get_backend("cuda:0"), dn.get_backend("cuda:1")
    X = rng.standard_normal((12, 5)).astype(np.float32)
    y = rng.integers(0, 2, 12)
    model = dn.MLP([5, 4, 2], backend=be1, seed=0)
    assert all(p.data.data.device_id == 1 for p in model.parameters())
    with be0.scope():  # another device current around the call: fit keeps to cuda:1
        dn.fit(model, X, y, loss="cross_entropy", epochs=1, batch_size=12, progress=False,
               train_metrics=False)
        assert be0.xp.cuda.runtime.getDevice() == 0
        a = be1.empty((2, 3), np.float32)
        assert a.data.device_id == 1
    assert be1.asarray(X).data.device_id == 1 and be0.asarray(X).data.device_id == 0


def test_predict_on_the_second_gpu_runs_on_its_device(rng):
    # predict's own xp work (the finiteness check, each batch's copy, the concatenation) goes
    # to the current device: on cuda:0, CuPy raises a peer-access error or GPU 0 reads cuda:1
    X = rng.standard_normal((7, 3))
    gpu = dn.MLP([3, 4, 2], backend="cuda:1", dtype="float64", seed=1)
    cpu = dn.MLP([3, 4, 2], backend="cpu", dtype="float64", seed=1)
    expected = cpu.predict(X)
    np.testing.assert_allclose(gpu.predict(X, batch_size=3), expected, rtol=1e-10, atol=1e-12)
    out = gpu.predict(gpu.backend.asarray(X), batch_size=3)  # a device array stays there
    assert out.data.device_id == 1
    np.testing.assert_allclose(gpu.backend.to_numpy(out), expected, rtol=1e-10, atol=1e-12)
    assert gpu.backend.xp.cuda.runtime.getDevice() == 0
    with pytest.raises(dn.DataError, match="NaN or Inf"):
        gpu.predict(np.full((2, 3), np.nan))


def test_forward_and_backward_with_input_scaling_on_the_second_gpu(rng):
    # the standardisation's xp.subtract / divide go to the current device, cuda:0 here
    X, dY = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    mean, scale = rng.standard_normal(3), rng.random(3) + 0.5
    gpu = dn.MLP([3, 4, 2], backend="cuda:1", dtype="float64", seed=2)
    cpu = dn.MLP([3, 4, 2], backend="cpu", dtype="float64", seed=2)
    for model in (gpu, cpu):
        model.set_input_scaling(mean, scale)
    np.testing.assert_allclose(gpu.backend.to_numpy(gpu.forward(X)), cpu.forward(X),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gpu.backend.to_numpy(gpu.backward(dY)), cpu.backward(dY),
                               rtol=1e-10, atol=1e-12)


class _CudaTensor:
    """A DLPack producer whose memory is on one GPU (a torch.cuda tensor, say)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, stream=None):
        return self.array.__dlpack__()

    def __dlpack_device__(self):
        return (2, self.array.data.device_id)  # kDLCUDA, the device ordinal


def test_interop_moves_an_array_of_another_gpu_to_the_backends(monkeypatch, rng):
    # cupy.from_dlpack (CuPy 14) switches to the producer's GPU and imports there, raising
    # only for host producers: as_array / from_dlpack must still give cuda:1 memory for cuda:1
    from devnet import interop

    g0, g1 = dn.get_backend("cuda:0"), dn.get_backend("cuda:1")
    X = rng.standard_normal((5, 3))
    tensor = _CudaTensor(g0.asarray(X))

    def from_dlpack(x, *, device=None, copy=None):  # CuPy's semantics, zero-copy
        kind, ordinal = x.__dlpack_device__()
        if kind != 2:
            raise TypeError("CPU arrays cannot be directly imported to CuPy")
        with g1.xp.cuda.Device(ordinal):
            return x.array

    monkeypatch.setattr(g1.xp, "from_dlpack", from_dlpack)
    for convert in (interop.as_array, interop.from_dlpack):
        out = convert(tensor, g1)
        assert out.data.device_id == 1, convert.__name__
        np.testing.assert_array_equal(g1.to_numpy(out), X)
    shared = interop.as_array(tensor, g0)  # on the producer's GPU: its memory, no copy
    assert shared.data.ptr == tensor.array.data.ptr


def test_kernel_refuses_an_array_of_another_device(rng):
    be0, be1 = dn.get_backend("cuda:0"), dn.get_backend("cuda:1")
    A = be1.asarray(rng.standard_normal((3, 4)), dtype=np.float32)
    b = be0.asarray(rng.standard_normal(4), dtype=np.float32)
    with pytest.raises(dn.DataError, match="cuda:0 was passed to a kernel launching on cuda:1"):
        be1.kernels.bias_act_fwd("relu", A, b)


# --- launch checks (the simulator would re-type; devnet's own check must catch these) ------------

def test_launch_refuses_float64_on_a_float32_kernel(backend, rng):
    A = backend.asarray(rng.standard_normal((4, 3)), dtype=np.float32)
    b64 = backend.asarray(rng.standard_normal(3), dtype=np.float64)
    with pytest.raises(dn.DataError, match="'b' is float64, the other arrays are float32"):
        backend.kernels.bias_act_fwd("relu", A, b64)


def test_launch_refuses_a_strided_view(backend, rng):
    A = backend.asarray(rng.standard_normal((4, 6)), dtype=np.float32)[:, ::2]
    b = backend.asarray(rng.standard_normal(3), dtype=np.float32)
    with pytest.raises(dn.DataError, match="'A' must be C-contiguous"):
        backend.kernels.bias_act_fwd("relu", A, b)


def test_out_of_range_label_gives_nan_not_out_of_bounds(backend, rng):
    logits = backend.asarray(rng.standard_normal((5, 3)), dtype=np.float32)
    grad = backend.xp.empty_like(logits)
    labels = backend.asarray(np.array([0, 1, 3, 2, -1]))
    value = backend.kernels.softmax_xent(logits, labels, grad, None, 0.2)
    assert np.isnan(float(value))
    g = backend.to_numpy(grad)
    assert np.isnan(g[[2, 4]]).all() and np.isfinite(g[[0, 1, 3]]).all()


def test_loss_values_need_no_allocation_per_step(backend, rng, monkeypatch):
    """Loss outputs come from a fixed ring per (device, stream, dtype), not cp.empty(1)."""
    from devnet.kernels.cuda import launch as kcuda

    monkeypatch.setattr(kcuda, "LOSS_RING", 3)
    monkeypatch.setattr(kcuda, "_OUTS", {})
    pred = backend.asarray(rng.standard_normal((6, 2)), dtype=np.float64)
    grad = backend.xp.empty_like(pred)
    target = backend.asarray(rng.standard_normal((6, 2)), dtype=np.float64)
    values = [backend.kernels.mse(pred, target, grad, None, 1.0 / 12) for _ in range(4)]
    ptrs = [v.data.ptr for v in values]
    assert len(set(ptrs[:3])) == 3 and ptrs[3] == ptrs[0]
    expected = np.mean((backend.to_numpy(pred) - backend.to_numpy(target)) ** 2)
    assert float(values[-1]) == pytest.approx(expected, rel=1e-12)
