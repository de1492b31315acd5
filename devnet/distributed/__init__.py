"""Data-parallel training across processes: MPI (mpi4py) on the CPU, NCCL for CUDA arrays.

    comm = dn.distributed.init()              # under: mpiexec -n 4 python train.py
    model = dn.MLP([784, 1024, 10], backend=comm.device)
    dn.fit(model, X, y, batch_size=512, comm=comm)     # 512 = the GLOBAL batch

Every rank holds the whole data set and the same model. Each step every rank takes its share
(a contiguous slice) of the same globally shuffled batch, scales its loss gradient by its share
of the batch (rows, or sample weight), and the flat gradient buffer is summed across ranks in
place -- one all-reduce per step -- so every rank holds the single-process mean gradient before
the one-pass optimizer update. Parameters, optimizer state and the dropout seed are broadcast
from rank 0 before the first step, after the ranks have checked (one small all-gather) that they
agree on the model, input scaling, loss, optimizer settings, data and training state. At each
epoch end the ranks check that they logged the same metrics (the same validation data) and stop
together when any rank's callbacks stop training.

Failures never hang: an uncaught exception on any rank aborts every rank (``sys.excepthook``
calls ``MPI_Abort``, naming the rank), and every collective is non-blocking and polled against
a deadline (``timeout``), checking once a second whether the ranks on this host are still alive,
so a rank that was killed is named within about a second and one that stopped answering within
``timeout`` seconds.
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
