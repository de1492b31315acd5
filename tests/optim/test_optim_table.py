"""The optimizer's table of per-step scalars (lr, Adam's bias corrections): built a column at a
time, value for value the table built a step at a time through ``_step_scalars`` with each value
checked; sized to the steps ``expect_steps`` plans (fit's remaining steps), which changes no
result."""

from __future__ import annotations

import numpy as np
import pytest
from devnet.kernels import table

import devnet as dn
from devnet.errors import ConfigError
from devnet.optim import optimizers, schedules

OPTIMIZERS = {
    "sgd": (dn.optim.SGD, {}),
    "momentum": (dn.optim.SGD, dict(momentum=0.9)),
    "rmsprop": (dn.optim.RMSProp, dict(momentum=0.5, centered=True)),
    "adam": (dn.optim.Adam, {}),
    "adamw": (dn.optim.AdamW, dict(amsgrad=True)),
}


def _rates(rng):
    """A constant lr, and each named schedule with random settings."""
    lr = float(rng.uniform(1e-4, 0.1))
    total = int(rng.integers(50, 5000))
    return [lr, *(schedules.build(name, lr, total) for name in schedules.NAMED)]


def _optimizer(name, lr, rng, model=None):
    cls, kwargs = OPTIMIZERS[name]
    if issubclass(cls, dn.optim.Adam) and "betas" not in kwargs and rng.random() < 0.5:
        kwargs = dict(kwargs, betas=(float(rng.uniform(0.5, 0.95)),
                                     float(rng.uniform(0.9, 0.9999))))
    model = model or dn.MLP([3, 4, 2], backend="cpu", seed=0)
    return cls(model.parameters(), lr=lr, **kwargs)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_table_built_by_columns_is_the_table_built_step_by_step(name, rng):
    for lr in _rates(rng):
        opt = _optimizer(name, lr, rng)
        for t0 in (0, int(rng.integers(1, 3000)), int(rng.integers(10**5, 10**7))):
            rows = int(rng.integers(1, 1200))
            by_columns = opt._table_columns(t0, rows)
            assert by_columns is not None, (lr, t0)  # every value a finite float
            by_steps = opt._table_checked(t0, rows)
            assert by_columns.shape == by_steps.shape == (rows, len(opt._columns))
            np.testing.assert_array_equal(by_columns, by_steps)
            np.testing.assert_array_equal(opt._table_rows(t0, rows), by_steps)


class _Gives(schedules.Schedule):
    """A schedule whose step ``bad`` on gives ``value`` (or raises it, an exception)."""

    def __init__(self, lr, bad, value):
        self.lr, self.bad, self.value = lr, bad, value

    def __call__(self, step):
        if step < self.bad:
            return self.lr
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1e-3, True, "0.1", 3,
                                   np.float32(0.01), OverflowError("too far"), None])
def test_a_schedule_value_the_columns_do_not_take_goes_step_by_step(value, rng):
    """Ints, bools, strings, NumPy float32, NaN, Inf, negative rates and errors fall back to the
    checked build: the same table (ending before the first unusable step) or the same error."""
    bad = int(rng.integers(1, 40))
    opt = _optimizer("adam", _Gives(0.01, bad, value), rng)
    usable = isinstance(value, (int, np.floating)) and not isinstance(value, bool) and \
        np.isfinite(value) and value >= 0
    assert opt._table_columns(0, 50) is None
    table = opt._table_rows(0, 50)
    np.testing.assert_array_equal(table, opt._table_checked(0, 50))
    assert len(table) == (50 if usable else bad)
    if not usable:
        with pytest.raises(ConfigError, match=f"for step {bad} the schedule"):
            opt._table_rows(bad, 10)


def test_a_subclass_overriding_only_the_step_scalars_gets_its_own_table(rng):
    class Doubled(dn.optim.Adam):
        def _step_scalars(self, t):
            return (2 * self._lr_at(t), 1.0, 1.0)

    model = dn.MLP([3, 4, 2], backend="cpu", seed=0)
    opt = Doubled(model.parameters(), lr=schedules.cosine(0.01, 100))
    assert not optimizers._columnwise(Doubled) and optimizers._columnwise(dn.optim.Adam)
    table = opt._table_rows(5, 20)
    np.testing.assert_array_equal(table[:, 0], [2 * opt.schedule(t - 1) for t in range(6, 26)])
    np.testing.assert_array_equal(table[:, 1:], 1.0)


class _Counting(schedules.Schedule):
    """A cosine schedule that counts its calls."""

    def __init__(self, total):
        self.inner, self.calls = schedules.cosine(0.01, total), 0

    def __call__(self, step):
        self.calls += 1
        return self.inner(step)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_expect_steps_sizes_the_table_and_changes_no_step(name, rng):
    planned = int(rng.integers(1, 60))
    steps = planned + int(rng.integers(1, 3 * optimizers.TABLE_ROWS))
    sizes = [3, 4, 2]
    pairs = []
    for hint in (None, planned):
        model = dn.MLP(sizes, backend="cpu", seed=0)
        sched = _Counting(steps)
        opt = _optimizer(name, sched, np.random.default_rng(0), model)
        opt.expect_steps(hint)
        pairs.append((model, opt, sched))
    (m0, o0, s0), (m1, o1, s1) = pairs
    for k in range(steps):
        g = rng.standard_normal(m0.n_params).astype(np.float32)
        m0.grads[...] = g
        m1.grads[...] = g
        o0.step()
        o1.step()
        if k == 0:  # only the planned rows were computed, in a table of the usual shape
            assert s1.calls == planned and s0.calls == optimizers.TABLE_ROWS
            assert o1._refill_at == planned and o1._table.shape == o0._table.shape
    np.testing.assert_array_equal(m0.params, m1.params)
    for key in o0.state:
        np.testing.assert_array_equal(o0.state[key], o1.state[key])
    # the device scalars alike but the row the table started at (refilled at other steps)
    kept = np.arange(len(o0.hyper)) != table.HYPER_T0
    np.testing.assert_array_equal(o0.hyper[kept], o1.hyper[kept])
    assert o0.t == o1.t == steps


def test_fit_computes_the_rows_of_its_own_steps_only(rng):
    n, bs, epochs = int(rng.integers(20, 60)), int(rng.integers(2, 6)), int(rng.integers(1, 4))
    steps = epochs * -(-n // bs)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    y = rng.normal(size=(n, 2)).astype(np.float32)
    sched = _Counting(steps)
    model = dn.MLP([3, 4, 2], backend="cpu", seed=0)
    dn.fit(model, X, y, optimizer="adam", lr=sched, epochs=epochs, batch_size=bs,
           progress=False)
    # the table's rows, and the lr fit logs per epoch; not a table of TABLE_ROWS steps
    assert steps <= sched.calls <= steps + epochs + 2 < optimizers.TABLE_ROWS
    with pytest.raises(ConfigError, match="count"):
        dn.optim.Adam(model.parameters()).expect_steps(-1)
