"""``Backend.clock()``: one timer for profile and benchmarks, synchronised on every device."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

import devnet as dn
from devnet.backend.base import Backend, Clock


class _CountingBackend(dn.backend.cpu.CPUBackend):
    """A CPU backend that records when it is synchronised."""

    def __init__(self):
        super().__init__()
        self.syncs = 0

    def synchronize(self):
        self.syncs += 1


def test_clock_measures_the_region(backend):
    t = backend.clock()
    time.sleep(0.02)
    seconds = t.elapsed()
    assert isinstance(seconds, float) and 0.015 < seconds < 5.0
    assert t.elapsed() == seconds  # stopped once: reading again does not move it


def test_clock_synchronises_before_reading():
    be = _CountingBackend()
    t = be.clock()
    assert be.syncs == 1  # queued work before the region is not counted in it
    t.elapsed()
    assert be.syncs == 2  # the device's work in the region is waited for
    t = be.clock(sync=False)
    assert be.syncs == 2
    t.stop()
    assert t.host_s >= 0.0 and t.elapsed() == t.host_s


def test_clock_is_the_base_contract():
    assert isinstance(dn.get_backend("cpu").clock(), Clock)
    assert Backend.clock.__doc__ and "elapsed" in Backend.clock.__doc__


def test_cuda_clock_uses_events_on_the_simulator():
    """The CUDA backend's clock (events on its stream) under the simulator, in a subprocess."""
    code = (
        "import time, devnet as dn\n"
        "from devnet.backend.cuda import _EventClock\n"
        "be = dn.get_backend('cuda')\n"
        "t = be.clock(); a = be.zeros((4, 4), 'float32'); time.sleep(0.02)\n"
        "s = t.elapsed(); assert isinstance(t, _EventClock), type(t)\n"
        "assert 0.015 < s < 5.0, s\n"
        "u = be.clock(sync=False).stop(); assert u.elapsed() >= 0.0\n"
        "print('ok', s)\n")
    env = dict(os.environ, DEVNET_CUDA_SIMULATOR="1", NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


def test_clock_times_a_kernel(backend, rng):
    x = backend.asarray(rng.standard_normal((64, 64)), dtype=np.float32)
    t = backend.clock()
    backend.matmul(x, x, out=backend.empty((64, 64), np.float32))
    assert t.elapsed() >= 0.0
