"""Numba's CUDA simulator, made fit for this suite's simulator passes.

The simulator runs each CUDA thread of a block as a Python thread. ``cuda.shared.array`` finds a
block's array by the calling line, in a check-then-insert on a dict that is not atomic: a thread
switch between the two gives some threads an array of their own, and a block-wide reduction then
sums the wrong values (numba-cuda 0.30.4; ``softmax_xent`` returned 8 different values in 100
launches at a 20 us switch interval). ``prepare()`` makes that lookup atomic, and shortens the
GIL switch interval, which the simulator's polling loop otherwise holds for 5 ms at a time while
the threads wait (a simulated training step: 0.64 s at 5 ms, 0.19 s at 0.5 ms).
"""

from __future__ import annotations

import inspect
import sys
import threading
import traceback

import numpy as np

SWITCH_INTERVAL = 5e-4  # seconds


def _lock_shared_arrays() -> bool:
    """Make ``cuda.shared.array`` atomic in the simulator; False where this numba-cuda's lookup
    is not the one patched here (then it is left as it is)."""
    from numba.cuda.simulator import kernelapi

    shared = kernelapi.FakeCUDAShared
    if getattr(shared.array, "_devnet_locked", False):
        return True
    source = inspect.getsource(shared.array)
    if "self._allocations.get(caller)" not in source or "stack[-2][0:2]" not in source:
        return False
    unlocked, lock = shared.array, threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:  # dynamic shared memory: no lookup
            return unlocked(self, shape, dtype, alignment)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        caller = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[0])[0:2]
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    array._devnet_locked = True
    shared.array = array
    return True


def prepare() -> None:
    """Called by conftest in a simulator pass, before any kernel runs."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    _lock_shared_arrays()
