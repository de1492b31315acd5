"""What ran the benchmark: host, device, library versions and every thread pool's size."""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.metadata
import os
import platform
import socket

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


# A run is "quiet" only when the 1-minute load average, at start and at end, stays below this
# fraction of the usable cores: beyond it other work competes for the cores being measured.
QUIET_LOAD_PER_CORE = 0.25


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


def quiet(load_start: list[float] | None, load_end: list[float] | None,
          n_cores: int) -> tuple[bool | None, str]:
    """(quiet?, why): None when the load average cannot be read on this platform."""
    if load_start is None:
        return None, "load average unavailable on this platform"
    limit = QUIET_LOAD_PER_CORE * n_cores
    worst = max(load_start[0], load_end[0] if load_end else 0.0)
    if worst > limit:
        return False, (f"NOT quiet: 1-min load average reached {worst:.2f} on {n_cores} cores "
                       f"(quiet means <= {limit:.2f}); other work skewed these figures")
    return True, f"quiet: 1-min load average <= {worst:.2f} on {n_cores} cores"


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
        "argv": list(argv),
        "versions": versions(),
        "threads": threads(torch_threads),
    }
