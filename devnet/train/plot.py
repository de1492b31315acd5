"""The gradient-flow plot of the per-layer gradient norms ``callbacks.GradientFlow`` records.

Apart from History (which calls it) and the callbacks (which re-export it): neither is imported
here, so the three stay free of import cycles.
"""

from __future__ import annotations

import os
from pathlib import Path

from devnet.errors import ConfigError, MissingDependencyError

GRAD_NORM = "grad_norm"
UPDATE_RATIO = "update_ratio"


def _gradient_series(history, kind: str) -> tuple[list[str], list[float]]:
    prefix = f"{kind}/"
    names = [k[len(prefix):] for k in history.history if k.startswith(prefix)]
    names.sort(key=lambda name: int(name.rsplit(".", 1)[-1]) if name.rsplit(".", 1)[-1]
               .isdigit() else 0)
    return names, [history.history[f"{prefix}{name}"][-1] for name in names]


def _is_history(obj) -> bool:
    """A ``devnet.train.History`` (checked by its record dict: no import of its module)."""
    return isinstance(getattr(obj, "history", None), dict) and hasattr(obj, "epoch")


def plot_gradient_flow(histories, path: str | os.PathLike, title: str | None = None) -> Path:
    """Plot the last epoch's per-layer gradient norms (log scale) of one or more Histories.

    ``histories``: a History, or a dict label -> History, each recorded with ``GradientFlow``.
    Writes a PNG (or any format matplotlib infers from ``path``) and returns the path. Needs
    matplotlib (``pip install matplotlib``).
    """
    if _is_history(histories):
        histories = {None: histories}
    if not isinstance(histories, dict) or not histories:
        raise ConfigError("plot_gradient_flow takes a History or a dict label -> History")
    for label, hist in histories.items():
        if not _is_history(hist) or not _gradient_series(hist, GRAD_NORM)[0]:
            raise ConfigError(f"History {label!r} has no gradient-flow records: pass "
                              "callbacks=[devnet.callbacks.GradientFlow()] to fit")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("plot_gradient_flow needs matplotlib: pip install "
                                     "matplotlib") from None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, hist in histories.items():
        names, values = _gradient_series(hist, GRAD_NORM)
        ax.semilogy(range(len(values)), values, marker="o", markersize=3,
                    label=label if label is not None else None)
    ax.set_xlabel("layer (input -> output)")
    ax.set_ylabel("RMS gradient norm ||dW|| (last epoch)")
    ax.set_title(title or "gradient flow")
    ax.grid(True, which="both", alpha=0.3)
    if any(label is not None for label in histories):
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
