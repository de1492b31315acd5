"""The CUDA backend: CuPy arrays, cuBLAS matmuls and Numba-CUDA kernels.

Importing this module never fails: without CuPy or a usable GPU it records why, and
``CUDABackend(...)`` raises DeviceUnavailableError with that reason.
"""

from __future__ import annotations

import importlib

import numpy as np

from devnet.backend.base import Backend, kernel_table
from devnet.errors import DeviceUnavailableError, lookup
from devnet.kernels import reference

try:
    import cupy

    IMPORT_ERROR: str | None = None
except ModuleNotFoundError:
    cupy = None
    IMPORT_ERROR = "CuPy is not installed (pip install 'devnet[cuda12]' or 'devnet[cuda13]')"
except Exception as exc:  # a broken CUDA install raising on import
    cupy = None
    IMPORT_ERROR = f"CuPy failed to import ({type(exc).__name__}: {exc})"


def device_count() -> int:
    """Number of CUDA devices CuPy sees (0 without CuPy or a driver)."""
    return 0 if unavailable_reason() else cupy.cuda.runtime.getDeviceCount()


def unavailable_reason(index: int = 0) -> str | None:
    """Why ``cuda:index`` cannot be used, or None when it can."""
    if cupy is None:
        return IMPORT_ERROR
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cudaErrorNoDevice, cudaErrorInsufficientDriver, ...
        return f"CuPy found no usable CUDA driver or device ({type(exc).__name__}: {exc})"
    if count == 0:
        return "CuPy sees no CUDA device"
    if not 0 <= index < count:
        return f"no CUDA device {index}: this machine has {count} (cuda:0 .. cuda:{count - 1})"
    return None


class CUDABackend(Backend):
    """CuPy + Numba-CUDA on one GPU. ``kernels="reference"`` runs the xp-generic oracle."""

    name = "cuda"

    def __init__(self, index: int = 0, kernels: str = "fused"):
        lookup({"fused": 0, "reference": 0}, kernels, "kernel set")
        reason = unavailable_reason(index)
        if reason:
            raise DeviceUnavailableError(f"cuda:{index} is unavailable: {reason}")
        self.index = index
        self.device = f"cuda:{index}"
        self.xp = cupy
        self.kernel_set = kernels
        self._device = cupy.cuda.Device(index)
        self._device.use()
        self._stagers: dict[tuple, _Stager] = {}
        if index != 0:  # Numba-CUDA keeps its own current device: launch on the same GPU
            from numba import cuda as numba_cuda

            numba_cuda.select_device(index)
        if kernels == "reference":
            self.kernels = kernel_table(reference)
        else:
            self.kernels = kernel_table(importlib.import_module("devnet.kernels.cuda"))

    def asarray(self, a, dtype=None):
        with self._device:
            return cupy.ascontiguousarray(cupy.asarray(a, dtype=dtype))

    def to_numpy(self, a) -> np.ndarray:
        return cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else np.asarray(a)

    def rng(self, seed=None):
        with self._device:
            return cupy.random.default_rng(seed)

    def upload(self, host: np.ndarray, slot: str):
        """Copy a host batch to the device asynchronously, through pinned memory.

        Each slot keeps two pinned host buffers and two device buffers used in turn, with an
        event per pair: the host waits only until the copy made two uploads ago has finished,
        so gathering batch k+1 on the host overlaps the GPU's work on batch k.
        """
        key = (slot, host.dtype.str, host.shape[1:])
        stager = self._stagers.get(key)
        if stager is None or stager.capacity < host.shape[0]:
            stager = self._stagers[key] = _Stager(host.shape, host.dtype, self._device)
        return stager.put(host)

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()

    @property
    def device_name(self) -> str:
        props = cupy.cuda.runtime.getDeviceProperties(self.index)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)


class _Stager:
    """Double-buffered pinned-host -> device copies for one batch slot (see ``upload``)."""

    def __init__(self, shape, dtype, device):
        import cupyx

        self.capacity = shape[0]
        with device:
            self.pinned = [cupyx.empty_pinned(shape, dtype) for _ in range(2)]
            self.dev = [cupy.empty(shape, dtype) for _ in range(2)]
            self.done = [None, None]
        self.turn = 0

    def put(self, host: np.ndarray):
        i = self.turn = 1 - self.turn
        if self.done[i] is not None:
            self.done[i].synchronize()  # the copy out of pinned[i] two uploads ago is over
        n = host.shape[0]
        np.copyto(self.pinned[i][:n], host)
        stream = cupy.cuda.get_current_stream()
        self.dev[i][:n].set(self.pinned[i][:n], stream=stream)
        self.done[i] = stream.record()
        return self.dev[i][:n]
