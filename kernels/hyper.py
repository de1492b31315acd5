"""``opt_advance``: an optimizer's per-step scalars advanced on the device, one thread.

Compiled by ``cpu/`` (``njit``) and ``cuda/`` (a one-thread kernel); ``reference.opt_advance``
is its oracle. The layout of ``hyper`` and ``table``: ``table.hyper_layout``.
"""

from __future__ import annotations

from devnet.kernels.table import HYPER_CLIP, HYPER_GSCALE, HYPER_STEPWISE0, HYPER_T, HYPER_T0

# The slots baked into the compiled kernels, in their cache names (Numba's disk cache watches
# only the file a kernel is defined in, not table.py).
LAYOUT_TAG = f"{HYPER_T}{HYPER_T0}{HYPER_GSCALE}{HYPER_CLIP}{HYPER_STEPWISE0}"


def opt_advance(hyper, table):
    """``t += 1``; the stepwise slots <- row ``min(t - 1 - t0, rows - 1)`` of ``table``.

    hyper: (H,) float64, H >= 2 + table's columns; table: (rows, columns) float64, rows >= 1.
    The row is clamped to [0, rows - 1] whatever ``hyper`` holds (NaN included).
    """
    t = hyper[HYPER_T] + 1.0
    hyper[HYPER_T] = t
    ahead = min(t - hyper[HYPER_T0], table.shape[0])  # float: a NaN fails the test below
    row = int(ahead) - 1 if ahead >= 1.0 else 0
    for j in range(table.shape[1]):
        hyper[HYPER_STEPWISE0 + j] = table[row, j]
