"""Vanishing gradients, seen and fixed: a 32-hidden-layer, width-64 sigmoid MLP on digits.

Two models with the same widths, activation, optimizer and epochs:

- plain: ``h <- sigmoid(h @ W + b)`` 32 times. sigmoid' <= 1/4, so the error signal shrinks
  at every layer on its way down: the first layers' gradients are orders of magnitude below the
  last's (the gradient-flow plot shows it) and the network stays near chance.
- residual + LayerNorm: ``h <- h + sigmoid(LayerNorm(h) @ W + b)``. The skip carries the
  gradient down unchanged and the norm keeps every block's input in sigmoid's working range.

Prints both test accuracies, writes them and the per-layer gradient norms as JSON
(``--results``, default ``gradient_flow.json``) and the gradient-flow plot of both (``--plot``,
default ``gradient_flow.png``; skipped with a note when matplotlib is not installed:
``pip install '.[plot]'``). Runs on the best available device; ~1 minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import devnet as dn
from devnet.callbacks import GradientFlow, plot_gradient_flow

DEPTH, WIDTH = 32, 64
MODELS = {"plain": {}, "residual + LayerNorm": {"block": "residual", "norm": "layernorm"}}


def train(epochs: int, device="auto") -> tuple[dict, dict]:
    """Train both models on digits; returns (label -> History, label -> test accuracy)."""
    X, y = dn.data.load_digits()
    X_train, X_test, y_train, y_test = dn.data.train_test_split(X, y, test_size=0.25, seed=0)
    be = dn.get_backend(device)  # logs one line: the device chosen and why
    sizes = [64, *[WIDTH] * DEPTH, 10]
    histories, accuracy = {}, {}
    for label, deep in MODELS.items():
        model = dn.MLP(sizes, activation="sigmoid", init="xavier", backend=be, seed=0, **deep)
        hist = dn.fit(model, X_train, y_train, loss="cross_entropy", optimizer="adam", lr=1e-3,
                      epochs=epochs, batch_size=32, seed=0, progress=False,
                      train_metrics=False, callbacks=[GradientFlow()])
        accuracy[label] = dn.evaluate(model, X_test, y_test, loss="cross_entropy")["accuracy"]
        histories[label] = hist
        grads = _last(hist, "grad_norm")
        print(f"{label:>22}: test accuracy {accuracy[label]:.4f} after {epochs} epochs; "
              f"gradient norm first layer {grads[0]:.2e}, last {grads[-1]:.2e} "
              f"(ratio {grads[0] / grads[-1]:.1e})", flush=True)
    return histories, accuracy


def _last(hist, kind: str) -> list[float]:
    """The last epoch's value of ``kind/layers.i`` for every layer i, input to output."""
    n = sum(key.startswith(f"{kind}/layers.") for key in hist.history)
    return [hist[f"{kind}/layers.{i}"][-1] for i in range(n)]


def save(histories: dict, accuracy: dict, results: Path, plot: Path) -> list[Path]:
    """Write the results as JSON, then the plot if matplotlib is there; returns what was
    written. The JSON goes first: a missing plotting library must not lose the training."""
    record = {"depth": DEPTH, "width": WIDTH,
              "models": {label: {"test_accuracy": accuracy[label],
                                 "epochs": len(hist.epoch),
                                 "grad_norm": _last(hist, "grad_norm"),
                                 "update_ratio": _last(hist, "update_ratio")}
                         for label, hist in histories.items()}}
    results.write_text(json.dumps(record, indent=1) + "\n")
    print(f"results: {results}")
    try:
        path = plot_gradient_flow(histories, plot, title=f"{DEPTH} hidden sigmoid layers of "
                                                          f"width {WIDTH}, digits")
    except dn.MissingDependencyError:
        print(f"gradient-flow plot skipped: matplotlib is not installed "
              f"(pip install '.[plot]'); the gradient norms are in {results}")
        return [results]
    print(f"gradient-flow plot: {path}")
    return [results, path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--plot", type=Path, default=Path("gradient_flow.png"))
    parser.add_argument("--results", type=Path, default=Path("gradient_flow.json"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be a positive integer, got {args.epochs}")
    for flag, path in (("--plot", args.plot), ("--results", args.results)):
        # refused now, not after the minute of training
        if path.is_dir() or not path.parent.is_dir():
            parser.error(f"{flag}: cannot write {str(path)!r}: "
                         + ("it is a directory" if path.is_dir()
                            else f"folder {str(path.parent)!r} does not exist"))
    histories, accuracy = train(args.epochs, args.device)
    save(histories, accuracy, args.results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
