"""Data-parallel fit on 2 MPI ranks (CPU): equality with one process, reruns, faults, resume.

Each test runs ``tests/_distributed_worker.py`` under mpiexec in a subprocess bounded by a
timeout; the worker trains on fixed random data (the data are the same on every rank by design).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from devnet import distributed
from devnet.errors import DevnetError

WORKER = str(Path(__file__).with_name("_distributed_worker.py"))
LIMIT = 60  # seconds any one subprocess may take (the test fails instead of hanging)


def _mpiexec_reason():
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'devnet-mlp[mpi]')"
    try:
        distributed.mpiexec_command(2)
    except DevnetError as exc:
        return str(exc)
    return None


pytestmark = pytest.mark.skipif(_mpiexec_reason() is not None,
                                reason=f"no MPI: {_mpiexec_reason()}")


def _env():
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
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT, env=_env())
    secs = time.monotonic() - start
    result = dict(np.load(out)) if proc.returncode == 0 else None
    return result, proc, secs


def ok(result, proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return result


def test_two_ranks_equal_single_process_after_200_adam_steps(tmp_path):
    # n=97, batch 32: 4 steps per epoch, the last batch has ONE row, so rank 1's share of it is
    # empty (it adds a zero gradient); 50 epochs = 200 Adam steps, float64
    opts = dict(n=97, batch_size=32, epochs=50)
    single = ok(*run(tmp_path, "single", nproc=0, single=True, **opts)[:2])
    multi = ok(*run(tmp_path, "multi", **opts)[:2])
    assert int(multi["size"]) == 2
    rel = np.abs(multi["params"] - single["params"]).max() / np.abs(single["params"]).max()
    assert rel < 1e-10, rel
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-10)
    np.testing.assert_array_equal(multi["val_accuracy"], single["val_accuracy"])


def _two_gpus_reason():
    import devnet as dn
    from devnet.backend import cuda as cuda_backend

    reason = cuda_backend.unavailable_reason()
    if reason is not None:
        return reason
    gpus = [b for b in dn.available_backends() if b.startswith("cuda")]
    if len(gpus) < 2:
        return f"NCCL needs a GPU per rank; this machine has {len(gpus)}"
    try:
        distributed._nccl_module()
    except DevnetError as exc:
        return str(exc)
    return None


@pytest.mark.gpu
def test_two_ranks_on_gpus_equal_single_process(tmp_path):
    # the real NCCL path (the simulator CI runs it with the NCCL calls done by MPI:
    # tests/test_distributed_cudasim.py); float64 so that only the summation order differs
    reason = _two_gpus_reason()
    if reason is not None:
        pytest.skip(reason)
    opts = dict(n=97, batch_size=32, epochs=50, dropout=0.3, device="cuda")
    single = ok(*run(tmp_path, "single", nproc=0, single=True, **opts)[:2])
    multi = ok(*run(tmp_path, "multi", **opts)[:2])
    assert multi["devices"].tolist() == ["cuda:0", "cuda:1"]
    rel = np.abs(multi["params"] - single["params"]).max() / np.abs(single["params"]).max()
    assert rel < 1e-10, rel
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-10)


@pytest.mark.parametrize("deep", [False, True])
def test_dropout_two_ranks_equal_single_process(tmp_path, deep):
    # issue 15: each rank's shard is keyed by its global first row, so the ranks' masks are the
    # one-process masks; the last batch of n=97 has one row (rank 1's share is empty)
    opts = dict(n=97, batch_size=32, epochs=5, dropout=0.4, sizes=[6, 16, 16, 4], deep=deep)
    single = ok(*run(tmp_path, "single", nproc=0, single=True, **opts)[:2])
    multi = ok(*run(tmp_path, "multi", **opts)[:2])
    rel = np.abs(multi["params"] - single["params"]).max() / np.abs(single["params"]).max()
    assert rel < 1e-10, rel
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-10)


def test_uneven_shards_with_sample_weights_equal_single_process(tmp_path):
    # weights: each rank's share of a batch is its share of the batch's weight, not of its rows
    opts = dict(n=45, batch_size=16, epochs=5, sample_weight=True, sizes=[5, 7, 3])
    single = ok(*run(tmp_path, "single", nproc=0, single=True, **opts)[:2])
    multi = ok(*run(tmp_path, "multi", **opts)[:2])
    rel = np.abs(multi["params"] - single["params"]).max() / np.abs(single["params"]).max()
    assert rel < 1e-12, rel
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-12)


def test_same_run_twice_is_bit_identical(tmp_path):
    first = ok(*run(tmp_path, "a", epochs=3)[:2])
    second = ok(*run(tmp_path, "b", epochs=3)[:2])
    assert first["params"].tobytes() == second["params"].tobytes()
    assert first["loss"].tobytes() == second["loss"].tobytes()


def test_rank_raising_mid_epoch_aborts_every_rank_naming_it(tmp_path):
    _, proc, secs = run(tmp_path, "raise", epochs=50, steps_before_fault=6, scenario="raise")
    assert proc.returncode != 0
    assert secs < 30
    text = proc.stdout + proc.stderr
    assert "injected failure on rank 1" in text
    assert "rank 1 of 2" in text and "aborting every rank" in text


def test_rank_sigkilled_mid_epoch_is_named_and_checkpoint_resumes_exactly(tmp_path):
    ck = str(tmp_path / "ck.safetensors")
    # 4 steps per epoch: killed at global step 10 (epoch 2), after the epoch-1 checkpoint
    _, proc, secs = run(tmp_path, "killed", epochs=6, steps_before_fault=10,
                        scenario="sigkill", checkpoint=ck)
    assert proc.returncode != 0
    assert secs < 30
    text = proc.stdout + proc.stderr
    # named by the launcher (from the pid) or, if it got there first, by rank 0
    assert re.search(r"rank 1 \(pid \d+ on \S+\) (failed|exited)", text), text
    assert os.path.exists(ck)
    resumed = ok(*run(tmp_path, "resumed", epochs=6, resume_from=ck)[:2])
    straight = ok(*run(tmp_path, "straight", epochs=6)[:2])
    assert resumed["params"].tobytes() == straight["params"].tobytes()
    np.testing.assert_array_equal(resumed["loss"], straight["loss"])
    # another world size continues the same run (same global batches): equal to rounding
    alone = ok(*run(tmp_path, "alone", nproc=0, single=True, epochs=6, resume_from=ck)[:2])
    rel = np.abs(alone["params"] - straight["params"]).max() / np.abs(straight["params"]).max()
    assert rel < 1e-12, rel


@pytest.mark.parametrize("scenario, key", [("bad_data", "n_samples"),
                                           ("bad_model", "model")])
def test_ranks_disagreeing_fail_before_the_first_step(tmp_path, scenario, key):
    _, proc, secs = run(tmp_path, scenario, epochs=2, scenario=scenario)
    assert proc.returncode != 0
    assert secs < 30
    text = proc.stdout + proc.stderr
    assert "DistributedError" in text
    assert f"ranks disagree on {key!r} before the first step" in text, text


def test_launch_runs_the_command_on_n_ranks(tmp_path):
    code = ("from mpi4py import MPI; import os; c = MPI.COMM_WORLD; "
            f"open(os.path.join({str(tmp_path)!r}, f'r{{c.rank}}of{{c.size}}'), 'w').close()")
    rc = distributed.launch([sys.executable, "-c", code], nproc=2, env=_env())
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0of2", "r1of2"]


def test_mpiexec_command_rejects_bad_nproc_and_empty_hosts():
    with pytest.raises(distributed.DistributedError, match="nproc must be a positive integer"):
        distributed.mpiexec_command(0)
    with pytest.raises(distributed.DistributedError, match="hosts is empty"):
        distributed.mpiexec_command(2, hosts=[])
    assert distributed.mpiexec_command(2, hosts="a,b")[-2:] == ["-hosts", "a,b"]
