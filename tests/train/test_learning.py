"""End to end: the model actually learns (XOR, digits) on every backend."""

import numpy as np
import pytest

import devnet as dn


@pytest.mark.parametrize("seed", range(5))
def test_xor_learned_by_2_4_1_tanh(seed, backend):
    X, y = dn.data.make_xor()
    model = dn.MLP([2, 4, 1], activation="tanh", init="xavier", seed=seed, backend=backend)
    dn.fit(model, X, y, loss="binary_cross_entropy", optimizer="adam", lr=0.05, epochs=400,
           batch_size=4, seed=seed, progress=False)
    pred = model.predict(X) > 0
    assert np.array_equal(pred, y > 0.5), f"seed {seed}: {model.predict(X).ravel()}"


def test_digits_reaches_97_percent(backend):
    X, y = dn.data.load_digits()
    X_train, X_test, y_train, y_test = dn.data.train_test_split(X, y, test_size=0.25, seed=0)
    model = dn.MLP([64, 128, 64, 10], activation="relu", seed=0, backend=backend)
    epochs, batch = 40, 32
    steps = epochs * -(-len(X_train) // batch)
    hist = dn.fit(model, X_train, y_train, loss="cross_entropy", optimizer="adam",
                  lr=dn.optim.schedules.cosine(1e-3, steps), epochs=epochs, batch_size=batch,
                  seed=0, progress=False)
    assert hist["loss"][-1] < 0.1 * hist["loss"][0]
    acc = dn.evaluate(model, X_test, y_test, loss="cross_entropy")["accuracy"]
    assert acc >= 0.97
