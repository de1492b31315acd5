"""Train a 64-128-64-10 ReLU MLP on scikit-learn's digits on the best available device.

Progress: one line per epoch on stderr as it ends (a live bar on a terminal, a plain line when
piped), then the test accuracy on stdout.
"""

import devnet as dn

X, y = dn.data.load_digits()
X_train, X_test, y_train, y_test = dn.data.train_test_split(X, y, test_size=0.25, seed=0)

be = dn.get_backend("auto")  # logs one line: the device chosen and why
model = dn.MLP([64, 128, 64, 10], activation="relu", backend=be, seed=0)
hist = dn.fit(model, X_train, y_train, loss="cross_entropy", optimizer="adam", lr=1e-3,
              schedule="cosine", epochs=40, batch_size=32, validation_data=(X_test, y_test),
              seed=0, progress=True)
test = dn.evaluate(model, X_test, y_test, loss="cross_entropy")
print(f"test accuracy: {test['accuracy']:.4f} after {len(hist.epoch)} epochs", flush=True)
