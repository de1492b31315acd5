"""One model shared by threads: inference from many at once is exact; training claims it.

Outcomes are deterministic: threads start together at a barrier and every result is compared
exactly with the single-threaded one; a thread that must be "inside fit" waits at an Event
set from a callback, so no test depends on timing.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
from helpers.optional import from_devnet_sklearn

import devnet as dn

N_THREADS = 4
ROUNDS = 60
WAIT = 60  # seconds: a bound on every wait, never a timing assertion


def _classifier(**params):
    return from_devnet_sklearn("", "MLPClassifier")(**params)


def _run_threads(target, n=N_THREADS):
    """Run ``target(i)`` on n threads; re-raise the first exception any of them raised."""
    errors = []

    def run(i):
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive(), "a thread did not finish"
    if errors:
        raise errors[0]


def _inputs(rng, n_in, n_rows=64):
    """One X per thread, all of one batch size: they would share a work buffer."""
    return [rng.standard_normal((n_rows, n_in)).astype(np.float32) for _ in range(N_THREADS)]


@pytest.mark.parametrize("deep", [False, True], ids=["plain", "residual-layernorm"])
@pytest.mark.parametrize("door", ["model.predict", "dn.predict", "dn.predict_proba"])
def test_inference_from_many_threads_returns_each_threads_own_outputs(door, deep, rng):
    kw = dict(block="residual", norm="layernorm") if deep else {}
    model = dn.MLP([16, 256, 256, 5], backend="cpu", seed=1, **kw)
    model.set_input_scaling(np.full(16, 0.5), np.full(16, 2.0))
    run = {"model.predict": lambda X: model.predict(X, batch_size=32),
           "dn.predict": lambda X: dn.predict(model, X, batch_size=32),
           "dn.predict_proba": lambda X: dn.predict_proba(model, X, batch_size=32)}[door]
    inputs = _inputs(rng, 16)
    expected = [run(X) for X in inputs]
    start = threading.Barrier(N_THREADS)
    wrong = [0] * N_THREADS

    def predict(i):
        start.wait(WAIT)
        for _ in range(ROUNDS):
            wrong[i] += not np.array_equal(run(inputs[i]), expected[i])

    _run_threads(predict)
    assert wrong == [0] * N_THREADS


def test_estimator_predict_from_many_threads_returns_each_threads_own_outputs(rng):
    X = rng.standard_normal((120, 8))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    clf = _classifier(hidden_layer_sizes=(64, 64), max_iter=5, random_state=0,
                      device="cpu").fit(X, y)
    inputs = [rng.standard_normal((64, 8)) for _ in range(N_THREADS)]
    expected = [(clf.predict(X), clf.predict_proba(X)) for X in inputs]
    start = threading.Barrier(N_THREADS)
    wrong = [0] * N_THREADS

    def predict(i):
        start.wait(WAIT)
        for _ in range(ROUNDS):
            wrong[i] += not np.array_equal(clf.predict_proba(inputs[i]), expected[i][1])
            wrong[i] += not np.array_equal(clf.predict(inputs[i]), expected[i][0])

    _run_threads(predict)
    assert wrong == [0] * N_THREADS


class _PauseInFit(dn.Callback):
    """Holds fit at the start of epoch ``epoch`` until ``resume`` is set; ``inside`` is set
    once fit waits there."""

    def __init__(self, epoch=1):
        self.epoch = epoch
        self.inside, self.resume = threading.Event(), threading.Event()

    def on_epoch_begin(self, epoch, logs):
        if epoch == self.epoch:
            self.inside.set()
            assert self.resume.wait(WAIT)


def _data(rng):
    X = rng.standard_normal((96, 6)).astype(np.float32)
    return X, (X[:, 0] > X[:, 1]).astype(np.int64) + (X[:, 2] > 0.5)


def _fit(model, X, y, callbacks=()):
    return dn.fit(model, X, y, loss="cross_entropy", epochs=3, batch_size=16, seed=3,
                  progress=False, callbacks=list(callbacks))


def _in_background(fn):
    """Start ``fn`` on a thread; returns (thread, box): box["error"] / box["result"]."""
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_fit_while_another_thread_fits_the_model_is_refused_and_the_first_fit_is_exact(rng):
    X, y = _data(rng)
    reference = dn.MLP([6, 32, 3], backend="cpu", seed=2)
    _fit(reference, X, y)
    model = dn.MLP([6, 32, 3], backend="cpu", seed=2)
    pause = _PauseInFit()
    thread, box = _in_background(lambda: _fit(model, X, y, [pause]))
    assert pause.inside.wait(WAIT)
    try:
        with pytest.raises(dn.ModelBusyError, match="another thread is already training"):
            _fit(model, X, y)
    finally:
        pause.resume.set()
        thread.join(WAIT)
    assert "error" not in box, box.get("error")
    np.testing.assert_array_equal(model.params, reference.params)


@pytest.mark.parametrize("door", ["model.predict", "dn.predict", "dn.evaluate",
                                  "model.forward", "model.backward", "set_input_scaling"])
def test_use_while_another_thread_fits_is_refused_and_the_fit_is_exact(door, rng):
    X, y = _data(rng)
    reference = dn.MLP([6, 32, 3], backend="cpu", seed=2)
    _fit(reference, X, y)
    model = dn.MLP([6, 32, 3], backend="cpu", seed=2)
    use = {"model.predict": lambda: model.predict(X),
           "dn.predict": lambda: dn.predict(model, X),
           "dn.evaluate": lambda: dn.evaluate(model, X, y, loss="cross_entropy"),
           "model.forward": lambda: model.forward(X[:16]),
           "model.backward": lambda: model.backward(np.ones((16, 3), np.float32)),
           "set_input_scaling": lambda: model.set_input_scaling(np.zeros(6), np.ones(6))}[door]
    pause = _PauseInFit()
    thread, box = _in_background(lambda: _fit(model, X, y, [pause]))
    assert pause.inside.wait(WAIT)
    try:
        with pytest.raises(dn.ModelBusyError,
                           match="another thread is (already )?training this model"):
            use()
    finally:
        pause.resume.set()
        thread.join(WAIT)
    assert "error" not in box, box.get("error")
    np.testing.assert_array_equal(model.params, reference.params)


def test_fit_waits_for_inference_already_running_in_another_thread(rng):
    X, y = _data(rng)
    reference = dn.MLP([6, 32, 3], backend="cpu", seed=2)
    _fit(reference, X, y)
    model = dn.MLP([6, 32, 3], backend="cpu", seed=2)
    before = model.params.copy()
    with model._usage.shared("a prediction in flight"):  # as predict between two batches
        thread, box = _in_background(lambda: _fit(model, X, y))
        for _ in range(WAIT * 100):  # until fit has claimed the model (and waits)
            if model._usage.owner is not None:
                break
            threading.Event().wait(0.01)
        assert model._usage.owner == thread.ident
        predictor, other = _in_background(lambda: model.predict(X))
        predictor.join(WAIT)
        assert isinstance(other.get("error"), dn.ModelBusyError)  # a new inference: refused
        assert thread.is_alive()  # fit waits: the parameters being read stay as they were
        np.testing.assert_array_equal(model.params, before)
    thread.join(WAIT)
    assert "error" not in box, box.get("error")
    np.testing.assert_array_equal(model.params, reference.params)


def test_fit_may_predict_with_its_own_model_from_a_callback(rng):
    X, y = _data(rng)
    reference = dn.MLP([6, 32, 3], backend="cpu", seed=2)
    _fit(reference, X, y)
    model = dn.MLP([6, 32, 3], backend="cpu", seed=2)
    seen = []

    class Predicts(dn.Callback):
        def on_batch_end(self, step, logs):
            seen.append(model.predict(X[:16]))

    _fit(model, X, y, [Predicts()])
    assert len(seen) == 18
    np.testing.assert_array_equal(model.params, reference.params)


def test_a_copy_trains_while_the_original_serves_predictions(rng):
    X, y = _data(rng)
    model = dn.MLP([6, 32, 3], backend="cpu", seed=2)
    expected = model.predict(X)
    clone = copy.deepcopy(model)
    start = threading.Barrier(2)

    def work(i):
        start.wait(WAIT)
        if i == 0:
            _fit(clone, X, y)
        else:
            for _ in range(ROUNDS):
                np.testing.assert_array_equal(model.predict(X), expected)

    _run_threads(work, n=2)
    assert not np.array_equal(clone.params, model.params)


def test_estimator_predict_while_another_thread_fits_it_is_refused_and_the_fit_is_exact(
        rng, monkeypatch):
    from devnet.sklearn import _base

    X = rng.standard_normal((120, 8))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)

    def fitted_twice(clf):
        return clf.fit(X, y).partial_fit(X, y)

    params = dict(hidden_layer_sizes=(16,), max_iter=3, random_state=0, device="cpu")
    reference = fitted_twice(_classifier(**params))
    clf = _classifier(**params).fit(X, y)
    inside, resume = threading.Event(), threading.Event()
    make_feed = _base.make_feed

    def paused_feed(*args, **kwargs):  # runs inside partial_fit, with the network claimed
        inside.set()
        assert resume.wait(WAIT)
        return make_feed(*args, **kwargs)

    monkeypatch.setattr(_base, "make_feed", paused_feed)
    thread, box = _in_background(lambda: clf.partial_fit(X, y))
    assert inside.wait(WAIT)
    try:
        for use in (clf.predict, clf.predict_proba):
            with pytest.raises(dn.ModelBusyError, match="MLPClassifier.predict refused"):
                use(X)
    finally:
        resume.set()
        thread.join(WAIT)
    assert "error" not in box, box.get("error")
    for got, want in zip(clf.coefs_ + clf.intercepts_,
                         reference.coefs_ + reference.intercepts_, strict=True):
        np.testing.assert_array_equal(got, want)


def test_estimator_fit_while_another_thread_fits_it_is_refused_and_the_fit_is_exact(
        rng, monkeypatch):
    from devnet.sklearn import _base

    X = rng.standard_normal((120, 8))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    params = dict(hidden_layer_sizes=(16,), max_iter=3, random_state=0, device="cpu")
    reference = _classifier(**params).fit(X, y)
    clf = _classifier(**params)
    inside, resume = threading.Event(), threading.Event()
    make_feed = _base.make_feed

    def paused_feed(*args, **kwargs):  # the first fit: coefs_ initialised, training next
        if not inside.is_set():
            inside.set()
            assert resume.wait(WAIT)
        return make_feed(*args, **kwargs)

    monkeypatch.setattr(_base, "make_feed", paused_feed)
    thread, box = _in_background(lambda: clf.fit(X, y))
    assert inside.wait(WAIT)
    try:
        for use in (lambda: clf.fit(X, y), lambda: clf.partial_fit(X, y),
                    lambda: clf.predict(X)):
            with pytest.raises(dn.ModelBusyError, match="MLPClassifier.fit"):
                use()
    finally:
        resume.set()
        thread.join(WAIT)
    assert "error" not in box, box.get("error")
    for got, want in zip(clf.coefs_ + clf.intercepts_,
                         reference.coefs_ + reference.intercepts_, strict=True):
        np.testing.assert_array_equal(got, want)
