"""The device layer: pick NumPy (CPU) or CuPy (GPU) arrays and their kernel table.

``get_backend("auto")`` picks CUDA when CuPy imports and sees a GPU, else the CPU, and logs one
line saying which and why. ``DEVNET_DEVICE`` overrides ``"auto"``.

``DEVNET_CUDA_SIMULATOR=1`` (tests and CI only) makes ``"cuda"`` / ``"cuda:N"`` the real CUDA
backend over Numba's CUDA simulator and a NumPy stand-in for CuPy
(``devnet.testing.cupy_sim``); ``"auto"`` never picks it. Numba reads its simulator switch
when it is imported, so the variable must be set before devnet (or numba) is imported: a
separate process.
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
    # ASCII digits only: ``\d`` would also take "cuda:\u0663" (an Arabic-Indic three)
    match = re.fullmatch(r"cuda(?::([0-9]{1,6}))?", name)
    if match:
        return "cuda", int(match.group(1) or 0)
    raise ConfigError(f"unknown device {spec!r}; valid devices: {', '.join(DEVICE_NAMES)}")


def get_backend(spec: str | Backend | None = "auto", kernels: str = "fused") -> Backend:
    """The backend for ``spec``: ``"auto" | "cpu" | "cuda" | "cuda:N"`` or a Backend (returned).

    ``kernels`` is ``"fused"`` (the device's compiled kernels) or ``"reference"`` (the
    xp-generic oracle). ``"auto"`` and None read ``DEVNET_DEVICE``. Backends are cached per
    device and kernel set: every spelling of one device ("auto" where it picks the CPU, " CPU ",
    "cuda:01") is the same instance, so ``model.to(spec)`` never moves a model to the device it
    is on (which would reallocate its gradient buffer under an optimizer built over the old one).
    """
    if isinstance(spec, Backend):
        return spec
    kind, index = ("auto", None) if spec is None else parse_device(spec)
    if kind == "auto":
        env = os.environ.get("DEVNET_DEVICE", "").strip() or "auto"
        try:
            kind, index = parse_device(env)
        except ConfigError as exc:
            raise ConfigError(f"environment variable DEVNET_DEVICE: {exc}") from None
    if kind == "auto":
        key = ("auto", kernels)
        if key not in _cache:
            _cache[key] = _auto(kernels)
        return _cache[key]
    return _device(kind if index is None else f"cuda:{index}", kernels)


def _device(device: str, kernels: str) -> Backend:
    """The cached backend of ``device`` ("cpu" or "cuda:N"), made on first use."""
    key = (device, kernels)
    if key not in _cache:
        backend = CPUBackend(kernels) if device == "cpu" else \
            _cuda().CUDABackend(int(device.split(":")[1]), kernels)
        backend.reason = "requested"
        _cache[key] = backend
    return _cache[key]


def _auto(kernels: str) -> Backend:
    reason = _cuda().unavailable_reason(0)
    if reason is None and _cuda().SIMULATOR:
        reason = "DEVNET_CUDA_SIMULATOR=1: the CUDA simulator runs only when asked for by name"
    if reason is None:
        backend = _device("cuda:0", kernels)
        backend.reason = f"CuPy sees {backend.device_name}"
    else:
        backend = _device("cpu", kernels)
        backend.reason = reason
    log.info("devnet: using %s (%s)", backend.device, backend.reason)
    return backend


def backend_of(a) -> Backend:
    """The backend whose device holds array ``a`` (NumPy -> CPU, CuPy -> its GPU)."""
    if isinstance(a, np.ndarray):
        return get_backend("cpu")
    device = getattr(getattr(a, "device", None), "id", None)
    if not isinstance(device, int):
        raise ConfigError(f"backend_of takes a NumPy or CuPy array, got {type(a).__name__}")
    return get_backend(f"cuda:{device}")
