"""Stopping fit: ``trainer.stop_training`` read at epoch ends and between steps, on the
Python step and between the compiled epoch's blocks (kept short), the unfinished epoch left
out of the History."""

from __future__ import annotations

import numpy as np
import pytest

import devnet as dn
from devnet.train import compiled, engine, loop

pytestmark = pytest.mark.skipif(compiled.unavailable(dn.get_backend("cpu")) is not None,
                                reason=str(compiled.unavailable(dn.get_backend("cpu"))))


def equal(a, b) -> bool:
    """Bit for bit where the compiled products are NumPy's (``products_agree``), else within
    float32 rounding."""
    if compiled.products_agree():
        return np.array_equal(a, b)
    return np.allclose(a, b, rtol=1e-4, atol=1e-6)


def data(rng, n, d=5, k=3):
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = np.argmax(X[:, :k] + 0.3 * rng.normal(size=(n, k)), axis=1).astype(np.int64)
    return X, y


class Events(dn.Callback):
    """Records the hooks fit calls; sets stop_training after ``stop_after`` steps, from
    on_batch_end (``per_batch``) or from outside the callback API (``stop()``)."""

    def __init__(self):
        self.events = []

    def on_train_begin(self, logs):
        self.events.append("begin")

    def on_epoch_end(self, epoch, logs):
        self.events.append(("epoch_end", epoch))

    def on_train_end(self, logs):
        self.events.append("end")

    def stop(self):
        self.trainer.stop_training = True


def blocks_of(monkeypatch, after=None):
    """Record the compiled blocks (first, count) fit runs; ``after(first, count)`` runs after
    each."""
    run, seen = engine.CompiledEpoch.run, []

    def recorded(self, order, first, count, index=0):
        run(self, order, first, count, index)
        seen.append((first, count))
        if after is not None:
            after(first, count)

    monkeypatch.setattr(engine.CompiledEpoch, "run", recorded)
    return seen


def test_stop_mid_epoch_on_the_compiled_engine_ends_at_the_block_as_the_python_step(
        rng, monkeypatch, tmp_path):
    n, bs = int(rng.integers(40, 80)), int(rng.integers(3, 7))
    per_epoch = -(-n // bs)
    X, y = data(rng, n)
    seed = int(rng.integers(1 << 30))
    most = int(rng.integers(2, 5))
    monkeypatch.setattr(loop, "BLOCK_STEPS", most)
    k = int(rng.integers(1, (per_epoch - 1) // most + 1))  # blocks run in epoch 1, then stop
    stop_at = per_epoch + k * most  # the step count when the stop is asked for

    co = Events()
    blocks = blocks_of(monkeypatch, lambda first, count: co.stop() if first + count == k * most
                       and co.trainer.epoch == 1 else None)
    m_co = dn.MLP([5, 8, 3], seed=seed, backend="cpu")
    h_co = dn.fit(m_co, X, y, epochs=4, batch_size=bs, seed=seed, progress=False,
                  callbacks=[co], checkpoint=tmp_path / "co.safetensors")
    assert h_co.params["engine"] == "compiled"
    assert all(count <= most for _, count in blocks)
    # epoch 0 whole, then k blocks of epoch 1: none ran after the stop
    assert sum(count for _, count in blocks) == stop_at == co.trainer.step

    class PerBatch(Events):
        def on_batch_end(self, step, logs):
            if step == stop_at:
                self.stop()

    py = PerBatch()
    m_py = dn.MLP([5, 8, 3], seed=seed, backend="cpu")
    h_py = dn.fit(m_py, X, y, epochs=4, batch_size=bs, seed=seed, progress=False,
                  callbacks=[py], checkpoint=tmp_path / "py.safetensors")
    assert h_py.params["engine"] == "python"
    assert "PerBatch runs on_batch_end" in h_py.params["engine_reason"]
    for tr, hist in ((co.trainer, h_co), (py.trainer, h_py)):
        # the unfinished epoch: not recorded, no on_epoch_end, not the resume point
        assert hist.epoch == [0] and len(hist["loss"]) == 1
        assert (tr.epoch, tr.epochs_done, tr.step, tr.optimizer.t) == (1, 1, stop_at, stop_at)
    assert co.events == py.events == ["begin", ("epoch_end", 0), "end"]
    assert equal(m_co.params, m_py.params)  # the steps of epoch 1 before the stop were taken
    assert h_co["loss"] == pytest.approx(h_py["loss"], rel=1e-5)
    for name in ("co", "py"):  # the checkpoint holds the last finished epoch
        meta = dn.io.read_metadata(tmp_path / f"{name}.safetensors")
        assert meta["train_state"]["epoch"] == 1
        assert meta["train_state"]["step"] == per_epoch


@pytest.mark.parametrize("engine_name", ["compiled", "python"])
def test_stop_set_at_an_epoch_start_runs_none_of_its_steps(rng, engine_name):
    X, y = data(rng, int(rng.integers(30, 60)))
    bs = int(rng.integers(3, 9))
    stop_epoch = int(rng.integers(1, 4))

    class StopAtStart(Events):
        def on_epoch_begin(self, epoch, logs):
            if epoch == stop_epoch:
                self.stop()

    cb = StopAtStart()
    model = dn.MLP([5, 8, 3], seed=int(rng.integers(1 << 30)), backend="cpu")
    hist = dn.fit(model, X, y, epochs=5, batch_size=bs, progress=False, callbacks=[cb],
                  engine=engine_name)
    assert hist.params["engine"] == engine_name
    assert hist.epoch == list(range(stop_epoch))
    assert cb.trainer.step == cb.trainer.optimizer.t == stop_epoch * -(-len(X) // bs)
    assert cb.events[-2:] == [("epoch_end", stop_epoch - 1), "end"]


def test_stop_at_an_epoch_end_keeps_that_epoch(rng):
    X, y = data(rng, 40)

    class StopAtEnd(Events):
        def on_epoch_end(self, epoch, logs):
            super().on_epoch_end(epoch, logs)
            if epoch == 1:
                self.stop()

    cb = StopAtEnd()
    hist = dn.fit(dn.MLP([5, 8, 3], backend="cpu"), X, y, epochs=5, batch_size=8,
                  progress=False, callbacks=[cb])
    assert hist.params["engine"] == "compiled"
    assert hist.epoch == [0, 1] and cb.trainer.epochs_done == 2
    assert cb.events == ["begin", ("epoch_end", 0), ("epoch_end", 1), "end"]


def test_compiled_blocks_are_bounded_and_change_nothing(rng, monkeypatch):
    """An epoch longer than a block runs as several (each within BLOCK_STEPS steps and
    BLOCK_WORK rows x parameters, one step at least), with the results of one long block."""
    n, bs = int(rng.integers(60, 120)), int(rng.integers(2, 5))
    X, y = data(rng, n)
    seed = int(rng.integers(1 << 30))
    model = dn.MLP([5, 8, 3], seed=seed, backend="cpu")
    size = model.params.size
    out = []
    for work in (1 << 40, int(rng.integers(1, 4)) * bs * size + int(rng.integers(bs * size))):
        monkeypatch.setattr(loop, "BLOCK_WORK", work)
        with monkeypatch.context() as patch:
            blocks = blocks_of(patch)
            m = dn.MLP([5, 8, 3], seed=seed, backend="cpu")
            hist = dn.fit(m, X, y, epochs=2, batch_size=bs, seed=seed, progress=False)
        out.append((m.params.copy(), hist["loss"], blocks))
    (p_one, loss_one, one), (p_many, loss_many, many) = out
    per_epoch = -(-n // bs)
    assert [c for _, c in one] == [per_epoch, per_epoch]  # a whole epoch per block
    most = loop.block_steps(model, bs)
    assert max(c for _, c in many) == most < per_epoch
    assert sum(c for _, c in many) == 2 * per_epoch
    assert most * bs * size <= loop.BLOCK_WORK < (most + 1) * bs * size
    assert equal(p_one, p_many) and loss_one == loss_many


def test_block_steps_bound_steps_and_work(rng):
    for _ in range(20):
        sizes = [int(v) for v in rng.integers(1, 600, size=int(rng.integers(2, 5)))]
        model = dn.MLP(sizes, backend="cpu", dtype="float32")
        bs = int(rng.integers(1, 5000))
        most = loop.block_steps(model, bs)
        assert 1 <= most <= loop.BLOCK_STEPS
        assert most == 1 or most * bs * model.params.size <= loop.BLOCK_WORK


def test_a_non_finite_state_at_a_mid_epoch_stop_is_caught_by_the_guard(rng):
    X, y = data(rng, 48)

    class PoisonThenStop(Events):
        def on_batch_end(self, step, logs):
            if step == 8:  # epoch 1's 2nd step
                self.trainer.model.layers[1].W[0, 0] = np.nan
                self.stop()

    model = dn.MLP([5, 8, 3], backend="cpu", seed=int(rng.integers(1 << 30)))
    with pytest.raises(dn.DivergenceError) as info:
        dn.fit(model, X, y, epochs=3, batch_size=8, progress=False,
               callbacks=[PoisonThenStop()])
    assert info.value.epoch == 1
    assert np.isfinite(model.params).all()  # back to the last finite state
