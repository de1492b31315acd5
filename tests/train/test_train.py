"""fit / evaluate / predict on XOR, digits and diabetes; batching; the divergence guard."""

from __future__ import annotations

import io as _io
import math

import numpy as np
import pytest

import devnet as dn
from devnet.optim import SGD, Adam, AdamW, RMSProp


def _seed(rng) -> int:
    return int(rng.integers(1 << 30))


def test_fit_xor_learns(rng, backend):
    X, y = dn.data.make_xor()
    model = dn.MLP([2, 16, 1], activation="tanh", backend=backend, seed=_seed(rng))
    hist = dn.fit(model, X, y, loss="binary_cross_entropy", lr=0.05, epochs=300, batch_size=4,
                  seed=_seed(rng), progress=False)
    assert hist["loss"][-1] < 0.1 * hist["loss"][0]
    assert hist["accuracy"][-1] == 1.0
    assert len(hist["loss"]) == 300 and hist.epoch == list(range(300))


def test_fit_digits_classification(rng, backend):
    X, y = dn.data.load_digits()
    model = dn.MLP([64, 32, 10], backend=backend, seed=_seed(rng))
    hist = dn.fit(model, X, y, loss="cross_entropy", lr=1e-2, epochs=5, batch_size=32,
                  validation_split=0.2, seed=_seed(rng), progress=False)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"):
        assert len(hist[key]) == 5, key
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert hist["val_accuracy"][-1] > 0.8
    assert all(t > 0 for t in hist["time"]) and hist["lr"] == [1e-2] * 5


def test_fit_diabetes_regression(rng, backend):
    X, y = dn.data.load_diabetes()
    Xt, Xv, yt, yv = dn.data.train_test_split(X, y, 0.2, seed=_seed(rng))
    model = dn.MLP([10, 32, 1], backend=backend, seed=_seed(rng))
    hist = dn.fit(model, Xt, yt, loss="mse", lr=3e-3, epochs=20, batch_size=32,
                  validation_data=(Xv, yv), seed=_seed(rng), progress=False)
    assert {"loss", "r2", "mae", "val_loss", "val_r2", "val_mae"} <= set(hist.history)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert hist["val_r2"][-1] > 0.2
    ev = dn.evaluate(model, Xv, yv, loss="mse")
    assert ev["loss"] == pytest.approx(hist["val_loss"][-1], rel=1e-6)


def test_last_partial_batch_is_used(rng):
    n, bs, epochs = 37, 16, 3
    X = rng.standard_normal((n, 4)).astype(np.float32)
    y = rng.standard_normal((n, 2)).astype(np.float32)
    model = dn.MLP([4, 2], backend="cpu", seed=_seed(rng))
    opt = dn.optim.SGD(model, lr=0.01)
    seen = []

    class Sizes(dn.Callback):
        def on_batch_end(self, step, logs):
            seen.append(logs["size"])

    dn.fit(model, X, y, optimizer=opt, epochs=epochs, batch_size=bs, callbacks=[Sizes()],
           progress=False, train_metrics=False)
    assert opt.t == epochs * math.ceil(n / bs)
    assert seen == [16, 16, 5] * epochs


def test_epoch_loss_is_the_sample_mean_of_the_batches(rng):
    """Without shuffling and lr ~ 0, the epoch loss equals the loss over the whole set."""
    X = rng.standard_normal((29, 3)).astype(np.float32)
    y = rng.standard_normal((29, 1)).astype(np.float32)
    model = dn.MLP([3, 1], backend="cpu", seed=_seed(rng))
    opt = dn.optim.SGD(model, lr=1e-30)
    hist = dn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=8, shuffle=False,
                  progress=False)
    assert hist["loss"][0] == pytest.approx(dn.evaluate(model, X, y)["loss"], rel=1e-5)


def test_same_seed_same_result_different_seed_different(rng):
    X = rng.standard_normal((40, 5)).astype(np.float32)
    y = rng.integers(0, 3, 40)

    def run(seed):
        m = dn.MLP([5, 8, 3], backend="cpu", seed=1)
        dn.fit(m, X, y, loss="cross_entropy", epochs=2, batch_size=8, seed=seed,
               progress=False)
        return m.params.copy()

    s = _seed(rng)
    np.testing.assert_array_equal(run(s), run(s))
    assert not np.array_equal(run(s), run(s + 1))


def test_named_schedule_decays_lr(rng):
    X = rng.standard_normal((32, 3)).astype(np.float32)
    y = rng.standard_normal(32).astype(np.float32)
    model = dn.MLP([3, 4, 1], backend="cpu", seed=_seed(rng))
    hist = dn.fit(model, X, y, lr=0.01, schedule="cosine", epochs=4, batch_size=8,
                  progress=False)
    lrs = hist["lr"]
    assert lrs[0] == pytest.approx(0.01) and all(np.diff(lrs) < 0)


def test_predict_and_evaluate_batch_large_inputs(rng):
    model = dn.MLP([6, 9, 4], backend="cpu", seed=_seed(rng))
    X = rng.standard_normal((103, 6)).astype(np.float32)
    y = rng.integers(0, 4, 103)
    full = model.predict(X)
    np.testing.assert_allclose(dn.predict(model, X, batch_size=10), full, rtol=1e-6)
    ev_small = dn.evaluate(model, X, y, loss="cross_entropy", batch_size=7)
    ev_big = dn.evaluate(model, X, y, loss="cross_entropy")
    assert ev_small["loss"] == pytest.approx(ev_big["loss"], rel=1e-6)
    assert ev_small["accuracy"] == ev_big["accuracy"]
    value, _ = dn.losses.get("cross_entropy")(full, y)
    assert ev_big["loss"] == pytest.approx(value, rel=1e-5)
    proba = dn.predict_proba(model, X, batch_size=13)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(axis=1), full.argmax(axis=1))


class _FakeTTY(_io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(rng, monkeypatch, capsys):
    X = rng.standard_normal((64, 3)).astype(np.float32)
    y = rng.standard_normal(64).astype(np.float32)
    model = dn.MLP([3, 1], backend="cpu", seed=_seed(rng))
    dn.fit(model, X, y, epochs=2, batch_size=16)  # default "auto", pytest's stderr: no TTY
    assert capsys.readouterr().err == ""
    for progress in ("auto", True):
        tty = _FakeTTY()
        monkeypatch.setattr("sys.stderr", tty)
        dn.fit(model, X, y, epochs=2, batch_size=16, progress=progress)
        out = tty.getvalue()
        assert "epoch 2/2" in out and "sample/s" in out and "loss=" in out
    tty2 = _FakeTTY()
    monkeypatch.setattr("sys.stderr", tty2)
    dn.fit(model, X, y, epochs=2, batch_size=16, progress=False)
    assert tty2.getvalue() == ""


def test_progress_true_when_piped_prints_one_flushed_line_per_epoch(rng, monkeypatch):
    """make demo piped: one plain line per epoch as it ends, none repeated, no bar."""
    X = rng.standard_normal((48, 3)).astype(np.float32)
    y = rng.standard_normal(48).astype(np.float32)
    model = dn.MLP([3, 1], backend="cpu", seed=_seed(rng))
    seen = []

    class Pipe(_io.StringIO):  # not a terminal; records what was flushed at each epoch end
        def flush(self):
            seen.append(self.getvalue())

    pipe = Pipe()
    monkeypatch.setattr("sys.stderr", pipe)

    class AtEpochEnd(dn.Callback):
        def on_epoch_end(self, epoch, logs):
            seen.append(("end", epoch, pipe.getvalue()))

    dn.fit(model, X, y, epochs=3, batch_size=16, progress=True, validation_split=0.25,
           callbacks=[AtEpochEnd()])
    lines = pipe.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("loss" in line and "val_loss" in line and "samples/s" in line for line in lines)
    assert "\r" not in pipe.getvalue() and "|" not in pipe.getvalue()  # no tqdm bar
    ends = [entry for entry in seen if isinstance(entry, tuple)]
    for epoch, (_, e, text) in enumerate(ends):  # written before the next epoch starts
        assert e == epoch and len(text.splitlines()) == epoch + 1
    flushed = [len(text.splitlines()) for text in seen if isinstance(text, str)]
    assert flushed == [1, 2, 3]  # each line flushed as it was written


@pytest.mark.parametrize("progress", ["no", "yes", 1, None])
def test_progress_rejects_non_bool_values(rng, progress):
    X = rng.standard_normal((8, 3)).astype(np.float32)
    with pytest.raises(dn.ConfigError, match="progress must be True, False or 'auto'"):
        dn.fit(dn.MLP([3, 1], backend="cpu"), X, X[:, 0], epochs=1, progress=progress)


# --- the divergence guard -----------------------------------------------------------------------

def _regression(rng, n=64):
    X = rng.standard_normal((n, 5)).astype(np.float32)
    y = rng.standard_normal((n, 1)).astype(np.float32)
    return X, y


def test_guard_huge_learning_rate(rng):
    X, y = _regression(rng)
    model = dn.MLP([5, 16, 1], backend="cpu", seed=_seed(rng))
    start = model.params.copy()
    opt = dn.optim.SGD(model, lr=1e8)
    with pytest.raises(dn.DivergenceError) as info:
        dn.fit(model, X, y, optimizer=opt, epochs=3, batch_size=8, progress=False)
    err = info.value
    assert err.epoch == 0 and err.layer.startswith("layers.")
    assert "epoch 0" in str(err) and f"step {err.step}" in str(err) and "layers." in str(err)
    np.testing.assert_array_equal(model.params, start)  # the last finite state: the start
    assert opt.t == 0


@pytest.mark.parametrize("layer", [0, 1])
def test_guard_nan_injected_in_a_weight(rng, layer):
    X, y = _regression(rng)
    model = dn.MLP([5, 8, 4, 1], backend="cpu", seed=_seed(rng))
    kept = {}

    class Inject(dn.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                kept["params"] = model.params.copy()
                kept["t"] = self.trainer.optimizer.t

        def on_epoch_begin(self, epoch, logs):
            if epoch == 2:
                model.layers[layer].W[1, 0] = np.nan

    with pytest.raises(dn.DivergenceError, match=rf"parameter layers\.{layer}\.W") as info:
        dn.fit(model, X, y, epochs=4, batch_size=16, callbacks=[Inject()], progress=False)
    assert (info.value.epoch, info.value.layer, info.value.array) == (2, f"layers.{layer}", "W")
    np.testing.assert_array_equal(model.params, kept["params"])


def test_guard_weight_changed_by_a_callback_mid_epoch_is_reported(rng):
    X, y = _regression(rng)
    model = dn.MLP([5, 8, 1], backend="cpu", seed=_seed(rng))

    class Inject(dn.Callback):
        def on_batch_end(self, step, logs):
            if step == 6:  # epoch 1, after its 2nd step; not replayed, so not reproduced
                model.layers[1].b[0] = np.inf

    with pytest.raises(dn.DivergenceError, match="could not be located") as info:
        dn.fit(model, X, y, epochs=3, batch_size=16, callbacks=[Inject()], progress=False)
    assert info.value.epoch == 1
    assert np.isfinite(model.params).all()


@pytest.mark.parametrize("batch", [0, 2])
def test_guard_nan_in_the_data(rng, batch):
    """NaN written into the training data mid-run; guard checks every 2 of the 3 steps/epoch."""
    X, y = _regression(rng, 48)
    model = dn.MLP([5, 8, 1], backend="cpu", seed=_seed(rng))
    row = 16 * batch + int(rng.integers(16))  # shuffle=False: batch b holds rows 16b..16b+15
    kept = {}

    class Inject(dn.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 0:
                kept[0] = model.params.copy()

        def on_batch_end(self, step, logs):
            if step == 3 + 2:  # epoch 1 after 2 steps: the guard's mid-epoch snapshot
                kept[2] = model.params.copy()

        def on_epoch_begin(self, epoch, logs):
            if epoch == 1:
                X[row, 2] = np.nan  # fit trains on X itself (float32, contiguous: no copy)

    with pytest.raises(dn.DivergenceError,
                       match=rf"input batch X \(training rows \[{row}\]\)") as info:
        dn.fit(model, X, y, epochs=3, batch_size=16, callbacks=[Inject()], guard_every=2,
               shuffle=False, progress=False)
    err = info.value
    assert (err.epoch, err.step, err.layer, err.array) == (1, batch, "input", "X")
    # the last finite state: the epoch start for a NaN in batch 0, the mid-epoch check for 2
    np.testing.assert_array_equal(model.params, kept[batch])


def test_guard_off_lets_nan_through(rng):
    X, y = _regression(rng)
    model = dn.MLP([5, 8, 1], backend="cpu", seed=_seed(rng))
    dn.fit(model, X, y, optimizer=dn.optim.SGD(model, lr=1e8), epochs=3, batch_size=8,
           guard=False, progress=False)
    assert not np.isfinite(model.params).all()


# --- evaluate's metrics: weighted, in float64, NaN for NaN outputs ------------------------------

def _sk_metrics():
    return pytest.importorskip("sklearn.metrics")


def test_evaluate_weights_accuracy_like_scikit_learn(rng, backend):
    skm = _sk_metrics()
    X = rng.standard_normal((60, 4)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    w = rng.uniform(0.0, 3.0, 60)
    model = dn.MLP([4, 8, 3], backend=backend, seed=_seed(rng))
    pred = dn.predict(model, X).argmax(axis=1)
    res = dn.evaluate(model, X, y, loss="cross_entropy", sample_weight=w)
    assert res["accuracy"] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=w),
                                            rel=1e-6)
    # a prediction that is right only where the weight is large scores above its plain share
    w_hits = np.where(pred == y, 10.0, 0.1)
    res = dn.evaluate(model, X, y, loss="cross_entropy", sample_weight=w_hits)
    assert res["accuracy"] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=w_hits),
                                            rel=1e-6)
    multi = (rng.uniform(size=(60, 3)) > 0.5).astype(np.float32)
    res = dn.evaluate(model, X, multi, loss="binary_cross_entropy", sample_weight=w)
    hits = ((dn.predict(model, X) > 0) == (multi > 0.5)).all(axis=1)
    assert res["accuracy"] == pytest.approx(np.average(hits, weights=w), rel=1e-6)


def test_evaluate_weights_r2_and_mae_like_scikit_learn(rng, backend):
    skm = _sk_metrics()
    X = rng.standard_normal((50, 4))
    y = rng.standard_normal((50, 2))
    w = rng.uniform(0.0, 3.0, 50)
    model = dn.MLP([4, 8, 2], dtype="float64", backend=backend, seed=_seed(rng))
    pred = dn.predict(model, X)
    res = dn.evaluate(model, X, y, loss="mse", sample_weight=w)
    assert res["r2"] == pytest.approx(skm.r2_score(y, pred, sample_weight=w), rel=1e-10)
    assert res["mae"] == pytest.approx(skm.mean_absolute_error(y, pred, sample_weight=w),
                                       rel=1e-10)
    counts = rng.poisson(2.0, (50, 2)).astype(np.float64)
    res = dn.evaluate(model, X, counts, loss="poisson", sample_weight=w)
    assert res["r2"] == pytest.approx(skm.r2_score(counts, np.exp(pred), sample_weight=w),
                                      rel=1e-10)


def test_fit_history_metrics_are_weighted_like_its_loss(rng):
    X = rng.standard_normal((40, 4))
    y = rng.standard_normal((40, 1))
    w = rng.uniform(0.0, 3.0, 40)
    Xv, yv, wv = X[:16], y[:16], w[:16]
    model = dn.MLP([4, 8, 1], dtype="float64", backend="cpu", seed=_seed(rng))
    hist = dn.fit(model, X, y, loss="mse", epochs=1, batch_size=8, sample_weight=w,
                  validation_data=(Xv, yv, wv), seed=_seed(rng), progress=False)
    train = dn.evaluate(model, X, y, loss="mse", sample_weight=w)
    val = dn.evaluate(model, Xv, yv, loss="mse", sample_weight=wv)
    assert hist["r2"][-1] == pytest.approx(train["r2"], rel=1e-12)
    assert hist["mae"][-1] == pytest.approx(train["mae"], rel=1e-12)
    assert hist["val_r2"][-1] == pytest.approx(val["r2"], rel=1e-12)
    assert hist["val_loss"][-1] == pytest.approx(val["loss"], rel=1e-12)
    assert hist["mae"][-1] != pytest.approx(dn.evaluate(model, X, y, loss="mse")["mae"],
                                            rel=1e-9)


def test_r2_of_finite_float32_targets_near_1e20_is_finite(rng):
    skm = _sk_metrics()
    pred = (rng.standard_normal((30, 2)) * 1e20).astype(np.float32)
    target = (pred.astype(np.float64) + rng.standard_normal((30, 2)) * 3e19).astype(np.float32)
    got = dn.metrics.r2(pred, target)
    assert np.isfinite(got)
    assert got == pytest.approx(skm.r2_score(target.astype(np.float64),
                                             pred.astype(np.float64)), rel=1e-9)
    assert dn.metrics.mae(pred, target) == pytest.approx(
        skm.mean_absolute_error(target.astype(np.float64), pred.astype(np.float64)), rel=1e-9)


def test_evaluate_of_a_model_with_nan_weights_is_refused_not_a_finite_accuracy(rng):
    X = rng.standard_normal((30, 4)).astype(np.float32)
    y = np.arange(30) % 3
    model = dn.MLP([4, 8, 3], backend="cpu", seed=_seed(rng))
    model.params[0] = np.nan
    with pytest.raises(dn.DataError, match=r"outputs NaN or Inf for \d+ of 30 samples"):
        dn.evaluate(model, X, y, loss="cross_entropy")
    with pytest.raises(dn.DataError, match="np.isfinite"):
        dn.evaluate(model, X, rng.standard_normal((30, 3)).astype(np.float32), loss="mse")


def test_metrics_of_nan_predictions_are_nan(rng):
    pred = rng.standard_normal((20, 3))
    pred[4, 1] = np.nan
    labels = rng.integers(0, 3, 20)
    assert np.isnan(dn.metrics.accuracy(pred, labels, "softmax"))
    assert np.isnan(dn.metrics.accuracy(pred, (pred > 0).astype(float), "sigmoid"))
    constant = np.ones((20, 3))  # r2 of a constant target is 0 or 1 by rule, never for NaN
    assert np.isnan(dn.metrics.r2(pred, constant))
    assert np.isnan(dn.metrics.mae(pred, constant))


def test_accuracy_with_a_softmax_over_one_column_is_refused(rng):
    pred = rng.standard_normal((20, 1))
    with pytest.raises(dn.DataError, match="one prediction column per class"):
        dn.metrics.accuracy(pred, rng.integers(0, 2, 20), "softmax")
    hits = ((pred > 0) == (np.arange(20) % 2 == 1)[:, None]).mean()
    assert dn.metrics.accuracy(pred, np.arange(20) % 2, "sigmoid") == pytest.approx(hits)


def test_predict_proba_of_one_output(rng):
    X = rng.standard_normal((25, 4))
    model = dn.MLP([4, 8, 1], dtype="float64", backend="cpu", seed=_seed(rng))
    z = dn.predict(model, X)
    with pytest.raises(dn.ConfigError, match="one output per class"):
        dn.predict_proba(model, X, loss="cross_entropy")
    proba = dn.predict_proba(model, X, loss="binary_cross_entropy")
    assert proba.shape == (25, 2)
    p = 1 / (1 + np.exp(-z[:, 0]))
    np.testing.assert_allclose(proba[:, 1], p, rtol=1e-12)
    np.testing.assert_allclose(proba[:, 0], 1 / (1 + np.exp(z[:, 0])), rtol=1e-12)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    with pytest.raises(dn.ConfigError, match="regression loss"):
        dn.predict_proba(model, X, loss="mse")


# --- an output activation that is already the loss's link ----------------------------------

@pytest.mark.parametrize("out_act, loss, n_out", [("softmax", "cross_entropy", 3),
                                                  ("sigmoid", "binary_cross_entropy", 1),
                                                  ("sigmoid", "cross_entropy", 3),
                                                  ("softmax", "auto", 3)])
def test_a_link_output_activation_with_a_logit_loss_is_refused(out_act, loss, n_out, rng):
    X = rng.standard_normal((30, 4)).astype(np.float32)
    y = np.arange(30) % max(n_out, 2)
    model = dn.MLP([4, 8, n_out], output_activation=out_act, backend="cpu", seed=0)
    before = model.params.copy()
    for call in (lambda: dn.fit(model, X, y, loss=loss, epochs=1, progress=False),
                 lambda: dn.evaluate(model, X, y, loss=loss),
                 lambda: dn.predict_proba(model, X, loss="cross_entropy" if n_out > 1
                                          else "binary_cross_entropy")):
        with pytest.raises(dn.ConfigError, match="applied twice.*output_activation='identity'"):
            call()
    np.testing.assert_array_equal(model.params, before)


def test_a_link_output_activation_trains_with_a_loss_on_its_outputs(rng):
    X = rng.standard_normal((30, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(30) % 3]
    model = dn.MLP([4, 8, 3], output_activation="softmax", backend="cpu", seed=0)
    hist = dn.fit(model, X, y, loss="mse", epochs=2, progress=False)
    assert np.isfinite(hist["loss"]).all()
    np.testing.assert_allclose(model.predict(X).sum(axis=1), 1.0, rtol=1e-5)


# --- training data that is the model's own output buffer -----------------------------------

@pytest.mark.parametrize("which", ["X", "y", "validation X"])
def test_fit_on_the_models_own_forward_output_trains_as_on_a_copy(which, rng):
    X0 = rng.standard_normal((16, 4)).astype(np.float32)
    X = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.standard_normal((16, 4)).astype(np.float32)

    def run(copy_it):
        model = dn.MLP([4, 8, 4], backend="cpu", seed=1)
        out = model.forward(X0)  # the model's buffer for 16 rows: fit's batch size
        data = out.copy() if copy_it else out
        args = {"X": (data, y, (X, y)), "y": (X, data, (X, y)),
                "validation X": (X, y, (data, y))}[which]
        hist = dn.fit(model, args[0], args[1], loss="mse", epochs=3, batch_size=16,
                      validation_data=args[2], progress=False)
        return model.params.copy(), hist["val_loss"]

    params, val_loss = run(copy_it=False)
    expected_params, expected_val_loss = run(copy_it=True)
    np.testing.assert_array_equal(params, expected_params)
    assert val_loss == expected_val_loss


class _Record(dn.Callback):
    """Copies of the parameters, optimizer state and step count after every step."""

    def __init__(self):
        self.states = {}

    def on_train_begin(self, logs):
        self._keep(0)

    def on_batch_end(self, step, logs):
        self._keep(step)

    def _keep(self, step):
        tr = self.trainer
        self.states[step] = (tr.model.params.copy(),
                             {k: v.copy() for k, v in tr.optimizer.state.items()},
                             tr.optimizer.t)


def _finite(state) -> bool:
    params, buffers, _ = state
    return bool(np.isfinite(params).all() and all(np.isfinite(b).all() for b in buffers.values()))


def _last_good_check(states, every, steps_per_epoch, epochs):
    """The global step of the last guard check before the first non-finite state."""
    checks = {0} | {e * steps_per_epoch for e in range(1, epochs + 1)}
    if every:
        checks |= {e * steps_per_epoch + s + 1 for e in range(epochs)
                   for s in range(steps_per_epoch - 1) if (s + 1) % every == 0}
    first_bad = min(g for g, st in states.items() if not _finite(st))
    return max(c for c in checks if c < first_bad)


_OPTIMIZERS = {
    "adam": lambda p: Adam(p, lr=1e12), "adamw": lambda p: AdamW(p, lr=1e12, weight_decay=0.1),
    "adam_amsgrad": lambda p: Adam(p, lr=1e12, amsgrad=True),
    "rmsprop": lambda p: RMSProp(p, lr=1e12, momentum=0.5),
    "rmsprop_centered": lambda p: RMSProp(p, lr=1e12, centered=True),
    "momentum": lambda p: SGD(p, lr=1e30, momentum=0.9),
}


@pytest.mark.parametrize("name", sorted(_OPTIMIZERS))
@pytest.mark.parametrize("dropout, weighted, every", [(0.0, False, 1), (0.3, True, 3),
                                                      (0.3, False, None)])
def test_guard_restored_a_state_with_overflowed_optimizer_state_not_the_last_finite_one(
        name, dropout, weighted, every):
    rng = np.random.default_rng(2)  # a fixed run that overflows mid-epoch for every case
    X, y = _data(rng)
    sw = rng.uniform(0.1, 3.0, len(X)) if weighted else None
    model = dn.MLP([5, 16, 16, 3], seed=0, backend="cpu", dropout=dropout)
    opt = _OPTIMIZERS[name](model.parameters())
    rec = _Record()
    with pytest.raises(dn.DivergenceError) as info:
        dn.fit(model, X, y, optimizer=opt, epochs=3, batch_size=8, guard_every=every,
               callbacks=[rec], sample_weight=sw, progress=False)
    assert info.value.layer is not None and info.value.array is not None
    params, buffers, t = rec.states[_last_good_check(rec.states, every, 12, 3)]
    np.testing.assert_array_equal(model.params, params)  # bit for bit
    for key, buf in buffers.items():
        np.testing.assert_array_equal(opt.state[key], buf)
    assert opt.t == t


def test_guard_let_adam_train_on_with_an_infinite_second_moment(rng):
    """A finite gradient whose square overflows made exp_avg_sq inf: the update became 0, the
    parameters stayed finite and frozen, and fit returned as if it had trained."""
    X, y = _data(rng)
    model = dn.MLP([5, 16, 16, 3], seed=0, backend="cpu")
    opt = Adam(model.parameters(), lr=1e12)
    with pytest.raises(dn.DivergenceError):
        dn.fit(model, X, y, optimizer=opt, epochs=3, batch_size=8, guard_every=1,
               progress=False)
    assert all(np.isfinite(buf).all() for buf in opt.state.values())


class _Poison(dn.Callback):
    def __init__(self, at):
        self.at = at

    def on_batch_end(self, step, logs):
        if step == self.at:
            self.trainer.model.layers[1].W[0, 0] = np.nan


def test_guard_did_not_name_a_nan_a_callback_wrote_mid_epoch(rng):
    X, y = _data(rng)
    model = dn.MLP([5, 8, 3], seed=0, backend="cpu")
    opt = Adam(model.parameters(), lr=1e-3)
    rec = _Record()
    with pytest.raises(dn.DivergenceError, match=r"layers\.1\.W.*changed outside") as info:
        dn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=8, guard_every=2,
               callbacks=[rec, _Poison(4)], progress=False)
    assert (info.value.layer, info.value.array) == ("layers.1", "W")
    params, buffers, t = rec.states[2]  # the check after step 4 found it; the one before: 2
    np.testing.assert_array_equal(model.params, params)
    assert opt.t == t and all(np.array_equal(opt.state[k], b) for k, b in buffers.items())


def _data(rng, n=96, n_in=5, k=3):
    return rng.standard_normal((n, n_in)).astype("float32"), rng.integers(0, k, n)
