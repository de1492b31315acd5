"""What ran the benchmark: host, device, library versions and every thread pool's size."""

from __future__ import annotations

import datetime as _dt
import importlib
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


def meta(backend, quick: bool, argv: list[str], torch_threads: int | None) -> dict:
    """The ``meta`` block of the JSON results."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return {
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
