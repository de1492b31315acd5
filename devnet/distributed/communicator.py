"""The communicator: rank, size and the collectives ``fit`` needs, on MPI (host arrays) or
NCCL (CUDA arrays), none of which can hang (see ``devnet.distributed``)."""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
import os
import socket
import sys
import time

import numpy as np

from devnet.errors import DevnetError, MissingDependencyError

DEFAULT_TIMEOUT = 60.0  # seconds a collective may wait for the others (env DEVNET_DIST_TIMEOUT)
TIMEOUT_ENV = "DEVNET_DIST_TIMEOUT"
_LIVENESS_PERIOD = 1.0  # seconds between checks that the ranks on this host are still alive
_ABORT_GRACE = 0.5  # seconds between printing why a rank fails and MPI_Abort


class DistributedError(DevnetError, RuntimeError):
    """Ranks disagree, a rank failed, or a collective did not complete in time."""


_COMM: Communicator | None = None


def init(timeout: float | None = None, limit_threads: bool = True) -> Communicator:
    """The communicator of this process (MPI_COMM_WORLD), set up once; later calls return it.

    timeout: seconds (> 0; inf: no limit) a collective waits for the other ranks before raising
        DistributedError (default ``DEVNET_DIST_TIMEOUT`` or 60); a later call's replaces it.
    limit_threads: unless OMP_NUM_THREADS is set, ranks sharing a machine hold BLAS and Numba
        to ``cpu_count // local_size`` threads each.
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
    """Print an uncaught exception naming the rank, then abort the job (else the other ranks
    would wait in a collective)."""
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if comm.size > 1:
            what = ("was interrupted (KeyboardInterrupt)" if issubclass(
                exc_type, KeyboardInterrupt) else f"failed with {exc_type.__name__}: {exc}")
            say(f"devnet.distributed: rank {comm.rank} of {comm.size} (pid {os.getpid()} on "
                f"{comm.host}) {what}; aborting every rank")
        previous(exc_type, exc, tb)
        if comm.size > 1:
            sys.stderr.flush()
            time.sleep(_ABORT_GRACE)  # MPI_Abort also kills the launcher's output forwarding
            comm.abort(1)

    sys.excepthook = hook


def _limit_threads(local_size: int) -> None:
    if local_size <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, (os.cpu_count() or 1) // local_size)
    with contextlib.suppress(ImportError, ValueError):
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    global _THREAD_LIMITER
    _THREAD_LIMITER = threadpool_limits(limits=threads, user_api="blas")


_THREAD_LIMITER = None  # kept alive: threadpoolctl restores the limits when it is collected


class Communicator:
    """Rank, size and the collectives fit needs, on MPI (host arrays) or NCCL (CUDA arrays).

    ``local_rank``/``local_size``: among the ranks on this machine; ``device``: the backend
    this rank trains on ("cuda:<local_rank mod GPUs>" when CuPy sees GPUs, else "cpu").
    """

    def __init__(self, mpi, world, timeout: float):
        self.mpi, self.world, self.timeout = mpi, world, timeout
        self.rank, self.size = world.Get_rank(), world.Get_size()
        self.host = socket.gethostname()
        local = world.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
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
            log(f"devnet.distributed: {self.size} ranks ({version}): {where}")

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
        array, the same shape and dtype on every rank; xp: its array module (CUDA arrays)."""
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
        """Every rank's JSON-serialisable ``obj``, in rank order (the lengths are gathered
        first, so objects may differ in size)."""
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

    def _poll(self, done, spin: int) -> list[int] | None:
        """Call ``done()`` until it is true (returns None), checking once a second whether ranks
        on this host died (returns them) or the deadline passed (returns []).

        Polling makes a timeout possible; MPI progresses inside Test(), so the loop spins
        ``spin`` times before it sleeps between polls.
        """
        start = time.monotonic()
        check, polls = start + _LIVENESS_PERIOD, 0
        while not done():
            polls += 1
            if polls > spin:
                time.sleep(5e-5 if polls < 20000 else 1e-3)
            now = time.monotonic()
            if now >= check:
                check = now + _LIVENESS_PERIOD
                dead = self.dead_ranks()
                if dead or now - start > self.timeout:
                    return dead
        return None

    def _wait(self, request, what: str) -> None:
        """Wait for an MPI request; DistributedError if a local rank died or time ran out."""
        dead = self._poll(request.Test, spin=2000)
        if dead:
            raise self._failed(f"rank {self.rank} of {self.size}: {what} cannot complete: "
                               f"{name_ranks(dead)} ({self._where(dead)}) exited or was killed")
        if dead is not None:
            raise DistributedError(
                f"rank {self.rank} of {self.size}: {what} did not complete within "
                f"{self.timeout:g} s: another rank failed, is stuck, or is far behind "
                "(init(timeout=...) or DEVNET_DIST_TIMEOUT sets the limit)")

    def _failed(self, message: str) -> DistributedError:
        """The error for a dead peer, printed at once: the launcher may kill this rank before a
        traceback gets out."""
        say(f"devnet.distributed: {message}")
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
    device array, of a dtype kind in ``kinds`` (checked at any size: what runs on 1 rank runs
    on N)."""
    if not isinstance(buf, np.ndarray) and not hasattr(getattr(buf, "data", None),
                                                           "device_id"):
        raise DistributedError(f"{what}: needs a NumPy array (MPI) or a CuPy array (NCCL), "
                               f"got {type(buf).__name__}")
    dtype = np.dtype(buf.dtype)
    if dtype.kind not in kinds:
        valid = {"b": "bool", "i": "int", "u": "uint", "f": "float", "c": "complex"}
        raise DistributedError(f"{what}: cannot reduce {dtype} arrays; valid kinds: "
                               f"{', '.join(valid[k] for k in kinds)}")
    if not buf.flags.c_contiguous:
        raise DistributedError(f"{what}: the array must be C-contiguous (one block of memory, "
                               "in place), got a strided view; pass a contiguous array")
    if isinstance(buf, np.ndarray) and not buf.flags.writeable:
        raise DistributedError(f"{what}: the array is read-only; the collective writes in place")


def name_ranks(ranks) -> str:
    """"rank 3" or "ranks 1, 2": the ranks named in a message."""
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


log = logging.getLogger("devnet").info  # one line of the job's story


def say(line: str) -> None:
    """``line`` on stderr, flushed at once."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


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
    """``nccl.NcclCommunicator`` for the unique id: bytes from CuPy 14 on, a tuple of signed
    chars in CuPy 13 (the binding raises TypeError for the other form before calling NCCL)."""
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
        uid = None  # bytes (CuPy >= 14) or signed chars (CuPy 13): sent as 0..255
        if comm.rank == 0:
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

    def allreduce_sum_(self, buf, what: str) -> None:
        self._run(lambda s: self.handle.allReduce(buf.data.ptr, buf.data.ptr, buf.size,
                                                  self._type(buf), self.nccl.NCCL_SUM, s), what)

    def bcast_(self, buf, root: int, what: str) -> None:
        self._run(lambda s: self.handle.bcast(buf.data.ptr, buf.size, self._type(buf), root, s),
                  what)

    def _run(self, call, what: str) -> None:
        """``call(stream_ptr)`` on the device's current stream (the backend's, inside its scope:
        an event recorded on another would be done at once and escape the deadline), then poll
        its completion; on a dead rank or the deadline, abort NCCL."""
        with self.xp.cuda.Device(self.device):
            stream = self.xp.cuda.get_current_stream()
            call(stream.ptr)
            self._wait(stream, what)

    def _wait(self, stream, what: str) -> None:
        event = stream.record()
        dead = self.comm._poll(lambda: event.done, spin=0)
        if dead is not None:
            self.handle.abort()
            cause = (f"{name_ranks(dead)} exited or was killed" if dead else
                     f"not complete within {self.comm.timeout:g} s")
            raise self.comm._failed(f"rank {self.comm.rank} of {self.comm.size}: NCCL {what}: "
                                    f"{cause}")
