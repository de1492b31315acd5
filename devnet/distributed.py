"""Data-parallel training across processes: MPI (mpi4py) on the CPU, NCCL for CUDA arrays.

(Over 400 lines: the communicator, its NCCL path, fit's data-parallel hook and the launcher
share one failure model -- timeouts and dead ranks -- and are read together.)

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

Learnt from ChainerMN (its communicators and multi-node optimizer): a communicator object with
rank / size / intra-node rank (here ``local_rank``, from MPI's shared-memory split), the NCCL
unique id bootstrapped over MPI, parameters broadcast before the first update, rank-0
snapshots. Unlike ChainerMN there is no pack / unpack of per-layer gradients: devnet's gradients
already live in one flat buffer, which is handed to MPI / NCCL as is.

Failures never hang: an uncaught exception on any rank aborts every rank (``sys.excepthook``
calls ``MPI_Abort``, naming the rank), and every collective is non-blocking and polled against
a deadline (``timeout``), checking once a second whether the ranks on this host are still alive,
so a rank that was killed is named within about a second and one that stopped answering within
``timeout`` seconds.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

from devnet.errors import DevnetError, MissingDependencyError
from devnet.train.history import Callback
from devnet.train.step import Batch, StepHook

DEFAULT_TIMEOUT = 60.0  # seconds a collective may wait for the others (env DEVNET_DIST_TIMEOUT)
TIMEOUT_ENV = "DEVNET_DIST_TIMEOUT"
_LIVENESS_PERIOD = 1.0  # seconds between checks that the ranks on this host are still alive
_ABORT_GRACE = 0.5  # seconds between printing why a rank fails and MPI_Abort


class DistributedError(DevnetError, RuntimeError):
    """Ranks disagree, a rank failed, or a collective did not complete in time."""


_COMM: Communicator | None = None


def init(timeout: float | None = None, limit_threads: bool = True) -> Communicator:
    """The communicator of this process (MPI_COMM_WORLD), set up once; later calls return it.

    timeout: seconds (> 0; inf: no limit) a collective may wait for the other ranks before
        raising DistributedError (default ``DEVNET_DIST_TIMEOUT`` or 60); given to a later call,
        it replaces the first one's. A rank that died on this host is detected within about a
        second whatever the timeout.
    limit_threads: ranks sharing a machine split its cores: unless OMP_NUM_THREADS is set, BLAS
        and Numba are held to ``cpu_count // local_size`` threads each (threadpoolctl, if
        installed, for BLAS).
    Installs an excepthook that aborts every rank when one raises uncaught.
    """
    global _COMM
    if not isinstance(limit_threads, (bool, np.bool_)):
        raise DistributedError(f"limit_threads must be True or False, got {limit_threads!r}")
    if timeout is not None:
        timeout = _check_timeout(timeout, "timeout")
    if _COMM is not None:
        if timeout is not None:  # a later explicit timeout applies from now on
            _COMM.timeout = timeout
        return _COMM
    if timeout is None:
        timeout = _env_timeout()
    mpi = _import_mpi()
    _COMM = Communicator(mpi, mpi.COMM_WORLD, timeout)
    _install_excepthook(_COMM)
    if limit_threads:
        _limit_threads(_COMM.local_size)
    return _COMM


def _check_timeout(value, where: str) -> float:
    """``value`` as seconds > 0 (inf: no deadline), or a DistributedError naming ``where``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not value > 0:  # also NaN
        raise DistributedError(f"{where} must be a number of seconds > 0 (inf: no limit), got "
                               f"{value!r} ({type(value).__name__})")
    return float(value)


def _env_timeout() -> float:
    """``DEVNET_DIST_TIMEOUT`` as seconds > 0, or DEFAULT_TIMEOUT when it is unset."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = text
    return _check_timeout(value, f"the environment variable {TIMEOUT_ENV}={text!r}")


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MissingDependencyError(
            f"distributed training needs mpi4py and an MPI library ({exc}); install them with "
            "pip install 'devnet-mlp[mpi]' (mpi4py and the mpich wheel, which brings mpiexec)"
        ) from None
    return MPI


def _install_excepthook(comm: Communicator) -> None:
    """An uncaught exception on one rank would leave the others waiting in a collective:
    print it, name the rank, and abort the whole job.
    """
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if comm.size > 1:  # the one line that matters first, then the traceback
            what = ("was interrupted (KeyboardInterrupt)" if issubclass(
                exc_type, KeyboardInterrupt) else f"failed with {exc_type.__name__}: {exc}")
            sys.stderr.write(f"devnet.distributed: rank {comm.rank} of {comm.size} "
                             f"(pid {os.getpid()} on {comm.host}) {what}; aborting every "
                             "rank\n")
            sys.stderr.flush()
        previous(exc_type, exc, tb)
        if comm.size > 1:
            sys.stderr.flush()
            # MPI_Abort kills the launcher's output forwarding too: give it time to pass the
            # message on first
            time.sleep(_ABORT_GRACE)
            comm.abort(1)

    sys.excepthook = hook


def _limit_threads(local_size: int) -> None:
    if local_size <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, (os.cpu_count() or 1) // local_size)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    global _THREAD_LIMITER
    _THREAD_LIMITER = threadpool_limits(limits=threads, user_api="blas")


_THREAD_LIMITER = None  # kept alive: threadpoolctl restores the limits when it is collected


class Communicator:
    """Rank, size and the collectives fit needs, on MPI (host arrays) or NCCL (CUDA arrays).

    ``rank``/``size``: this process in the job; ``local_rank``/``local_size``: among the ranks
    on this machine (one GPU per local rank); ``device``: the backend name this rank should
    train on ("cuda:<local_rank mod GPUs>" when CuPy sees GPUs, else "cpu").
    """

    def __init__(self, mpi, world, timeout: float):
        self.mpi = mpi
        self.world = world
        self.timeout = timeout
        self.rank = world.Get_rank()
        self.size = world.Get_size()
        self.host = socket.gethostname()
        local = world.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = local.Get_rank()
        self.local_size = local.Get_size()
        local.Free()
        self._nccl = {}  # device id -> _Nccl
        # who is who: one line from rank 0 maps pids (as a launcher reports them) to ranks
        table = self.allgather_json({"pid": os.getpid(), "host": self.host})
        self.pids = [entry["pid"] for entry in table]
        self.hosts = [entry["host"] for entry in table]
        if self.rank == 0 and self.size > 1:
            where = ", ".join(f"rank {r} pid {p} on {h}"
                              for r, (p, h) in enumerate(zip(self.pids, self.hosts)))
            version = " ".join(mpi.Get_library_version().splitlines()[0].split())
            _log(f"devnet.distributed: {self.size} ranks ({version}): {where}")

    def __repr__(self) -> str:
        return (f"<Communicator rank {self.rank}/{self.size} local {self.local_rank}/"
                f"{self.local_size} on {self.host}>")

    @property
    def device(self) -> str:
        from devnet.backend import available_backends

        gpus = [name for name in available_backends() if name.startswith("cuda")]
        return gpus[self.local_rank % len(gpus)] if gpus else "cpu"

    # --- collectives: non-blocking, polled against the deadline ---------------------------

    def allreduce_sum_(self, buf, what: str = "all-reduce", xp=None) -> None:
        """Sum ``buf`` over the ranks, in place. buf: a contiguous host (MPI) or CUDA (NCCL)
        array, the same shape and dtype on every rank; xp: its array module (CUDA arrays).
        """
        _check_buffer(buf, what, "iufc")
        if self.size == 1:
            return
        if isinstance(buf, np.ndarray):
            self._wait(self.world.Iallreduce(self.mpi.IN_PLACE, buf, op=self.mpi.SUM), what)
        else:
            self._nccl_for(buf, xp).allreduce_sum_(buf, what)

    def bcast_(self, buf, root: int = 0, what: str = "broadcast", xp=None) -> None:
        """Overwrite ``buf`` on every rank with rank ``root``'s, in place (host or CUDA)."""
        _check_buffer(buf, what, "biufc")
        root = self._check_root(root, what)
        if self.size == 1:
            return
        if isinstance(buf, np.ndarray):
            self._wait(self.world.Ibcast(buf, root=root), what)
        else:
            self._nccl_for(buf, xp).bcast_(buf, root, what)

    def barrier(self, what: str = "barrier") -> None:
        if self.size > 1:
            self._wait(self.world.Ibarrier(), what)

    def allgather_json(self, obj, what: str = "all-gather") -> list:
        """Every rank's JSON-serialisable ``obj``, in rank order (any size: the lengths are
        gathered first, so ranks whose objects differ in size still meet).
        """
        try:
            blob = json.dumps(obj, sort_keys=True, allow_nan=True).encode()
        except (TypeError, ValueError) as exc:
            raise DistributedError(f"{what}: the object is not JSON-serialisable ({exc}); give "
                                   "dicts, lists, str, int, float, bool or None") from None
        if self.size == 1:
            return [json.loads(blob)]
        sizes = np.empty(self.size, np.int64)
        self._wait(self.world.Iallgather(np.array([len(blob)], np.int64), sizes), what)
        recv = np.empty(int(sizes.sum()), np.uint8)
        send = np.frombuffer(blob, np.uint8)
        self._wait(self.world.Iallgatherv(send, [recv, sizes.tolist()]), what)
        ends = np.cumsum(sizes).tolist()
        return [json.loads(recv[end - size:end].tobytes()) for end, size in zip(ends, sizes)]

    def bcast_json(self, obj, root: int = 0, what: str = "broadcast"):
        """Rank ``root``'s JSON-serialisable ``obj`` on every rank."""
        root = self._check_root(root, what)
        return self.allgather_json(obj, what)[root]

    def _check_root(self, root, what: str) -> int:
        if isinstance(root, (bool, np.bool_)) or not isinstance(root, numbers.Integral) \
                or not 0 <= root < self.size:
            raise DistributedError(f"{what}: root must be a rank 0..{self.size - 1}, got "
                                   f"{root!r}")
        return int(root)

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (MPI_Abort)."""
        self.world.Abort(code)

    def _wait(self, request, what: str) -> None:
        """Poll ``request`` until done; DistributedError if a local rank died or time ran out.

        Polling (rather than a blocking wait) is what makes a timeout possible; MPI progresses
        inside Test(), so the loop spins briefly before it starts to sleep between polls.
        """
        start = time.monotonic()
        check = start + _LIVENESS_PERIOD
        polls = 0
        while not request.Test():
            polls += 1
            if polls > 2000:
                time.sleep(5e-5 if polls < 20000 else 1e-3)
            now = time.monotonic()
            if now >= check:
                check = now + _LIVENESS_PERIOD
                dead = self.dead_ranks()
                if dead:
                    raise self._failed(f"rank {self.rank} of {self.size}: {what} cannot "
                                       f"complete: {_ranks(dead)} ({self._where(dead)}) "
                                       "exited or was killed")
                if now - start > self.timeout:
                    raise DistributedError(
                        f"rank {self.rank} of {self.size}: {what} did not complete within "
                        f"{self.timeout:g} s: another rank failed, is stuck, or is far behind "
                        "(init(timeout=...) or DEVNET_DIST_TIMEOUT sets the limit)")

    def _failed(self, message: str) -> DistributedError:
        """The error for a dead peer, its message printed at once: the launcher may kill this
        rank too before a traceback gets out.
        """
        sys.stderr.write(f"devnet.distributed: {message}\n")
        sys.stderr.flush()
        return DistributedError(message)

    def dead_ranks(self) -> list[int]:
        """The ranks on this host whose process is gone (other hosts cannot be checked)."""
        return [r for r, (pid, host) in enumerate(zip(self.pids, self.hosts))
                if r != self.rank and host == self.host and not _alive(pid)]

    def _where(self, ranks) -> str:
        return ", ".join(f"pid {self.pids[r]} on {self.hosts[r]}" for r in ranks)

    def _nccl_for(self, buf, xp) -> _Nccl:
        device = buf.data.device_id
        if device not in self._nccl:
            if xp is None:
                from devnet.kernels.reference import get_xp

                xp = get_xp(buf)
            self._nccl[device] = _Nccl(self, xp, device)
        return self._nccl[device]


def _check_buffer(buf, what: str, kinds: str) -> None:
    """A DistributedError unless ``buf`` is a writable C-contiguous NumPy array, or a CuPy-style
    device array (``.data.device_id``), of a dtype kind in ``kinds`` (checked on every world
    size, so a script that works on one rank works on N).
    """
    if not isinstance(buf, np.ndarray) and not hasattr(getattr(buf, "data", None),
                                                           "device_id"):
        raise DistributedError(f"{what}: needs a NumPy array (MPI) or a CuPy array (NCCL), "
                               f"got {type(buf).__name__}")
    dtype = np.dtype(buf.dtype)
    if dtype.kind not in kinds:
        valid = {"b": "bool", "i": "int", "u": "uint", "f": "float", "c": "complex"}
        raise DistributedError(f"{what}: cannot reduce {dtype} arrays; valid kinds: "
                               f"{', '.join(valid[k] for k in kinds)}")
    flags = buf.flags
    if not flags.c_contiguous:
        raise DistributedError(f"{what}: the array must be C-contiguous (one block of memory, "
                               "in place), got a strided view; pass a contiguous array")
    if isinstance(buf, np.ndarray) and not flags.writeable:
        raise DistributedError(f"{what}: the array is read-only; the collective writes in place")


def _ranks(ranks) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def _alive(pid: int) -> bool:
    """Is process ``pid`` running (not gone, not a zombie waiting to be reaped)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def _log(message: str) -> None:
    import logging

    logging.getLogger("devnet").info(message)


# --- NCCL for CUDA arrays ------------------------------------------------------------------------

def _nccl_module():
    """CuPy's NCCL binding (``cupy.cuda.nccl``); tests replace this function and nothing more."""
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        raise MissingDependencyError(f"NCCL is not usable from CuPy ({exc}); install "
                                     "nvidia-nccl-cu12 (or -cu13) for CuPy") from None
    if not getattr(nccl, "available", True):
        raise MissingDependencyError("CuPy was built without NCCL or cannot load it; install "
                                     "nvidia-nccl-cu12 (or -cu13)")
    return nccl


def _nccl_communicator(nccl, size: int, uid: bytes, rank: int):
    """``nccl.NcclCommunicator`` for the unique id's raw bytes, in the form the binding takes:
    bytes from CuPy 14 on, a tuple of signed chars (ncclUniqueId's ``char[128]``) in CuPy 13.

    The binding's typed signature refuses the other form with a TypeError before it calls NCCL,
    so trying bytes first never creates a second communicator.
    """
    try:
        return nccl.NcclCommunicator(size, uid, rank)
    except TypeError:
        return nccl.NcclCommunicator(size, tuple(np.frombuffer(uid, np.int8).tolist()), rank)


class _Nccl:
    """One NCCL communicator per device, its unique id broadcast from rank 0 over MPI."""

    def __init__(self, comm: Communicator, xp, device: int):
        self.comm, self.nccl, self.xp, self.device = comm, _nccl_module(), xp, device
        self.types = {np.dtype(np.float32): self.nccl.NCCL_FLOAT32,
                      np.dtype(np.float64): self.nccl.NCCL_FLOAT64}
        uid = None
        if comm.rank == 0:  # bytes (CuPy >= 14) or signed chars (CuPy 13): sent as 0..255
            uid = list(bytes(v & 0xFF for v in self.nccl.get_unique_id()))
        uid = bytes(comm.bcast_json(uid, what="NCCL id broadcast"))
        with xp.cuda.Device(device):
            self.handle = _nccl_communicator(self.nccl, comm.size, uid, comm.rank)

    def _type(self, buf):
        try:
            return self.types[np.dtype(buf.dtype)]
        except KeyError:
            raise DistributedError(f"NCCL all-reduce of {buf.dtype} arrays: valid dtypes are "
                                   "float32, float64") from None

    # Each call runs on the communicator's device, on that device's current stream (the
    # backend's, inside its scope): the completion event must be recorded there, or it is
    # done at once and the deadline never applies.

    def allreduce_sum_(self, buf, what: str) -> None:
        with self.xp.cuda.Device(self.device):
            stream = self.xp.cuda.get_current_stream()
            self.handle.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._type(buf),
                                  self.nccl.NCCL_SUM, stream.ptr)
            self._wait(stream, what)

    def bcast_(self, buf, root: int, what: str) -> None:
        with self.xp.cuda.Device(self.device):
            stream = self.xp.cuda.get_current_stream()
            self.handle.bcast(buf.data.ptr, buf.size, self._type(buf), root, stream.ptr)
            self._wait(stream, what)

    def _wait(self, stream, what: str) -> None:
        """Poll an event after the NCCL call; on a dead rank or the deadline, abort NCCL."""
        event = stream.record()
        start = time.monotonic()
        check = start + _LIVENESS_PERIOD
        while not event.done:
            time.sleep(5e-5)
            now = time.monotonic()
            if now >= check:
                check = now + _LIVENESS_PERIOD
                dead = self.comm.dead_ranks()
                if dead or now - start > self.comm.timeout:
                    self.handle.abort()
                    cause = (f"{_ranks(dead)} exited or was killed" if dead else
                             f"not complete within {self.comm.timeout:g} s")
                    raise self.comm._failed(f"rank {self.comm.rank} of {self.comm.size}: "
                                            f"NCCL {what}: {cause}")


# --- the data-parallel side of fit ---------------------------------------------------------------

class DataParallel(StepHook):
    """What ``fit(..., comm=comm)`` does besides the single-process step (its Step hook).

    Built before the first step: checks that the ranks agree, broadcasts rank 0's parameters,
    optimizer state and shuffling RNG. Then per step: ``batch`` (``shard``) picks this rank's
    rows of the global batch, with the global row they start at (the dropout masks are keyed
    by it, so the ranks drop what one process would), ``scale_`` weighs its loss gradient by
    its share, ``allreduce_grads_`` sums the flat gradient buffer (as the Step's hook:
    ``collective``, so the divergence guard's single-process replay leaves it out); per epoch
    ``sum_losses`` adds the ranks' loss contributions, and ``root_only`` brackets the callbacks
    with ``agree_on_logs_`` (first) and ``agree_on_stop`` (last).
    """

    collective = True

    def __init__(self, comm: Communicator, trainer, X, y, sample_weight):
        if not isinstance(comm, Communicator):
            raise DistributedError(f"comm must be the Communicator from "
                                   f"devnet.distributed.init(), got {type(comm).__name__}")
        self.comm, self.trainer = comm, trainer
        self.model = trainer.model
        self.sample_weight = sample_weight
        self.factor = 1.0
        self._check_agreement(X, y, sample_weight)
        self._broadcast_state()

    @property
    def is_root(self) -> bool:
        return self.comm.rank == 0

    def _signature(self, X, y, sw) -> dict:
        t = self.trainer
        opt = t.optimizer
        scaling = self.model.input_scaling
        return {
            # seed and dropout_seed: rank 0's parameters and dropout seed are broadcast
            "model": {k: v for k, v in self.model.config().items()
                      if k not in ("seed", "dropout_seed")},
            "n_params": int(self.model.n_params),
            "input_scaling": None if scaling is None else [_digest(a) for a in scaling],
            "loss": t.loss.config(), "optimizer": opt.name,
            "optimizer_settings": json.loads(json.dumps({
                "lr": opt.schedule.config() if opt.schedule is not None else opt.base_lr,
                **opt.hyperparameters()}, default=repr)),
            "optimizer_state": sorted(opt.state), "optimizer_t": int(opt.t),
            "n_samples": int(len(X)), "X": [list(X.shape), str(X.dtype), _digest(X)],
            "y": [list(y.shape), str(y.dtype), _digest(y)],
            "sample_weight": None if sw is None else _digest(sw),
            "batch_size": t.batch_size, "epochs": t.epochs, "shuffle": t.shuffle,
            "epoch": t.epochs_done, "step": t.step,
        }

    def _check_agreement(self, X, y, sw) -> None:
        """One all-gather of a small signature; the first difference from rank 0 is an error."""
        mine = self._signature(X, y, sw)
        every = self.comm.allgather_json(mine, "start-of-fit check")
        for rank, theirs in enumerate(every):
            for key in mine:
                if theirs[key] != every[0][key]:
                    hint = _HINTS.get(key, "")
                    raise DistributedError(
                        f"ranks disagree on {key!r} before the first step: rank 0 has "
                        f"{_short(every[0][key])}, rank {rank} has {_short(theirs[key])}. "
                        f"Every rank must run fit on the same model, data and settings{hint}")

    def _broadcast_state(self) -> None:
        """Rank 0's parameters, optimizer state and shuffling RNG on every rank."""
        comm, opt, t = self.comm, self.trainer.optimizer, self.trainer
        be = self.model.backend
        # on the backend's device and stream, ordered with the steps that follow
        with be.scope():
            comm.bcast_(self.model.params, what="parameter broadcast", xp=be.xp)
            for name in sorted(opt.state):
                comm.bcast_(opt.state[name], what=f"optimizer state {name!r} broadcast",
                            xp=be.xp)
        # seed=None draws a different seed on every rank; the batches must be the same
        state = comm.bcast_json(_jsonable(t.rng.bit_generator.state), what="RNG broadcast")
        t.rng.bit_generator.state = state
        # and so are the dropout masks (MLP(seed=None) draws its dropout seed per rank too)
        self.model.dropout_seed = comm.bcast_json(self.model.dropout_seed,
                                                  what="dropout seed broadcast")

    def shard(self, order, lo: int, hi: int) -> tuple[int, int]:
        """This rank's positions [a, b) of the global batch at positions lo..hi-1 of the epoch's
        ``order`` (a contiguous part of it; order None: 0..n-1); sets ``factor``.

        A rank whose share is empty (a last batch smaller than the world) takes the batch's
        first row with factor 0: its gradient adds exactly 0, and no kernel sees 0 rows.
        """
        n, size, rank = hi - lo, self.comm.size, self.comm.rank
        a, b = lo + rank * n // size, lo + (rank + 1) * n // size
        if b == a:
            self.factor = 0.0
            return lo, lo + 1
        sw = self.sample_weight
        if sw is None:
            self.factor = (b - a) / n
        else:  # the loss normalises weights by the batch's mean: the share is by weight
            idx = np.arange(lo, hi) if order is None else order[lo:hi]
            mine = idx[a - lo:b - lo]
            total = float(sw[idx].sum(dtype=np.float64))
            self.factor = float(sw[mine].sum(dtype=np.float64)) / total if total > 0 else 0.0
        return a, b

    def batch(self, feed, lo: int, hi: int) -> Batch:
        """This rank's Batch of the global batch at positions lo..hi-1 of ``feed``'s epoch order
        (``shard``); its ``row0`` is where the rank's rows start in the global batch."""
        a, b = self.shard(feed.order, lo, hi)
        return feed.batch(a, b)._replace(row0=a - lo)

    # the Step hooks: this rank's share of dL/dpred, then the all-reduce of the gradients

    def output_grad_(self, grad, value, batch):
        """Step hook: ``scale_`` (weigh this rank's rows by their share of the global batch)."""
        return self.scale_(grad, value)

    def param_grad_(self, value, batch):
        """Step hook: ``allreduce_grads_`` (sum the gradient over the ranks) before the update."""
        self.allreduce_grads_()
        return value

    def scale_(self, grad, value):
        """``grad *= factor`` in place (dL/dpred of this rank's rows); returns value * factor.

        After this the sum over ranks of the gradients (and values) is the global batch mean.
        """
        if self.factor != 1.0:
            grad *= grad.dtype.type(self.factor)
            value = value * self.factor
        return value

    def allreduce_grads_(self) -> None:
        """Sum the flat gradient buffer over the ranks, in place: one call per step."""
        self.comm.allreduce_sum_(self.model.grads, f"gradient all-reduce (step "
                                 f"{self.trainer.step})", self.model.backend.xp)

    def sum_losses(self, acc, last):
        """The epoch's loss sums added over the ranks: (acc, last) as floats (last may be None).

        Also checks that the ranks' parameters are still the same (a float64 sum of them, one
        number per rank): a silently drifting rank would train another model.
        """
        vals = np.array([float(acc), 0.0 if last is None else float(last)])
        self.comm.allreduce_sum_(vals, f"epoch {self.trainer.epoch} loss sum")
        check = float(self.model.backend.xp.sum(self.model.params, dtype=np.float64))
        sums = self.comm.allgather_json(check, "parameter check")
        differ = [r for r, v in enumerate(sums) if v != sums[0] and v == v]
        if differ:
            raise DistributedError(f"the parameters of {_ranks(differ)} differ from rank 0's "
                                   f"after epoch {self.trainer.epoch} (sums {sums})")
        return float(vals[0]), None if last is None else float(vals[1])

    def root_only(self, progress, callbacks: list):
        """Progress and file-writing callbacks (checkpoints, CSV logs) stay on rank 0; every
        rank's callbacks are run between ``_AgreeOnLogs`` and ``_AgreeOnStop``, so that they
        see rank 0's epoch logs and the ranks stop together.
        """
        if not self.is_root:
            from devnet.callbacks import CSVLogger, ModelCheckpoint

            progress = False
            callbacks = [cb for cb in callbacks if not isinstance(cb, (ModelCheckpoint,
                                                                       CSVLogger))]
        return progress, [_AgreeOnLogs(self), *callbacks, _AgreeOnStop(self)]

    def agree_on_logs_(self, epoch: int, logs: dict) -> None:
        """Check that every rank's epoch logs are rank 0's, then make them exactly rank 0's
        (in ``logs`` and the History), so callbacks decide alike on every rank.

        The parameters are the same on every rank, so the metrics differ only when the ranks
        evaluate different data (validation_data) -- or, in the last digits, run different
        BLAS builds: the tolerance is by dtype.
        """
        mine = {k: float(v) for k, v in logs.items()
                if k != "time" and isinstance(v, numbers.Real)}
        every = self.comm.allgather_json(mine, f"epoch {epoch} logs")
        root = every[0]
        rtol = 1e-4 if self.model.dtype == np.float32 else 1e-9
        for rank, theirs in enumerate(every[1:], 1):
            if set(theirs) != set(root):
                raise DistributedError(
                    f"ranks disagree on what epoch {epoch} logged: rank 0 has "
                    f"{sorted(root)}, rank {rank} has {sorted(theirs)}; pass the same "
                    "validation_data / validation_split and train_metrics on every rank")
            for key, value in root.items():
                other = theirs[key]
                if not (math.isclose(value, other, rel_tol=rtol, abs_tol=rtol)
                        or (value != value and other != other)):
                    raise DistributedError(
                        f"ranks disagree on {key!r} after epoch {epoch}: rank 0 has "
                        f"{value!r}, rank {rank} has {other!r}; every rank must pass the same "
                        f"validation_data (and sample weights), or callbacks such as "
                        f"EarlyStopping would decide differently on each")
        history = self.trainer.history.history
        for key, value in root.items():
            logs[key] = value
            if history.get(key):
                history[key][-1] = value

    def agree_on_stop(self, epoch: int) -> None:
        """Stop every rank when any rank's callbacks stopped it (else the others would wait
        in the next step's all-reduce until the timeout).
        """
        flags = self.comm.allgather_json(bool(self.trainer.stop_training),
                                         f"epoch {epoch} stop decision")
        if any(flags) and not all(flags) and self.is_root:
            stopped = [r for r, flag in enumerate(flags) if flag]
            _log(f"devnet.distributed: {_ranks(stopped)} stopped training after epoch "
                 f"{epoch}; every rank stops")
        self.trainer.stop_training = any(flags)


class _AgreeOnLogs(Callback):
    """Run first at each epoch end: ``DataParallel.agree_on_logs_``."""

    def __init__(self, dist: DataParallel):
        self.dist = dist

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self.dist.agree_on_logs_(epoch, logs)


class _AgreeOnStop(Callback):
    """Run last at each epoch end: ``DataParallel.agree_on_stop``."""

    def __init__(self, dist: DataParallel):
        self.dist = dist

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self.dist.agree_on_stop(epoch)


_HINTS = {
    "input_scaling": " (compute the standardisation from the same data on every rank, or "
                     "on rank 0 and broadcast it)",
    "optimizer_settings": " (give every rank the same lr, schedule and optimizer arguments)",
    "n_samples": " (each rank loads the whole data set; fit shards every batch itself)",
    "X": " (each rank loads the whole, identical data set; fit shards every batch itself)",
    "y": " (each rank loads the whole, identical data set; fit shards every batch itself)",
    "model": " (build the model from the same arguments on every rank)",
    "epoch": " (resume every rank from the same checkpoint)",
    "step": " (resume every rank from the same checkpoint)",
    "optimizer_t": " (resume every rank from the same checkpoint)",
}


_DIGEST_CHUNK = 16 << 20  # bytes hashed per update: memory stays bounded whatever the size


def _digest(a: np.ndarray) -> str:
    """A fingerprint of every byte of an array, in C order (whatever its memory layout), fed
    to the hash in chunks: a rank whose data differ in one value must not pass, and a sample
    of a large array would let it.
    """
    import hashlib

    a = np.asarray(a)
    digest = hashlib.sha1()
    if a.flags.c_contiguous:
        data = memoryview(a.reshape(-1).view(np.uint8))  # bytes: any dtype, no copy
        for i in range(0, len(data), _DIGEST_CHUNK):
            digest.update(data[i:i + _DIGEST_CHUNK])
    else:  # copies one buffer of C-ordered values at a time
        chunk = max(1, _DIGEST_CHUNK // max(1, a.itemsize))
        for block in np.nditer(a, flags=["external_loop", "buffered", "zerosize_ok"],
                               order="C", buffersize=chunk):
            digest.update(np.ascontiguousarray(block).view(np.uint8))
    return digest.hexdigest()[:16]


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


def _jsonable(state):
    if isinstance(state, dict):
        return {k: _jsonable(v) for k, v in state.items()}
    if isinstance(state, np.integer):
        return int(state)
    return state


# --- launching ----------------------------------------------------------------------------------

LAUNCHED_ENV = "DEVNET_DIST_LAUNCHED"


# set in every rank by the MPI launchers devnet knows (MPICH/Hydra, Open MPI, PMIx, Slurm's PMI)
_MPI_JOB_ENV = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def in_mpi_job(env=None) -> bool:
    """Whether this process is a rank of an MPI job (its launcher's rank variable is set)."""
    env = os.environ if env is None else env
    return any(var in env for var in _MPI_JOB_ENV)


def job_size(env=None) -> int | None:
    """The ranks of the MPI job this process belongs to, as its launcher says (MPICH/Hydra and
    Slurm's PMI, Open MPI), without importing MPI; None outside a job or when not said."""
    env = os.environ if env is None else env
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        try:
            return int(env[var])
        except (KeyError, ValueError):
            continue
    return None


def launched() -> bool:
    """True inside a job started by ``launch`` (so a CLI run does not launch itself again).

    Both the flag ``launch`` sets and an MPI launcher's rank variable must be present: a flag
    leaked into a plain process would otherwise run one process where N were asked for.
    """
    return os.environ.get(LAUNCHED_ENV) == "1" and in_mpi_job()


def _check_nproc(nproc) -> int:
    if isinstance(nproc, (bool, np.bool_)) or not isinstance(nproc, numbers.Integral) \
            or nproc < 1:
        raise DistributedError(f"nproc must be a positive integer, got {nproc!r} "
                               f"({type(nproc).__name__})")
    return int(nproc)


_HOST_NAME = re.compile(r"[A-Za-z0-9_.:\[\]-]+")  # names, IPv4 and bracketed IPv6 addresses


def _check_hosts(hosts) -> list[str]:
    """Host names from "a,b" or a list of names, each checked (no empty or blank names)."""
    if isinstance(hosts, str):
        names = [h.strip() for h in hosts.split(",")]
    elif isinstance(hosts, (list, tuple)):
        names = list(hosts)
    else:
        raise DistributedError(f"hosts must be host names ('a,b' or a list) or a hostfile "
                               f"path, got {hosts!r} ({type(hosts).__name__})")
    if not any(isinstance(h, str) and h.strip() for h in names):
        raise DistributedError(f"hosts is empty ({hosts!r}); give host names, 'a,b' or a "
                               "hostfile path")
    for name in names:
        if not isinstance(name, str) or not _HOST_NAME.fullmatch(name):
            what = ("a missing hostfile" if isinstance(name, str) and os.sep in name
                    else "not a host name")
            raise DistributedError(f"hosts: {name!r} is {what}; give host names such as "
                                   "'node1,node2' (letters, digits, '-', '.', '_', no spaces "
                                   "or empty names) or the path of an existing hostfile")
    return names


def mpiexec_command(nproc: int, hosts=None) -> list[str]:
    """``mpiexec -n nproc [-hosts a,b | -f hostfile]``: the one next to this Python first.

    hosts: None (this machine), "a,b", a list of names, or the path (str or PathLike) of an
    existing hostfile.
    """
    nproc = _check_nproc(nproc)
    if hosts is not None:
        if isinstance(hosts, os.PathLike) or (isinstance(hosts, str) and os.path.isfile(hosts)):
            if not os.path.isfile(hosts):
                raise DistributedError(f"hostfile {os.fspath(hosts)!r} does not exist")
            host_args = ["-f", os.fspath(hosts)]
        else:
            host_args = ["-hosts", ",".join(_check_hosts(hosts))]
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = here if os.path.exists(here) else shutil.which("mpiexec")
    if exe is None:
        raise MissingDependencyError("no mpiexec found (next to this Python or on PATH); "
                                     "install it with pip install 'devnet-mlp[mpi]'")
    cmd = [exe, "-n", str(nproc)]
    return cmd if hosts is None else cmd + host_args


def launch(argv: list[str], nproc: int, hosts=None, env: dict | None = None) -> int:
    """Run ``argv`` (a program and its arguments) as ``nproc`` ranks under mpiexec; its exit code.

    argv: e.g. ``[sys.executable, "-m", "devnet.cli", "train", "--config", "run.toml"]``.
    hosts: None (this machine), host names ("a,b" or a list) or a hostfile path.
    Ranks sharing a machine get one BLAS/OpenMP thread per core share unless set already.
    The job's output passes through; when a rank dies, the launcher reports only its pid
    (MPICH: "PID 814 RUNNING AT host"), so this adds the line naming the rank, from the
    rank table ``init`` prints.
    SIGINT, SIGTERM or SIGHUP to this process stop the job (``_Stop``): every rank is
    interrupted (KeyboardInterrupt: fit's interrupt path) and killed if it has not ended
    ``STOP_GRACE`` seconds later; the return value is then 128 + the signal (130, 143, 129).
    """
    if isinstance(argv, (str, bytes, os.PathLike)) or not isinstance(argv, (list, tuple)) \
            or not argv or not all(isinstance(a, (str, os.PathLike)) for a in argv):
        raise DistributedError(f"argv must be a non-empty list of strings (the program and its "
                               f"arguments, e.g. [sys.executable, 'train.py']), got {argv!r}")
    if env is not None and not (isinstance(env, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise DistributedError("env must be a dict of str to str (the ranks' environment)")
    cmd = mpiexec_command(nproc, hosts) + [os.fspath(a) for a in argv]
    if in_mpi_job():  # every rank of the outer job would start a job of its own
        raise DistributedError(
            f"launch(nproc={nproc}) was called inside a running MPI job (this process is "
            f"rank {os.environ.get('PMI_RANK', os.environ.get('OMPI_COMM_WORLD_RANK', '?'))} "
            "of one): run the program under mpiexec OR give it nproc, not both")
    env = dict(os.environ if env is None else env)
    env[LAUNCHED_ENV] = "1"
    per_rank = str(max(1, (os.cpu_count() or 1) // nproc))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, per_rank)
    watch = _FailureWatch()
    # mpiexec in a process group of its own: a Ctrl-C at the terminal reaches only this
    # launcher, which passes it on once (a second Ctrl-C would make mpiexec kill the ranks
    # at once); a background group cannot read the terminal, so it gets no terminal stdin
    stdin = subprocess.DEVNULL if _is_terminal(sys.stdin) else None
    stop = _Stop(nproc)
    with stop.forwarding():  # from before the start: no moment leaves the job unsupervised
        proc = subprocess.Popen(cmd, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        stop.started(proc)
        pumps = [threading.Thread(target=watch.pump, args=(proc.stdout, sys.stdout),
                                  daemon=True),
                 threading.Thread(target=watch.pump, args=(proc.stderr, sys.stderr),
                                  daemon=True)]
        for pump in pumps:
            pump.start()
        rc = stop.wait()
        for pump in pumps:
            pump.join()
    if stop.signum is not None:  # the ranks' failure lines would only repeat the interrupt
        return 128 + stop.signum
    if rc != 0:
        for line in watch.failures():
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
    return rc


STOP_GRACE = 10.0  # seconds the ranks get to stop after an interrupt before they are killed
# the signals that stop a job; the launcher exits 128 + the signal's number (130, 143, 129)
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                      if hasattr(signal, name))


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor (a test's capture), closed
        return False


class _Stop:
    """How the launcher ends a job when it is told to stop (SIGINT, SIGTERM, SIGHUP).

    The first signal becomes one SIGINT to mpiexec, which passes it to every rank: each
    raises KeyboardInterrupt and leaves fit by its interrupt path (callbacks told, no
    checkpoint half-written). A second signal, or ranks still running ``STOP_GRACE`` seconds
    later, sends mpiexec a second SIGINT: it kills the ranks at once; SIGKILL to mpiexec's
    group follows if even that does not end it. The handler only records and forwards (a
    signal may arrive while this thread writes): ``wait`` reports and enforces the deadlines.
    """

    def __init__(self, nproc: int):
        self.proc, self.nproc = None, nproc
        self.signum: int | None = None
        self.signals = 0  # received so far
        self.told = 0  # of them reported
        self.forced = False
        self.deadline = math.inf

    def forwarding(self):
        """Install the handlers (main thread only: elsewhere Python cannot) until exit."""
        import contextlib

        stack = contextlib.ExitStack()
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                previous = signal.signal(sig, self._handle)
                stack.callback(signal.signal, sig,
                               signal.SIG_DFL if previous is None else previous)
        return stack

    def started(self, proc) -> None:
        """mpiexec runs as ``proc``; a signal that came while it started is passed on now."""
        self.proc = proc
        if self.signum is not None:
            self._send(signal.SIGINT)

    def _handle(self, signum, frame) -> None:
        self.signals += 1
        if self.signum is None:
            self.signum = signum
            self.deadline = time.monotonic() + STOP_GRACE
            self._send(signal.SIGINT)
        elif not self.forced:
            self._force()

    def _force(self) -> None:
        self.forced = True
        self.deadline = time.monotonic() + STOP_GRACE
        self._send(signal.SIGINT)  # mpiexec's second interrupt: it kills every rank

    def _send(self, sig) -> None:
        if self.proc is None:  # not started yet: ``started`` sends it
            return
        try:
            self.proc.send_signal(sig)
        except OSError:  # gone already
            pass

    def wait(self) -> int:
        """mpiexec's exit code, enforcing the deadlines once a stop was asked for."""
        while True:
            try:
                return self.proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            finally:
                self._report()
            if time.monotonic() < self.deadline:
                continue
            if not self.forced:
                self._force()
                _say(f"devnet.distributed: the ranks did not stop within {STOP_GRACE:g} s: "
                     "killing them")
            else:
                _say("devnet.distributed: mpiexec did not end the ranks: killing it")
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (AttributeError, OSError):  # no process groups (Windows), gone
                    self.proc.kill()
                self.deadline = math.inf

    def _report(self) -> None:
        if self.signals > self.told and self.signum is not None:
            name = signal.Signals(self.signum).name
            if self.told == 0:
                _say(f"devnet.distributed: {name}: stopping the {self.nproc} ranks (an "
                     "interrupt to each; checkpoints already written stay valid); another "
                     f"signal, or {STOP_GRACE:g} s, kills them")
            if self.signals > 1 and self.forced:
                _say("devnet.distributed: signalled again: killing the ranks")
            self.told = self.signals


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class _FailureWatch:
    """Reads a job's output as it passes: the rank table, and pids the launcher says died."""

    _TABLE = re.compile(r"rank (\d+) pid (\d+) on (\S+?)(?:,|$)")
    _DIED = re.compile(r"PID (\d+) RUNNING AT (\S+)")
    _CODE = re.compile(r"EXIT CODE: (\d+)")

    def __init__(self):
        self.ranks: dict[int, int] = {}  # pid -> rank
        self.died: list[tuple[int, str, str]] = []  # (pid, host, exit code)
        self._lock = threading.Lock()

    def pump(self, source, sink) -> None:
        for raw in iter(source.readline, b""):
            line = raw.decode(errors="replace")
            sink.write(line)
            sink.flush()
            with self._lock:
                if "devnet.distributed:" in line and " ranks (" in line:
                    for rank, pid, _host in self._TABLE.findall(line):
                        self.ranks[int(pid)] = int(rank)
                for pid, host in self._DIED.findall(line):
                    self.died.append((int(pid), host, "?"))
                code = self._CODE.search(line)
                if code and self.died and self.died[-1][2] == "?":
                    self.died[-1] = (*self.died[-1][:2], code.group(1))

    def failures(self) -> list[str]:
        lines = []
        for pid, host, code in self.died:
            rank = self.ranks.get(pid)
            who = f"rank {rank}" if rank is not None else "a rank"
            how = (f"killed by signal {code}" if code in ("9", "15", "6", "11")
                   else f"exit code {code}")
            lines.append(f"devnet.distributed: {who} (pid {pid} on {host}) failed ({how}); "
                         "the launcher ended every rank")
        return lines


def _program_argv(program: list[str], hosts=None) -> list[str]:
    """The argv mpiexec runs for the launcher's ``PROGRAM [ARGS...]``: a Python script (a path
    ending in .py, or an existing file without execute permission) is run with this Python.

    mpiexec exec()s its program and looks a bare name up on PATH, so ``train.py`` alone failed
    with "execvp error on file train.py"; programs (``python train.py``, ``./run.sh``) pass
    unchanged. On this machine (``hosts`` None) a script that does not exist is refused here,
    before any rank starts.
    """
    first = program[0]
    script = first.lower().endswith(".py")
    if not script and os.path.isfile(first) and not os.access(first, os.X_OK) \
            and shutil.which(first) is None:
        script = True  # mpiexec could not execute it: a script without a shebang and chmod
    if not script:
        return list(program)
    if hosts is None and not os.path.isfile(first):
        raise DistributedError(f"no such script {first!r} (looked in {os.getcwd()!r}); give "
                               "the path of a Python script, or a program and its arguments")
    return [sys.executable, *program]


def main(argv: list[str] | None = None) -> int:
    """``python -m devnet.distributed -n N [--hosts H] PROGRAM [ARGS...]``: ``launch`` it.

    PROGRAM is a program (``python``, ``./run.sh``) or a Python script (``train.py``), which
    runs with this Python (``_program_argv``).
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devnet.distributed",
                                     description="Run a program as N MPI ranks (mpiexec).")
    parser.add_argument("-n", "--nproc", type=int, required=True)
    parser.add_argument("--hosts", default=None, help="a,b or a hostfile path")
    parser.add_argument("program", nargs=argparse.REMAINDER,
                        help="a program and its arguments (python train.py), or a Python script "
                        "and its arguments (train.py: run with this Python)")
    args = parser.parse_args(argv)
    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program:
        parser.error("no program given")
    try:
        return launch(_program_argv(program, args.hosts), args.nproc, args.hosts)
    except DevnetError as exc:
        sys.stderr.write(f"python -m devnet.distributed: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
