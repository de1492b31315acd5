"""Data-parallel fit on the CUDA backend: 2 ranks under mpiexec on Numba's CUDA simulator.

Runs in the simulator pass of ``make test`` (``DEVNET_CUDA_SIMULATOR=1``, inherited by the
ranks). Each rank trains on its own simulated device (``comm.device``: cuda:0 and cuda:1) with
the real CUDA backend; the NCCL calls alone are carried out by MPI
(``tests/helpers/distributed_worker.py``'s ``MpiNccl``), so devnet's NCCL path -- the id broadcast,
device pointers, dtypes, streams and events, the parameter and state broadcasts, one gradient
all-reduce per step -- runs end to end. The same test on real GPUs, with real NCCL, is
``test_distributed.py::test_two_ranks_on_gpus_equal_single_process`` (``make gpu-check``).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.mpi import mpiexec_reason, ok, run

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(mpiexec_reason() is not None, reason=f"no MPI: {mpiexec_reason()}"),
]


def test_two_ranks_on_cuda_equal_one_process_through_nccl(tmp_path):
    # n=37, batch 16: 3 steps per epoch, the last with 5 rows (2 and 3 per rank); dropout keys
    # its masks by the global row, so the ranks drop what one process drops; float64 Adam
    opts = dict(n=37, batch_size=16, epochs=2, dropout=0.3, device="cuda", nccl="mpi")
    single = ok(*run(tmp_path, "single", nproc=0, single=True, **opts)[:2])
    multi = ok(*run(tmp_path, "multi", **opts)[:2])
    assert single["devices"].tolist() == ["cuda:0"]
    assert multi["devices"].tolist() == ["cuda:0", "cuda:1"]  # one device per local rank
    init, allreduce, bcast = multi["nccl"].tolist()
    # one communicator; one all-reduce per step; rank 0's parameters and Adam's two moments
    assert (init, allreduce, bcast) == (1, 2 * 3, 3)
    # every NCCL call runs on the rank's own device and the model's stream, the start-of-fit
    # broadcasts included (outside the backend's scope: GPU 0's null stream, unordered with
    # the step, and the completion event polled against the deadline recorded on GPU 0)
    assert multi["nccl_scope"].tolist() == []
    rel = np.abs(multi["params"] - single["params"]).max() / np.abs(single["params"]).max()
    assert rel < 1e-10, rel
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-10)
    np.testing.assert_array_equal(multi["val_accuracy"], single["val_accuracy"])
