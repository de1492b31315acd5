"""MPI's availability, and a worker script run on N ranks through devnet's launcher (or as one
plain process, the oracle), each bounded by a timeout so that a hang fails the test."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from devnet import distributed
from devnet.errors import DevnetError

HERE = Path(__file__).resolve().parent
WORKER = str(HERE / "distributed_worker.py")  # the default worker: a small data-parallel fit
PER_RANK_WORKER = str(HERE / "per_rank_settings_worker.py")  # ranks given different settings
LIMIT = 60  # seconds any one subprocess may take (the test fails instead of hanging)


def mpiexec_reason():
    """Why 2 MPI ranks cannot run here (None: they can)."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'devnet-mlp[mpi]')"
    try:
        distributed.mpiexec_command(2)
    except DevnetError as exc:
        return str(exc)
    return None


def mpi_env():
    """The environment of a worker: one thread per rank, no device or timeout from outside."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1")
    env.pop("DEVNET_DEVICE", None)
    env.pop("DEVNET_DIST_TIMEOUT", None)
    return env


def run(tmp_path, name, nproc=2, worker=WORKER, **opts):
    """Run ``worker`` on ``nproc`` ranks (0: one plain process); (result or None, proc, secs)."""
    out = tmp_path / f"{name}.npz"
    args = [sys.executable, worker, str(out), json.dumps(opts)]
    # ranks run through devnet's launcher (mpiexec underneath), as ``devnet train --nproc`` does
    cmd = args if nproc == 0 else [sys.executable, "-m", "devnet.distributed", "-n",
                                   str(nproc), *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT, env=mpi_env())
    secs = time.monotonic() - start
    result = dict(np.load(out)) if proc.returncode == 0 else None
    return result, proc, secs


def ok(result, proc):
    """``result``, once the worker has exited 0 (else its output is the failure)."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return result
