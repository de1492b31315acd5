"""Starting a job: ``launch`` runs a program as N MPI ranks under mpiexec (the command line's
``python -m devnet.distributed``), passes a stop signal on to the ranks and names the rank that
failed; ``in_mpi_job`` / ``job_size`` / ``launched`` say whether this process is a rank."""

from __future__ import annotations

import argparse
import contextlib
import math
import numbers
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from devnet.distributed.communicator import DistributedError, say
from devnet.errors import DevnetError, MissingDependencyError

LAUNCHED_ENV = "DEVNET_DIST_LAUNCHED"
STOP_GRACE = 10.0  # seconds the ranks get to stop after an interrupt before they are killed
# the signals that stop a job; the launcher exits 128 + the signal's number (130, 143, 129)
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                      if hasattr(signal, name))
# set in every rank by the MPI launchers devnet knows (MPICH/Hydra, Open MPI, PMIx, Slurm's PMI)
_MPI_JOB_ENV = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def in_mpi_job(env=None) -> bool:
    """Whether this process is a rank of an MPI job (its launcher's rank variable is set)."""
    env = os.environ if env is None else env
    return any(var in env for var in _MPI_JOB_ENV)


def job_size(env=None) -> int | None:
    """The ranks of this process's MPI job, as its launcher says (without importing MPI); None
    outside a job or when not said."""
    env = os.environ if env is None else env
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        try:
            return int(env[var])
        except (KeyError, ValueError):
            continue
    return None


def launched() -> bool:
    """True inside a job started by ``launch``: its flag and an MPI rank variable are both set
    (a flag leaked into a plain process must not make it run alone where N were asked for)."""
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
    """``mpiexec -n nproc [-hosts a,b | -f hostfile]``, preferring the one next to this Python.
    hosts: None (this machine), "a,b", a list of names, or an existing hostfile's path."""
    nproc = _check_nproc(nproc)
    host_args = []
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
    return [exe, "-n", str(nproc), *host_args]


def launch(argv: list[str], nproc: int, hosts=None, env: dict | None = None) -> int:
    """Run ``argv`` (a program and its arguments) as ``nproc`` ranks under mpiexec; its exit code.

    hosts: as for ``mpiexec_command``. Ranks sharing a machine get their share of the cores as
    BLAS/OpenMP threads unless set already. The output passes through, plus a line naming the
    rank that failed (mpiexec names only its pid). SIGINT, SIGTERM or SIGHUP stop the job
    (``_Stop``); the return value is then 128 + the signal.
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
    # mpiexec in a process group of its own: a terminal Ctrl-C reaches only this launcher,
    # which passes it on once; a background group cannot read the terminal: no stdin
    stdin = subprocess.DEVNULL if _is_terminal(sys.stdin) else None
    stop = _Stop(nproc)
    with stop.forwarding():  # from before the start: no moment leaves the job unsupervised
        proc = subprocess.Popen(cmd, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        stop.started(proc)
        pumps = [threading.Thread(target=watch.pump, args=pipes, daemon=True)
                 for pipes in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
        for pump in pumps:
            pump.start()
        rc = stop.wait()
        for pump in pumps:
            pump.join()
    if stop.signum is not None:  # the ranks' failure lines would only repeat the interrupt
        return 128 + stop.signum
    if rc != 0:
        for line in watch.failures():
            say(line)
    return rc


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor (a test's capture), closed
        return False


class _Stop:
    """How the launcher ends a job on SIGINT, SIGTERM or SIGHUP.

    The first signal becomes one SIGINT to mpiexec, which passes it to every rank (fit's
    KeyboardInterrupt path: no checkpoint half-written). A second signal, or ranks still
    running ``STOP_GRACE`` seconds later, sends a second SIGINT (mpiexec kills the ranks);
    SIGKILL to mpiexec's group follows if even that fails. The handler only records and
    forwards (it may interrupt this thread's writes): ``wait`` reports and enforces deadlines.
    """

    def __init__(self, nproc: int):
        self.proc, self.nproc = None, nproc
        self.signum: int | None = None
        self.signals = self.told = 0  # signals received, and reported
        self.forced, self.deadline = False, math.inf

    def forwarding(self):
        """Install the handlers (main thread only) until exit."""
        stack = contextlib.ExitStack()
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                previous = signal.signal(sig, self._handle)
                stack.callback(signal.signal, sig,
                               signal.SIG_DFL if previous is None else previous)
        return stack

    def started(self, proc) -> None:
        """mpiexec runs as ``proc``; a signal that came while it started is passed on."""
        self.proc = proc
        if self.signum is not None:
            self._interrupt()

    def _handle(self, signum, frame) -> None:
        self.signals += 1
        if self.signum is None:
            self.signum = signum
            self.deadline = time.monotonic() + STOP_GRACE
            self._interrupt()
        elif not self.forced:
            self._force()

    def _force(self) -> None:
        self.forced = True
        self.deadline = time.monotonic() + STOP_GRACE
        self._interrupt()  # mpiexec's second interrupt: it kills every rank

    def _interrupt(self) -> None:
        if self.proc is not None:  # else ``started`` sends it
            with contextlib.suppress(OSError):  # gone already
                self.proc.send_signal(signal.SIGINT)

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
                say(f"devnet.distributed: the ranks did not stop within {STOP_GRACE:g} s: "
                     "killing them")
            else:
                say("devnet.distributed: mpiexec did not end the ranks: killing it")
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (AttributeError, OSError):  # no process groups (Windows), gone
                    self.proc.kill()
                self.deadline = math.inf

    def _report(self) -> None:
        if self.signals > self.told and self.signum is not None:
            name = signal.Signals(self.signum).name
            if self.told == 0:
                say(f"devnet.distributed: {name}: stopping the {self.nproc} ranks (an "
                     "interrupt to each; checkpoints already written stay valid); another "
                     f"signal, or {STOP_GRACE:g} s, kills them")
            if self.signals > 1 and self.forced:
                say("devnet.distributed: signalled again: killing the ranks")
            self.told = self.signals


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
    """The argv mpiexec runs for ``PROGRAM [ARGS...]``: a Python script (ending in .py, or a
    file mpiexec could not exec) runs with this Python; programs pass unchanged. Without
    ``hosts`` a missing script is refused before any rank starts."""
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
    """``python -m devnet.distributed -n N [--hosts H] PROGRAM [ARGS...]``: ``launch`` it."""
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
