"""The device layer: pick NumPy (CPU) or CuPy (GPU) arrays and their kernel table.

``get_backend("auto")`` picks CUDA when CuPy imports and sees a GPU, else the CPU, and logs one
line saying which and why. ``DEVNET_DEVICE`` overrides ``"auto"``.

``DEVNET_CUDA_SIMULATOR=1`` (tests and CI only) makes ``"cuda"`` / ``"cuda:N"`` the real CUDA
backend over Numba's CUDA simulator and a NumPy stand-in for CuPy (``cupy_sim``); ``"auto"``
never picks it. Numba reads its simulator switch when it is imported, so the variable must be
set before devnet (or numba) is imported: a separate process.
"""

from __future__ import annotations

import logging
import os
import re

if os.environ.get("DEVNET_CUDA_SIMULATOR") == "1":
    # too late when numba is already imported: cuda.numba_cuda_reason() then says so
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np

from devnet.backend.base import Backend
from devnet.backend.cpu import CPUBackend
from devnet.errors import ConfigError

__all__ = ["Backend", "get_backend", "available_backends", "backend_of", "parse_device",
           "DEVICE_NAMES"]

log = logging.getLogger("devnet")
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N")
_cache: dict[tuple[str, str], Backend] = {}


def _cuda():
    from devnet.backend import cuda  # guarded inside: never raises on import

    return cuda


def available_backends() -> list[str]:
    """Devices usable here, e.g. ``["cpu"]`` or ``["cpu", "cuda:0"]``."""
    return ["cpu"] + [f"cuda:{i}" for i in range(_cuda().device_count())]


def parse_device(spec) -> tuple[str, int | None]:
    """``(kind, index)`` of a device name: ("auto" | "cpu", None) or ("cuda", N).

    Case and surrounding spaces are ignored; anything else is a ConfigError listing the
    valid names. The one device parser: get_backend, the CLI and configs use it.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"device must be a string or a Backend, not {type(spec).__name__}; "
                          f"valid devices: {', '.join(DEVICE_NAMES)}")
    name = spec.strip().lower()
    if name in ("auto", "cpu"):
        return name, None
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match:
        return "cuda", int(match.group(1) or 0)
    raise ConfigError(f"unknown device {spec!r}; valid devices: {', '.join(DEVICE_NAMES)}")


def get_backend(spec: str | Backend | None = "auto", kernels: str = "fused") -> Backend:
    """The backend for ``spec``: ``"auto" | "cpu" | "cuda" | "cuda:N"`` or a Backend (returned).

    ``kernels`` is ``"fused"`` (the device's compiled kernels) or ``"reference"`` (the
    xp-generic oracle). Backends are cached per device and kernel set.
    """
    if isinstance(spec, Backend):
        return spec
    if spec is None or spec == "auto":
        spec = os.environ.get("DEVNET_DEVICE", "auto") or "auto"
    parse_device(spec)  # a ConfigError before anything is cached
    spec = spec.strip().lower()
    key = (spec, kernels)
    if key not in _cache:
        _cache[key] = _make(spec, kernels)
    return _cache[key]


def _make(spec: str, kernels: str) -> Backend:
    if spec == "auto":
        reason = _cuda().unavailable_reason(0)
        if reason is None and _cuda().SIMULATOR:
            reason = "DEVNET_CUDA_SIMULATOR=1: the CUDA simulator runs only when asked for by name"
        if reason is None:
            backend = _cuda().CUDABackend(0, kernels)
            backend.reason = f"CuPy sees {backend.device_name}"
        else:
            backend = CPUBackend(kernels)
            backend.reason = reason
        log.info("devnet: using %s (%s)", backend.device, backend.reason)
        return backend
    if spec == "cpu":
        backend = CPUBackend(kernels)
        backend.reason = "requested"
        return backend
    _, index = parse_device(spec)  # "cuda" or "cuda:N"
    backend = _cuda().CUDABackend(index, kernels)
    backend.reason = "requested"
    return backend


def backend_of(a) -> Backend:
    """The backend whose device holds array ``a`` (NumPy -> CPU, CuPy -> its GPU)."""
    if isinstance(a, np.ndarray):
        return get_backend("cpu")
    return get_backend(f"cuda:{a.device.id}")
