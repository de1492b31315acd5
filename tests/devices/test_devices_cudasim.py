"""The CUDA path on Numba's CUDA simulator and the CuPy stand-in matches the CPU.

What a GPU user does: arrays on the other GPU, host arrays mixed into kernel calls,
both feeds forced, every optimizer with clip_norm, dropout, LayerNorm/residual, checkpoints
across devices, profile and the estimators; the CPU is the oracle (float64: ~1e-10 relative).

    DEVNET_CUDA_SIMULATOR=1 python -m pytest -q -m cudasim tests/devices/test_devices_cudasim.py

The simulator runs each GPU thread in Python: the data are tiny and each fit is a few steps.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.cudasim  # conftest skips it outside a DEVNET_CUDA_SIMULATOR=1 process

import devnet as dn  # noqa: E402
from devnet.train import feed as feed_mod  # noqa: E402

F64 = dict(rtol=1e-10, atol=1e-12)  # the same float64 arithmetic, sums in another order


@pytest.fixture(scope="module")
def gpus():
    return dn.get_backend("cuda:0"), dn.get_backend("cuda:1")


@pytest.fixture
def data(rng):
    X = rng.standard_normal((11, 4))
    return X, rng.integers(0, 3, 11), rng.random(11) + 0.1


def _params(model):
    return np.concatenate([model.backend.to_numpy(p.data).ravel() for p in model.parameters()])


def _fit_both(make, X, y, **kw):
    """The same model, seed and data fitted on "cpu" and "cuda": (cpu model, cuda model)."""
    kw = {"loss": "cross_entropy", "progress": False, "train_metrics": False, **kw}
    models = []
    for dev in ("cpu", "cuda"):
        model = make(dev)
        hist = dn.fit(model, X, y, **kw)
        models.append((model, hist.history["loss"]))
    (cpu, cpu_loss), (gpu, gpu_loss) = models
    np.testing.assert_allclose(gpu_loss, cpu_loss, **F64)
    np.testing.assert_allclose(_params(gpu), _params(cpu), **F64)
    return cpu, gpu


# --- an array on another GPU is copied to the model's GPU first ----------------------------

def test_forward_with_x_on_another_gpu_copies_it_to_the_models(gpus, rng):
    """cupy.asarray returns an array of another GPU unchanged: the model's kernels then read
    cuda:1 memory from cuda:0 (the stand-in, like CuPy without peer access, raised ValueError
    from inside the matmul). The backend now copies it onto its own device."""
    g0, g1 = gpus
    X = rng.standard_normal((6, 4))
    dY = rng.standard_normal((6, 3))
    gpu = dn.MLP([4, 5, 3], backend="cuda:0", dtype="float64", seed=1)
    cpu = dn.MLP([4, 5, 3], backend="cpu", dtype="float64", seed=1)
    X1 = g1.asarray(X)
    assert not g0.is_array(X1) and g1.is_array(X1)
    assert g0.asarray(X1).data.device_id == 0 and X1.data.device_id == 1
    np.testing.assert_allclose(g0.to_numpy(gpu.forward(X1)), cpu.forward(X), **F64)
    np.testing.assert_allclose(g0.to_numpy(gpu.backward(g1.asarray(dY))), cpu.backward(dY),
                               **F64)
    np.testing.assert_allclose(gpu.predict(X1), cpu.predict(X), **F64)


def test_forward_with_x_on_another_gpu_in_a_float32_model(gpus, rng):
    g0, g1 = gpus
    X = rng.standard_normal((5, 4)).astype(np.float32)
    gpu = dn.MLP([4, 3], backend="cuda:0", seed=2)
    cpu = dn.MLP([4, 3], backend="cpu", seed=2)
    out = gpu.forward(g1.asarray(X, dtype=np.float64))  # cast and copied over
    assert out.data.device_id == 0
    np.testing.assert_allclose(g0.to_numpy(out), cpu.forward(X), rtol=1e-5, atol=1e-6)


# --- a host array among device arrays is refused by name, before the launch ------------------

def test_kernel_refuses_a_host_array_among_device_arrays(gpus, rng):
    """``a.data.device_id`` of a NumPy array (a memoryview): AttributeError from the launch."""
    g0, _ = gpus
    A = g0.asarray(rng.standard_normal((4, 3)))
    with pytest.raises(dn.DataError, match="argument 'b' is a host NumPy array, the first "
                                           "array is on the GPU"):
        g0.kernels.bias_act_fwd("relu", A, rng.standard_normal(3))


def test_kernel_refuses_a_device_array_among_host_arrays(gpus, rng):
    """The simulator's NumPy mode (kernel tests) read a stand-in array as a host one."""
    g0, _ = gpus
    b = g0.asarray(rng.standard_normal(3))
    with pytest.raises(dn.DataError, match="argument 'b' is a device array, the first array "
                                           "is a host NumPy array"):
        g0.kernels.bias_act_fwd("relu", rng.standard_normal((4, 3)), b)


# --- CPU/GPU parity: feeds, shapes, optimizers, deep models --------------------------------------

@pytest.mark.parametrize("fraction, kind", [(0.0, feed_mod.HostFeed),
                                            (1.0, feed_mod.DeviceFeed)])
def test_both_feeds_match_the_cpu(monkeypatch, data, fraction, kind):
    """Host-staged (pinned, double-buffered) and device-resident feeds, forced by the free
    memory rule; a batch size that does not divide n, shuffling, sample weights, dropout."""
    X, y, w = data
    made = []
    real = feed_mod.make_feed

    def spy(backend, *args, **kw):
        made.append(feed := real(backend, *args, **kw))
        return feed

    monkeypatch.setattr(feed_mod, "RESIDENT_FRACTION", fraction)
    monkeypatch.setattr("devnet.train.loop.make_feed", spy)
    _fit_both(lambda dev: dn.MLP([4, 6, 3], backend=dev, dtype="float64", seed=3,
                                 dropout=0.25), X, y, epochs=2, batch_size=4,
              sample_weight=w, seed=5)
    assert type(made[1]) is kind


@pytest.mark.parametrize("make_opt", [
    lambda p: dn.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1,
                           clip_norm=0.01),
    lambda p: dn.optim.RMSProp(p, lr=0.01, momentum=0.5, centered=True, clip_norm=0.1),
    lambda p: dn.optim.Adam(p, lr=0.02, amsgrad=True, clip_norm=0.05),
    lambda p: dn.optim.AdamW(p, lr=0.02, clip_norm=1e-4),
], ids=["sgd-nesterov", "rmsprop-centered", "adam-amsgrad", "adamw"])
def test_every_optimizer_with_clip_norm_matches_the_cpu(data, make_opt):
    X, y = data[0][:8], data[1][:8]  # two steps: the moments and the clip carry over
    losses, params = [], []
    for dev in ("cpu", "cuda"):
        model = dn.MLP([4, 5, 3], backend=dev, dtype="float64", seed=4)
        hist = dn.fit(model, X, y, loss="cross_entropy", optimizer=make_opt(model.parameters()),
                      epochs=1, batch_size=4, progress=False, train_metrics=False)
        losses.append(hist.history["loss"])
        params.append(_params(model))
    np.testing.assert_allclose(losses[1], losses[0], **F64)
    np.testing.assert_allclose(params[1], params[0], **F64)


def test_residual_layernorm_dropout_matches_the_cpu(data):
    X, y = data[0][:8], data[1][:8]
    cpu, gpu = _fit_both(lambda dev: dn.MLP([4, 5, 5, 3], backend=dev, dtype="float64", seed=6,
                                            block="residual", norm="layernorm", dropout=0.2),
                         X, y, epochs=1, batch_size=5)
    np.testing.assert_allclose(gpu.predict(X), cpu.predict(X), **F64)


def test_one_batch_larger_than_the_data_and_regression(rng):
    X, Y = rng.standard_normal((7, 3)), rng.standard_normal((7, 2))
    cpu, gpu = _fit_both(lambda dev: dn.MLP([3, 4, 2], activation="tanh", backend=dev,
                                            dtype="float64", seed=7),
                         X, Y, loss="huber", epochs=2, batch_size=100)
    assert dn.evaluate(gpu, X, Y, loss="huber") == pytest.approx(
        dn.evaluate(cpu, X, Y, loss="huber"), rel=1e-10)


def test_device_labels_of_every_integer_dtype_match_the_cpu(gpus, rng):
    g0, _ = gpus
    loss = dn.losses.get("cross_entropy")
    logits, labels = rng.standard_normal((6, 3)), rng.integers(0, 3, 6)
    expected, grad = loss(logits, labels)
    for dtype in (np.int16, np.int32, np.int64, np.uint8, np.uint32):
        value, dev_grad = loss(g0.asarray(logits), g0.asarray(labels.astype(dtype)))
        assert value == pytest.approx(expected, rel=1e-12)
        np.testing.assert_allclose(g0.to_numpy(dev_grad), grad, **F64)


def test_empty_batch_forward_and_backward_match_the_cpu(gpus):
    g0, _ = gpus
    outs = []
    for dev in ("cpu", "cuda"):
        model = dn.MLP([3, 4, 2], backend=dev, dtype="float64", seed=0)
        be = model.backend
        out = model.forward(be.asarray(np.empty((0, 3))))
        dX = model.backward(be.asarray(np.empty((0, 2))))
        outs.append((out.shape, dX.shape, be.to_numpy(model.grads).copy()))
    assert outs[0][:2] == outs[1][:2] == ((0, 2), (0, 3))
    np.testing.assert_array_equal(outs[1][2], outs[0][2])  # zero gradients, not garbage


def test_profile_trains_as_the_cpu_does(rng):
    X, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    params = []
    for dev in ("cpu", "cuda"):
        model = dn.MLP([4, 5, 3], backend=dev, dtype="float64", seed=8)
        dn.profile(model, X, y, repeats=1, warmup=1,
                   ceilings={"copy_gbs": 1.0, "gemm_gflops": 1.0})
        params.append(_params(model))
    np.testing.assert_allclose(params[1], params[0], **F64)


def test_resume_across_devices_matches_an_uninterrupted_cpu_run(tmp_path, data):
    X, y, _ = data
    kw = dict(loss="cross_entropy", optimizer="adam", batch_size=4, progress=False, seed=1,
              train_metrics=False)
    straight = dn.MLP([4, 5, 3], backend="cpu", dtype="float64", seed=0)
    dn.fit(straight, X, y, epochs=2, **kw)
    for first, second in (("cuda", "cpu"), ("cpu", "cuda")):
        ck = tmp_path / f"{first}.safetensors"
        dn.fit(dn.MLP([4, 5, 3], backend=first, dtype="float64", seed=0), X, y, epochs=1,
               checkpoint=ck, **kw)
        resumed = dn.MLP([4, 5, 3], backend=second, dtype="float64", seed=0)
        dn.fit(resumed, X, y, epochs=2, resume_from=ck, **kw)
        np.testing.assert_allclose(_params(resumed), _params(straight), **F64)


def test_model_to_the_other_gpu_and_back_keeps_training_like_the_cpu(data):
    X, y, _ = data
    kw = dict(loss="cross_entropy", epochs=1, batch_size=4, progress=False,
              train_metrics=False)
    gpu = dn.MLP([4, 5, 3], backend="cuda", dtype="float64", seed=9)
    cpu = dn.MLP([4, 5, 3], backend="cpu", dtype="float64", seed=9)
    dn.fit(gpu, X, y, **kw)
    gpu.to("cuda:1")
    assert all(p.data.data.device_id == 1 for p in gpu.parameters())
    dn.fit(gpu, X, y, **kw)
    gpu.to("cpu").to("cuda:0")
    for _ in range(2):
        dn.fit(cpu, X, y, **kw)
    np.testing.assert_allclose(_params(gpu), _params(cpu), **F64)


def test_a_device_that_does_not_exist_is_named(monkeypatch):
    monkeypatch.setenv("DEVNET_DEVICE", "cuda:7")
    from devnet import backend as backend_mod

    monkeypatch.setattr(backend_mod, "_cache", {})
    with pytest.raises(dn.DeviceUnavailableError, match=r"no CUDA device 7: this machine has "
                                                        r"2 \(cuda:0 .. cuda:1\)"):
        dn.MLP([2, 2], backend="auto")
    model = dn.MLP([2, 2], backend="cuda:0")
    with pytest.raises(dn.DeviceUnavailableError, match="no CUDA device 7"):
        model.to("cuda:7")
    assert model.backend.device == "cuda:0"  # unchanged, still usable
    assert model.predict(np.ones((1, 2), np.float32)).shape == (1, 2)


def test_sklearn_estimators_on_cuda_match_the_cpu(rng):
    from devnet.sklearn import MLPClassifier, MLPRegressor

    X = rng.standard_normal((8, 3))
    for cls, y in ((MLPClassifier, rng.integers(0, 2, 8)), (MLPRegressor, X[:, 0] - X[:, 1])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: one epoch on purpose
            fitted = [cls(hidden_layer_sizes=(4,), max_iter=1, batch_size=5, device=dev,
                          random_state=0).fit(X, y) for dev in ("cpu", "cuda")]
        for a, b in zip(fitted[1].coefs_, fitted[0].coefs_):
            np.testing.assert_allclose(a, b, **F64)
        np.testing.assert_allclose(fitted[1].predict(X), fitted[0].predict(X), **F64)


# --- a write or a loss outside the array's device ----------------------------------------------
# Each was ``dst[...] = src`` (or an xp call) on cuda:1 arrays while cuda:0 is current: CuPy
# launches the copy on the current device, so it raised ValueError (no peer access) or read
# across devices with a PerformanceWarning. Writes now go through ``Backend.assign`` (in the
# backend's scope), and a loss's unchecked door moves target / weights to pred's device.


def test_load_onto_the_second_gpu(tmp_path, rng):
    model = dn.MLP([3, 2], backend="cpu", seed=0)
    dn.save(model, tmp_path / "m.safetensors")
    back, _ = dn.load(tmp_path / "m.safetensors", backend="cuda:1")
    np.testing.assert_array_equal(_params(back), _params(model))


def test_optimizer_state_loads_on_the_second_gpu():
    model = dn.MLP([3, 2], backend="cuda:1", seed=0)
    opt = dn.optim.Adam(model.parameters())
    opt.load_state_dict(opt.state_dict())


def test_sklearn_estimator_on_the_second_gpu(rng):
    from devnet.sklearn import MLPClassifier

    X, y = rng.standard_normal((8, 3)), rng.integers(0, 2, 8)
    MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, batch_size=8, device="cuda:1",
                  random_state=0).fit(X, y)


def test_loss_with_labels_on_another_gpu(gpus, rng):
    g0, g1 = gpus
    logits, labels = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    loss = dn.losses.get("cross_entropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, _ = loss(g0.asarray(logits), g1.asarray(labels))
    assert value == pytest.approx(loss(logits, labels)[0], rel=1e-12)


def test_resume_and_early_stopping_restore_on_the_second_gpu(tmp_path, data):
    # resume's parameter copy and EarlyStopping's restore at on_train_end (outside fit's scope)
    # wrote cuda:1 buffers while cuda:0 was current
    X, y, _ = data
    ck = str(tmp_path / "ck.safetensors")
    kw = dict(loss="cross_entropy", batch_size=6, progress=False, seed=1)
    first = dn.MLP([4, 5, 3], backend="cuda:1", dtype="float64", seed=2)
    dn.fit(first, X, y, epochs=1, checkpoint=ck, **kw)
    resumed = dn.MLP([4, 5, 3], backend="cuda:1", dtype="float64", seed=2)
    dn.fit(resumed, X, y, epochs=2, resume_from=ck, **kw)
    dn.fit(first, X, y, epochs=2, resume_from=ck, **kw)
    np.testing.assert_array_equal(_params(resumed), _params(first))
    stop = dn.EarlyStopping(monitor="loss", patience=0, restore_best=True)
    model = dn.MLP([4, 5, 3], backend="cuda:1", dtype="float64", seed=3)
    dn.fit(model, X, y, epochs=3, lr=50.0, callbacks=[stop], guard=False, **kw)
    assert np.isfinite(_params(model)).all()
