"""EarlyStopping, ModelCheckpoint, LearningRateScheduler and CSVLogger."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import devnet as dn
from devnet import callbacks


def _data(rng, n=40):
    X = rng.standard_normal((n, 4)).astype(np.float32)
    y = rng.standard_normal((n, 1)).astype(np.float32)
    return X, y


class Script(dn.Callback):
    """Overwrites ``logs[key]`` with a scripted sequence and records parameters per epoch."""

    def __init__(self, key, values):
        self.key, self.values, self.params = key, values, []

    def on_epoch_end(self, epoch, logs):
        logs[self.key] = self.values[epoch]
        self.params.append(self.trainer.model.params.copy())


@pytest.mark.parametrize("restore", [True, False])
def test_early_stopping_stops_and_restores_best(rng, restore):
    X, y = _data(rng)
    model = dn.MLP([4, 6, 1], backend="cpu", seed=int(rng.integers(1000)))
    script = Script("val_loss", [5.0, 4.0, 3.0, 3.2, 2.995, 3.1, 1.0, 0.5])
    stop = dn.EarlyStopping("val_loss", patience=2, min_delta=0.01, restore_best=restore)
    hist = dn.fit(model, X, y, epochs=8, batch_size=8, callbacks=[script, stop],
                  progress=False)
    # best at epoch 2 (2.995 is not better by min_delta); waits 3, 4 -> stops after epoch 5
    assert hist.epoch == [0, 1, 2, 3, 4, 5]
    assert stop.best_epoch == 2 and stop.stopped_epoch == 5 and stop.best == 3.0
    expect = script.params[2] if restore else script.params[5]
    np.testing.assert_array_equal(model.params, expect)
    assert not np.array_equal(script.params[2], script.params[5])


def test_early_stopping_maximises_accuracy(rng):
    X, y = _data(rng)
    model = dn.MLP([4, 1], backend="cpu")
    script = Script("val_accuracy", [0.5, 0.6, 0.55, 0.58, 0.9])
    stop = dn.EarlyStopping("val_accuracy", patience=1)
    hist = dn.fit(model, X, y, epochs=5, batch_size=8, callbacks=[script, stop],
                  progress=False)
    assert len(hist.epoch) == 4 and stop.best_epoch == 1


def test_early_stopping_without_the_monitored_key(rng):
    X, y = _data(rng)
    with pytest.raises(dn.ConfigError, match="monitors 'val_loss'.*validation_data"):
        dn.fit(dn.MLP([4, 1], backend="cpu"), X, y, epochs=2,
               callbacks=[dn.EarlyStopping()], progress=False)


def test_model_checkpoint_every_n_epochs(rng, tmp_path):
    X, y = _data(rng)
    model = dn.MLP([4, 3, 1], backend="cpu")
    ck = dn.ModelCheckpoint(tmp_path / "m-{epoch:02d}.safetensors", every=2)
    dn.fit(model, X, y, epochs=5, batch_size=8, callbacks=[ck], progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m-02.safetensors", "m-04.safetensors", "m-05.safetensors"]
    last, opt = dn.load(tmp_path / "m-05.safetensors", backend="cpu")
    np.testing.assert_array_equal(last.params, model.params)
    assert opt.t == 25
    meta = dn.io.read_metadata(tmp_path / "m-02.safetensors")
    assert meta["train_state"]["epoch"] == 2 and meta["train_state"]["step"] == 10
    assert len(meta["history"]["history"]["loss"]) == 2


def test_model_checkpoint_best_only(rng, tmp_path):
    X, y = _data(rng)
    model = dn.MLP([4, 1], backend="cpu")
    script = Script("val_loss", [3.0, 2.0, 2.5, 1.0, 1.5])
    path = tmp_path / "best.safetensors"
    ck = dn.ModelCheckpoint(path, save_best_only=True)
    dn.fit(model, X, y, epochs=5, batch_size=8, callbacks=[script, ck], progress=False)
    assert ck.saved == [str(path)] * 3  # epochs 0, 1, 3
    best, _ = dn.load(path, backend="cpu")
    np.testing.assert_array_equal(best.params, script.params[3])


def test_learning_rate_scheduler(rng):
    X, y = _data(rng)
    model = dn.MLP([4, 1], backend="cpu")
    sched = dn.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5**epoch)
    hist = dn.fit(model, X, y, optimizer="sgd", epochs=4, batch_size=8, callbacks=[sched],
                  progress=False)
    assert hist["lr"] == [0.1, 0.05, 0.025, 0.0125]


def test_learning_rate_scheduler_rejects_bad_values(rng):
    X, y = _data(rng)
    sched = dn.LearningRateScheduler(lambda epoch, lr: -1.0)
    with pytest.raises(dn.ConfigError, match="lr=-1.0 at epoch 0"):
        dn.fit(dn.MLP([4, 1], backend="cpu"), X, y, epochs=2, callbacks=[sched],
               progress=False)


def test_csv_logger_and_append_on_resume(rng, tmp_path):
    X, y = _data(rng)
    log = tmp_path / "log.csv"
    ck = tmp_path / "ck.safetensors"
    model = dn.MLP([4, 3, 1], backend="cpu")
    dn.fit(model, X, y, epochs=2, batch_size=8, validation_split=0.25, checkpoint=ck,
           callbacks=[dn.CSVLogger(log)], progress=False)
    hist = dn.fit(model, X, y, epochs=4, batch_size=8, validation_split=0.25, resume_from=ck,
                  callbacks=[dn.CSVLogger(log, append=True)], progress=False)
    rows = list(csv.DictReader(log.open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(hist["val_loss"])
    assert list(rows[0]) == ["epoch", "loss", "r2", "mae", "val_loss", "val_r2", "val_mae",
                             "lr", "time"]


@pytest.mark.parametrize("separator", ["\n", "\r", '"', "'", ".", "-", "+", "e", "0", "_",
                                       "/", "\x00", "\x0b", "é"])
def test_csv_logger_refuses_a_separator_that_makes_the_log_unreadable(tmp_path, separator):
    with pytest.raises(dn.ConfigError, match=r"separator must be a single character.*one of"):
        dn.CSVLogger(tmp_path / "log.csv", separator=separator)


@pytest.mark.parametrize("separator", [",", ";", "\t", "|", " ", ":"])
def test_csv_logger_log_reads_back_with_its_separator(rng, tmp_path, separator):
    X, y = _data(rng)
    log = tmp_path / "log.csv"
    hist = dn.fit(dn.MLP([4, 1], backend="cpu"), X, y, epochs=2, batch_size=8,
                  callbacks=[dn.CSVLogger(log, separator=separator)], progress=False)
    rows = list(csv.DictReader(log.open(newline=""), delimiter=separator))
    assert [float(r["loss"]) for r in rows] == pytest.approx(hist["loss"])


def test_csv_logger_append_with_another_separator_is_refused_before_training(rng, tmp_path):
    X, y = _data(rng)
    log = tmp_path / "log.csv"
    ck = tmp_path / "ck.safetensors"
    model = dn.MLP([4, 1], backend="cpu")
    dn.fit(model, X, y, epochs=1, batch_size=8, checkpoint=ck,
           callbacks=[dn.CSVLogger(log, separator=";")], progress=False)
    before = log.read_bytes()
    with pytest.raises(dn.ConfigError, match=r"log.csv.*separator ','.*separator=';'"):
        dn.fit(model, X, y, epochs=2, batch_size=8, resume_from=ck,
               callbacks=[dn.CSVLogger(log, append=True)], progress=False)
    assert log.read_bytes() == before


def test_csv_logger_append_writes_full_rows_when_the_resumed_run_logs_more(rng, tmp_path):
    # the first run had no validation data: the resumed run's val_* columns are added
    X, y = _data(rng)
    log = tmp_path / "log.csv"
    ck = tmp_path / "ck.safetensors"
    model = dn.MLP([4, 3, 1], backend="cpu")
    first = dn.fit(model, X, y, epochs=2, batch_size=8, checkpoint=ck,
                   callbacks=[dn.CSVLogger(log, separator="\t")], progress=False)
    hist = dn.fit(model, X, y, epochs=4, batch_size=8, validation_data=(X[:8], y[:8]),
                  resume_from=ck, callbacks=[dn.CSVLogger(log, append=True, separator="\t")],
                  progress=False)
    rows = list(csv.DictReader(log.open(newline=""), delimiter="\t"))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    assert [float(r["loss"]) for r in rows] == pytest.approx(hist["loss"])
    assert [r["val_loss"] for r in rows[:2]] == ["", ""]
    assert [float(r["val_loss"]) for r in rows[2:]] == pytest.approx(hist["val_loss"][-2:])
    assert [float(r["r2"]) for r in rows[:2]] == pytest.approx(first["r2"])


def test_callbacks_module_reexports_callback():
    assert callbacks.Callback is dn.Callback
    for name in callbacks.__all__:
        assert getattr(dn, name) is getattr(callbacks, name)
