"""Train a 64-128-64-10 ReLU MLP on scikit-learn's digits on the best available device."""

import devnet as dn

X, y = dn.data.load_digits()
X_train, X_test, y_train, y_test = dn.data.train_test_split(X, y, test_size=0.25, seed=0)

be = dn.get_backend("auto")  # logs one line: the device chosen and why
model = dn.MLP([64, 128, 64, 10], activation="relu", backend=be, seed=0)
epochs, batch_size = 40, 32
steps = epochs * -(-len(X_train) // batch_size)
hist = dn.fit(model, X_train, y_train, loss="cross_entropy", optimizer="adam",
              lr=dn.optim.schedules.cosine(1e-3, total_steps=steps), epochs=epochs,
              batch_size=batch_size, validation_data=(X_test, y_test), seed=0, progress=True)
for epoch, (loss, acc) in enumerate(zip(hist["loss"], hist["val_accuracy"]), 1):
    print(f"epoch {epoch:2d}  loss {loss:.4f}  val_accuracy {acc:.4f}")
test = dn.evaluate(model, X_test, y_test, loss="cross_entropy")
print(f"test accuracy: {test['accuracy']:.4f}")
