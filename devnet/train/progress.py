"""Progress display of ``fit``: one line per epoch on stderr."""

from __future__ import annotations

import os
import sys


class Progress:
    """One line per epoch on stderr: a live tqdm bar on a terminal, else a plain line.

    ``mode``: "auto" shows the bar only on a terminal; True also prints a plain line per epoch
    (flushed as it is written) when stderr is a pipe or file; False shows nothing. The bar
    ends with the epoch's logs, so the line it leaves is the epoch's summary.
    """

    def __init__(self, mode, n: int, epochs: int):
        stream = sys.stderr
        tty = stream is not None and _isatty(stream)
        self.stream, self.n, self.epochs = stream, n, epochs
        self.kind = ("tqdm" if tty and mode else "plain" if mode is True and stream is not None
                     else None)

    def bar(self, epoch: int):
        if self.kind != "tqdm":
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.n, desc=f"epoch {epoch + 1}/{self.epochs}", unit="sample",
                    unit_scale=True, leave=True, file=self.stream)

    def epoch_end(self, bar, epoch: int, logs: dict) -> None:
        fields = {k: v for k, v in logs.items() if k not in ("lr", "time")}
        if bar is not None:
            bar.set_postfix({k: f"{v:.4g}" for k, v in fields.items()}, refresh=False)
            bar.close()
        elif self.kind == "plain":
            rate = self.n / logs["time"] if logs["time"] > 0 else float("inf")
            parts = "  ".join(f"{k} {v:.4g}" for k, v in fields.items())
            self.stream.write(f"epoch {epoch + 1}/{self.epochs}  {parts}  lr {logs['lr']:.3g}  "
                              f"{logs['time']:.2f}s ({rate:,.0f} samples/s)\n")
            self.stream.flush()


def _isatty(stream) -> bool:
    """A terminal a bar can be drawn on (a pty reporting 0 columns would get empty bars)."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # a terminal-like object without a fd
        return True
