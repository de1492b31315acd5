"""What ran the benchmark: host, device, library versions and every thread pool's size."""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.metadata
import os
import platform
import socket
import time

import devnet as dn

from .timing import is_gpu


def optional(name: str):
    """Import ``name`` or return None (PyTorch, scikit-learn, matplotlib are optional)."""
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or a broken install raising something else
        return None


def versions() -> dict:
    """Versions of Python and every library that takes part (None when absent)."""
    out = {"python": platform.python_version(), "devnet": dn.__version__}
    for name in ("numpy", "numba", "torch", "sklearn", "cupy", "numba_cuda", "threadpoolctl",
                 "matplotlib"):
        mod = optional(name)
        out[name] = getattr(mod, "__version__", None) if mod is not None else None
    for name in ("jax", "jaxlib", "optax"):  # from the installed metadata: no import (seconds)
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def blas_threads() -> list[dict]:
    """The BLAS / OpenMP pools loaded in this process (threadpoolctl), or [] without it."""
    tpc = optional("threadpoolctl")
    if tpc is None:
        return []
    return [{k: info.get(k) for k in ("user_api", "internal_api", "num_threads", "version",
                                      "threading_layer", "prefix")}
            for info in tpc.threadpool_info()]


def threads(torch_threads: int | None = None) -> dict:
    """Thread counts: cores, BLAS pools, Numba, PyTorch (intra-op, inter-op)."""
    numba = optional("numba")
    torch = optional("torch")
    out = {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "pools": blas_threads(),
        "numba": numba.get_num_threads() if numba is not None else None,
        "numba_layer": _numba_layer(numba),
        "torch": torch.get_num_threads() if torch is not None else None,
        "torch_interop": torch.get_num_interop_threads() if torch is not None else None,
    }
    if torch_threads is not None:
        out["torch_requested"] = torch_threads
    return out


def _numba_layer(numba):
    try:
        return numba.threading_layer()
    except Exception:  # ValueError until a parallel region has run
        return None


def numpy_blas_threads(default: int) -> int:
    """Threads of the BLAS NumPy's matmul uses (devnet's GEMMs on the CPU)."""
    for pool in blas_threads():
        if pool.get("user_api") == "blas" and "numpy" in str(pool.get("prefix", "")) + \
                str(pool.get("filepath", "")):
            return int(pool["num_threads"])
    pools = [p for p in blas_threads() if p.get("user_api") == "blas"]
    return int(pools[0]["num_threads"]) if pools else default


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages: other work on the machine skews every figure."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def device_info(backend) -> dict:
    """The backend's device, its name and the kernel table it runs."""
    name = platform.processor() or platform.machine()
    if is_gpu(backend):
        name = getattr(backend, "device_name", backend.device)
    else:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return {"device": backend.device, "device_name": name,
            "kernels": getattr(backend.kernels, "source", "?")}


# A run is "quiet" only when, before it, the 1-minute load average and, during it, the CPU time
# of every other process stay below this fraction of the usable cores: beyond it other work
# competes for the cores being measured. (The load average at the end counts the run's own
# threads: a 2-thread run on 2 cores ends near 2 with nothing else running.)
QUIET_LOAD_PER_CORE = 0.25


def cpu_clock() -> dict | None:
    """The machine's busy CPU seconds (``/proc/stat``), this process's own and its waited-for
    children's, and a wall clock: ``other_share`` of two such readings is the other processes'
    share of the cores between them. None where ``/proc/stat`` cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    t = os.times()
    return {"busy_s": (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"),
            "own_s": t.user + t.system + t.children_user + t.children_system,
            "wall_s": time.monotonic()}


def other_share(start: dict | None, end: dict | None, n_cores: int) -> float | None:
    """The fraction of ``n_cores`` that other processes kept busy from ``start`` to ``end``
    (``cpu_clock`` readings), or None where either is missing."""
    if not start or not end or end["wall_s"] <= start["wall_s"]:
        return None
    other = (end["busy_s"] - start["busy_s"]) - (end["own_s"] - start["own_s"])
    return max(0.0, other) / ((end["wall_s"] - start["wall_s"]) * n_cores)


def cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def blas() -> list[dict]:
    """The BLAS libraries loaded (threadpoolctl): implementation, version, threads."""
    return [{"library": p.get("internal_api"), "version": p.get("version"),
             "threads": p.get("num_threads"), "architecture": p.get("architecture")}
            for p in blas_threads_full() if p.get("user_api") == "blas"]


def blas_threads_full() -> list[dict]:
    tpc = optional("threadpoolctl")
    return list(tpc.threadpool_info()) if tpc is not None else []


def quiet(load_start: list[float] | None, others: float | None,
          n_cores: int) -> tuple[bool | None, str]:
    """(quiet?, why) from the 1-minute load average before the run and ``others``, the other
    processes' share of the cores during it (``other_share``); None when neither can be read."""
    if load_start is None and others is None:
        return None, "neither the load average nor the CPU times can be read on this platform"
    limit = QUIET_LOAD_PER_CORE
    if load_start is not None and load_start[0] > limit * n_cores:
        return False, (f"NOT quiet: the 1-min load average was {load_start[0]:.2f} on "
                       f"{n_cores} cores at the start (quiet means <= {limit * n_cores:.2f}); "
                       "other work skewed these figures")
    if others is not None and others > limit:
        return False, (f"NOT quiet: other processes kept {others:.0%} of the {n_cores} cores "
                       f"busy during the run (quiet means <= {limit:.0%}); other work skewed "
                       "these figures")
    said = [] if load_start is None else [f"1-min load average {load_start[0]:.2f} at start"]
    said += [] if others is None else [f"other processes {others:.0%} of the cores during it"]
    return True, f"quiet: {', '.join(said)} ({n_cores} cores)"


def machine() -> dict:
    """CPU model, cores, BLAS and its version: what the figures were measured on."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu_model": name, "cores": cores(), "cpu_count": os.cpu_count(), "blas": blas()}


def meta(backend, quick: bool, argv: list[str], torch_threads: int | None) -> dict:
    """The ``meta`` block of the JSON results."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return {
        "machine": machine(),
        "host": socket.gethostname(),
        "date": now.strftime("%Y-%m-%d"),
        "time_utc": now.isoformat(timespec="seconds"),
        "platform": platform.platform(),
        **device_info(backend),
        "quick": quick,
        "loadavg_start": loadavg(),
        "cpu_start": cpu_clock(),
        "argv": list(argv),
        "versions": versions(),
        "threads": threads(torch_threads),
    }
