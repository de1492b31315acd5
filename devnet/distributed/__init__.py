"""Data-parallel training across processes: MPI (mpi4py) on the CPU, NCCL for CUDA arrays.

    comm = dn.distributed.init()              # under: mpiexec -n 4 python train.py
    model = dn.MLP([784, 1024, 10], backend=comm.device)
    dn.fit(model, X, y, batch_size=512, comm=comm)     # 512 = the GLOBAL batch

Every rank holds the whole data set and the same model. Each step every rank takes a
contiguous slice of the same globally shuffled batch, scales its loss gradient by its share
(rows, or sample weight), and one in-place all-reduce of the flat gradient buffer gives every
rank the single-process mean gradient. Before the first step the ranks check (one small
all-gather) that they agree on model, data and settings, and rank 0's state is broadcast; at
each epoch end they check that they logged the same metrics and stop together.

Failures never hang: an uncaught exception on any rank aborts every rank (naming it), and every
collective is non-blocking and polled against a deadline (``timeout``), checking once a second
whether the ranks on this host are alive: a killed rank is named within about a second.
"""

from devnet.distributed.communicator import (
    DEFAULT_TIMEOUT,
    TIMEOUT_ENV,
    Communicator,
    DistributedError,
    init,
)
from devnet.distributed.launcher import (
    LAUNCHED_ENV,
    STOP_GRACE,
    in_mpi_job,
    job_size,
    launch,
    launched,
    main,
    mpiexec_command,
)
from devnet.distributed.parallel import DataParallel

__all__ = ["DEFAULT_TIMEOUT", "TIMEOUT_ENV", "Communicator", "DistributedError", "init",
           "LAUNCHED_ENV", "STOP_GRACE", "in_mpi_job", "job_size", "launch", "launched", "main",
           "mpiexec_command", "DataParallel"]
