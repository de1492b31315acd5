"""Optimizers against direct transcriptions of their published update rules; schedules."""

import math

import numpy as np
import pytest

import devnet as dn
from devnet.optim import schedules

STEPS = 20


def _setup(rng, backend="cpu"):
    model = dn.MLP([3, 4, 2], dtype="float64", backend=backend)
    model.params[...] = rng.standard_normal(model.n_params)
    grads = [rng.standard_normal(model.n_params) for _ in range(STEPS)]
    return model, grads


def _run(opt, model, grads):
    for g in grads:
        model.grads[...] = g
        opt.step()
    return model.backend.to_numpy(model.params)


def _sgd(p, grads, lr, wd=0.0, mu=0.0, nesterov=False):
    buf = np.zeros_like(p)
    for g in grads:
        d = g + wd * p
        if mu == 0:
            p = p - lr * d
            continue
        buf = mu * buf + d  # Sutskever et al. 2013, as in PyTorch
        p = p - lr * (d + mu * buf if nesterov else buf)
    return p


def _rmsprop(p, grads, lr, rho, eps, mu=0.0, centered=False, wd=0.0):
    sq, gavg, mom = (np.zeros_like(p) for _ in range(3))
    for g in grads:
        d = g + wd * p
        sq = rho * sq + (1 - rho) * d**2  # Hinton, lecture 6e
        if centered:  # Graves 2013, eq. 38-40
            gavg = rho * gavg + (1 - rho) * d
            denom = np.sqrt(sq - gavg**2) + eps
        else:
            denom = np.sqrt(sq) + eps
        if mu > 0:
            mom = mu * mom + d / denom
            p = p - lr * mom
        else:
            p = p - lr * d / denom
    return p


def _adam(p, grads, lr, b1, b2, eps, wd=0.0, amsgrad=False, decoupled=False):
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):  # Kingma & Ba 2015, Algorithm 1
        if decoupled:
            p = p * (1 - lr * wd)  # Loshchilov & Hutter 2019
            d = g
        else:
            d = g + wd * p
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        vmax = np.maximum(vmax, v)  # Reddi et al. 2018
        mhat = m / (1 - b1**t)
        vhat = (vmax if amsgrad else v) / (1 - b2**t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


CASES = [
    ("sgd", dict(lr=0.05), lambda p, g: _sgd(p, g, 0.05)),
    ("sgd", dict(lr=0.05, weight_decay=0.1), lambda p, g: _sgd(p, g, 0.05, wd=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9), lambda p, g: _sgd(p, g, 0.05, mu=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
     lambda p, g: _sgd(p, g, 0.05, wd=0.01, mu=0.8, nesterov=True)),
    ("rmsprop", dict(lr=0.01, rho=0.9, eps=1e-7), lambda p, g: _rmsprop(p, g, 0.01, 0.9, 1e-7)),
    ("rmsprop", dict(lr=0.01, rho=0.9, eps=1e-7, momentum=0.5, centered=True, weight_decay=0.1),
     lambda p, g: _rmsprop(p, g, 0.01, 0.9, 1e-7, mu=0.5, centered=True, wd=0.1)),
    ("rmsprop", dict(lr=0.01, rho=0.95, momentum=0.9),
     lambda p, g: _rmsprop(p, g, 0.01, 0.95, 1e-8, mu=0.9)),
    ("adam", dict(lr=0.01), lambda p, g: _adam(p, g, 0.01, 0.9, 0.999, 1e-8)),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True),
     lambda p, g: _adam(p, g, 0.01, 0.8, 0.99, 1e-6, wd=0.1, amsgrad=True)),
    ("adamw", dict(lr=0.01, weight_decay=0.05),
     lambda p, g: _adam(p, g, 0.01, 0.9, 0.999, 1e-8, wd=0.05, decoupled=True)),
    ("adamw", dict(lr=0.01, weight_decay=0.05, amsgrad=True),
     lambda p, g: _adam(p, g, 0.01, 0.9, 0.999, 1e-8, wd=0.05, amsgrad=True, decoupled=True)),
]


@pytest.mark.parametrize("name,kwargs,rule", CASES, ids=[f"{c[0]}-{i}" for i, c in
                                                       enumerate(CASES)])
def test_optimizer_matches_published_rule(name, kwargs, rule, rng, backend):
    model, grads = _setup(rng, backend)
    p0 = model.backend.to_numpy(model.params).copy()
    opt = dn.optim.get(name, model.parameters(), **kwargs)
    got = _run(opt, model, grads)
    np.testing.assert_allclose(got, rule(p0, grads), rtol=1e-10, atol=1e-12)
    assert opt.t == STEPS


def test_optimizer_accepts_the_model(rng):
    model, grads = _setup(rng)
    opt = dn.optim.Adam(model, lr=0.01)
    assert opt.params.data is model.params


def test_clip_norm_scales_the_global_gradient(rng):
    model, grads = _setup(rng)
    p0 = model.params.copy()
    g = grads[0] * 100
    model.grads[...] = g
    dn.optim.SGD(model, lr=0.1, clip_norm=1.0).step()
    np.testing.assert_allclose(model.params, p0 - 0.1 * g / (np.linalg.norm(g) + 1e-6))


def test_state_dict_round_trip_continues_identically(rng):
    model, grads = _setup(rng)
    twin = dn.MLP([3, 4, 2], dtype="float64", backend="cpu")
    twin.params[...] = model.params
    opt = dn.optim.Adam(model, lr=0.01, amsgrad=True)
    _run(opt, model, grads[:10])
    twin.params[...] = model.params
    restored = dn.optim.from_state_dict(twin.parameters(), opt.state_dict())
    assert restored.t == 10 and restored.amsgrad
    _run(opt, model, grads[10:])
    _run(restored, twin, grads[10:])
    np.testing.assert_array_equal(model.params, twin.params)


def test_schedule_drives_the_learning_rate(rng):
    model, _ = _setup(rng)
    opt = dn.optim.SGD(model, lr=schedules.step(0.1, step_size=2, gamma=0.5))
    seen = []
    for _ in range(5):
        seen.append(opt.lr)
        model.grads[...] = 0.0
        opt.step()
    assert seen == [0.1, 0.1, 0.05, 0.05, 0.025]


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="adagrad"), "valid optimizers: adam, adamw, rmsprop, sgd"),
    (dict(name="sgd", lr=0), r"lr must be a number in \(0"),
    (dict(name="sgd", lr=-1e-3), r"lr must be a number in \(0"),
    (dict(name="sgd", lr="fast"), r"lr must be a number"),
    (dict(name="sgd", lr=float("nan")), r"lr must be a number"),
    (dict(name="sgd", momentum=1.0), r"momentum must be a number in \[0.0, 1.0\)"),
    (dict(name="sgd", nesterov=True), "nesterov=True needs momentum > 0"),
    (dict(name="adam", betas=(0.9,)), "betas must be a pair"),
    (dict(name="adam", betas=(0.9, 1.0)), "beta2 must be"),
    (dict(name="adam", eps=0), "eps must be"),
    (dict(name="rmsprop", rho=-0.1), "rho must be"),
    (dict(name="adam", weight_decay=-1), "weight_decay must be"),
    (dict(name="adam", clip_norm=0), "clip_norm must be"),
    (dict(name="adam", foo=1), "bad arguments for optimizer 'adam'"),
])
def test_bad_optimizer_arguments(kwargs, match):
    model = dn.MLP([2, 2], backend="cpu")
    kwargs = dict(kwargs)
    with pytest.raises(dn.ConfigError, match=match):
        dn.optim.get(kwargs.pop("name"), model.parameters(), **kwargs)


# --- schedules against their formulas -----------------------------------------------------

@pytest.mark.parametrize("sched,formula", [
    (schedules.constant(0.3), lambda t: 0.3),
    (schedules.step(0.1, step_size=7, gamma=0.3), lambda t: 0.1 * 0.3 ** (t // 7)),
    (schedules.exponential(0.2, gamma=0.97), lambda t: 0.2 * 0.97**t),
    (schedules.cosine(0.1, total_steps=40, min_lr=0.01),
     lambda t: 0.01 + 0.045 * (1 + math.cos(math.pi * min(t, 40) / 40))),
    (schedules.warmup(schedules.exponential(0.2, 0.9), warmup_steps=5),
     lambda t: 0.2 * (t + 1) / 5 if t < 5 else 0.2 * 0.9 ** (t - 5)),
    (schedules.warmup(schedules.step(0.1, 3), warmup_steps=4, start_factor=0.5),
     lambda t: 0.1 * (0.5 + 0.5 * (t + 1) / 4) if t < 4 else 0.1 * 0.1 ** ((t - 4) // 3)),
    (schedules.warmup_cosine(0.1, warmup_steps=10, total_steps=50),
     lambda t: 0.1 * (t + 1) / 10 if t < 10 else
     0.05 * (1 + math.cos(math.pi * min(t - 10, 40) / 40))),
])
def test_schedule_matches_formula(sched, formula):
    for t in range(60):
        assert sched(t) == pytest.approx(formula(t), rel=1e-12, abs=1e-15)
    assert schedules.from_config(sched.config())(17) == sched(17)


@pytest.mark.parametrize("make,match", [
    (lambda: schedules.step(0.1, step_size=0), "step_size must be"),
    (lambda: schedules.cosine(-0.1, 10), "lr must be"),
    (lambda: schedules.warmup(0.1, 5), "warmup wraps a Schedule"),
    (lambda: schedules.from_config({"name": "onecycle"}), "valid schedules: constant, cosine"),
])
def test_bad_schedules(make, match):
    with pytest.raises(dn.ConfigError, match=match):
        make()


def test_schedule_growing_past_float_range_is_a_clear_error_not_overflow(rng):
    model = dn.MLP([3, 4, 2], dtype="float64", backend="cpu", seed=0)
    grow = schedules.exponential(1e-3, 10.0)  # 1e-3 * 10**t: past float range at t = 312
    opt = dn.optim.SGD(model, lr=grow)
    opt.t = 400
    with pytest.raises(dn.ConfigError, match=r"for step 400 the schedule Exponential.*"
                                             r"OverflowError.*grows"):
        _ = opt.lr
    opt.t = 2
    assert opt.lr == pytest.approx(0.1)
    # fit reads opt.lr at each epoch start: the run stops with the same error, naming it
    X, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    model = dn.MLP([3, 4, 2], dtype="float64", backend="cpu", seed=0)
    fast = schedules.exponential(1e-300, 1e100)  # finite for steps 0..5, then past range
    with pytest.raises(dn.ConfigError, match="schedule Exponential"):
        dn.fit(model, X, y, loss="mse", optimizer="sgd", lr=fast, epochs=9, batch_size=8,
               guard=False, progress=False)


def test_optimizer_surface_follows_its_hyper_declarations(rng):
    import inspect

    from devnet.optim.optimizers import Hyper

    model = dn.MLP([3, 4, 2], dtype="float64", backend="cpu")
    for cls in dn.optim.OPTIMIZERS.values():
        names = [h.name for h in cls.hypers]
        assert all(isinstance(h, Hyper) for h in cls.hypers)
        assert list(inspect.signature(cls).parameters) == ["params", "lr", *names]
        values = {h.name: h.default for h in cls.hypers}
        opt = cls(model, lr=float(rng.uniform(0.01, 0.1)))
        hyper = opt.hyperparameters()
        assert list(hyper) == names
        assert {k: tuple(v) if isinstance(v, list) else v for k, v in hyper.items()} == values
        assert opt.state_dict()["hyperparameters"] == hyper
        assert all(f"{k}={v!r}" in repr(opt) for k, v in hyper.items())


def test_an_optimizer_class_that_does_not_cover_its_kernel_row_is_refused():
    from devnet.optim.optimizers import CLIP_NORM, WEIGHT_DECAY, Optimizer

    class Partial(Optimizer):  # RMSProp's kernel without rho, eps, momentum, centered
        name, kernel, lr_default = "partial", "rmsprop_step", 0.01
        hypers = (WEIGHT_DECAY, CLIP_NORM)
        buffers = {"sq": "square_avg"}

    model = dn.MLP([3, 4, 2], dtype="float64", backend="cpu")
    with pytest.raises(TypeError, match=r"Partial declares nothing for \['rho', 'mu', 'eps'"):
        Partial(model)


@pytest.mark.parametrize("value", [10**400, -(10**400)])
def test_an_int_past_floats_range_is_a_config_error_not_an_overflow(value):
    model = dn.MLP([3, 4, 2], seed=0, backend="cpu")
    with pytest.raises(dn.ConfigError, match=r"lr must be a number in \(0\.0, inf\), got"):
        dn.optim.Adam(model.parameters(), lr=value)
