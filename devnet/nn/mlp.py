"""The multi-layer perceptron: forward and hand-written backward over flat parameter buffers."""

from __future__ import annotations

import math
import numbers
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from devnet.backend import Backend, get_backend
from devnet.errors import ConfigError, DataError
from devnet.nn import activations
from devnet.nn import init as initializers
from devnet.nn.dense import Dense, ParameterList

DTYPES = ("float32", "float64")
_MAX_CACHED_BATCH_SIZES = 4  # work buffers kept for this many batch sizes (LRU)


@dataclass
class _Work:
    """Preallocated buffers for one batch size n."""

    A: list  # per layer (n, n_out): matmul output, then the activation in place
    Z: list  # per layer (n, n_out) pre-activation, or None where act' comes from A
    G: list  # per layer (n, n_out): dL/dA, turned into dL/dZ in place (top layer: dL/dZ only)
    dX: Any = None  # (n, n_in), allocated on the first backward that asks for it
    X: Any = None  # (n, n_in) the standardized input, allocated when input scaling is set


class MLP:
    """A stack of Dense layers: ``layer_sizes = [n_in, h1, ..., n_out]``.

    Rows are samples: ``Z = X @ W + b``. All parameters live in ONE flat buffer (``layers[i].W``
    and ``.b`` are views), gradients likewise, so an optimizer updates the whole model in one
    kernel launch.

    Args:
        layer_sizes: at least two positive ints.
        activation: hidden activation name, or one name per hidden layer.
        output_activation: "identity" (logits, for the fused losses), "softmax", "sigmoid", ...
        init: weight initialiser name (``devnet.nn.init.INITIALIZERS``); biases start at zero.
        dtype: "float32" or "float64".
        backend: a device spec (``"auto"``, ``"cpu"``, ``"cuda:0"``) or a Backend.
        seed: seeds the initial weights (drawn on the host: identical on every device).
        alpha: the negative slope of leaky_relu.
    """

    def __init__(self, layer_sizes: Sequence[int], activation: str | Sequence[str] = "relu",
                 output_activation: str = "identity", init: str = "he",
                 dtype: str = "float32", backend: str | Backend = "auto", seed: int | None = 0,
                 alpha: float = 0.01):
        sizes = _check_sizes(layer_sizes)
        hidden = _check_activations(activation, len(sizes) - 2)
        activations.get(output_activation)
        dtype = _check_dtype(dtype)
        initializers.get(init)
        seed = _check_seed(seed)
        if not (_is_finite_real(alpha) and alpha >= 0):
            raise ConfigError(f"alpha must be a finite number >= 0, got {alpha!r}")

        self.layer_sizes = sizes
        self.activations = hidden + [output_activation]
        self.activation = activation if isinstance(activation, str) else list(activation)
        self.output_activation = output_activation
        self.init = init
        self.dtype = dtype
        self.seed = seed
        self.alpha = float(alpha)
        self.layers = [Dense(f"layers.{i}", sizes[i], sizes[i + 1], act)
                       for i, act in enumerate(self.activations)]
        self.n_params = sum(layer.n_params for layer in self.layers)
        _check_memory(sizes, self.n_params, self.dtype)
        self.backend = get_backend(backend)
        self._in_mean = self._in_scale = None  # host float64 (n_in,), or None: no scaling
        try:
            self._allocate(self._initial_params())
        except MemoryError:
            raise ConfigError(_too_large(sizes, self.n_params, self.dtype,
                                         "the allocation failed")) from None

    # --- construction and devices ----------------------------------------------------------

    def _initial_params(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        draw = initializers.get(self.init)
        flat = np.zeros(self.n_params, dtype=self.dtype)
        offset = 0
        for layer in self.layers:
            w = draw(rng, layer.n_in, layer.n_out)
            flat[offset:offset + w.size] = w.ravel()
            offset += layer.n_params
        return flat

    def _allocate(self, host_params: np.ndarray) -> None:
        be = self.backend
        self.params = be.asarray(host_params, dtype=self.dtype)
        self.grads = be.zeros(self.n_params, self.dtype)
        offset = 0
        for layer in self.layers:
            offset = layer.bind_(self.params, self.grads, offset)
        self._work: OrderedDict[int, _Work] = OrderedDict()
        self._n = None
        self._X = None
        self._upload_scaling()

    def _upload_scaling(self) -> None:
        # device copies in the model's dtype, used by forward / backward
        if self._in_mean is None:
            self._dev_mean = self._dev_scale = None
        else:
            self._dev_mean = self.backend.asarray(self._in_mean, dtype=self.dtype)
            self._dev_scale = self.backend.asarray(self._in_scale, dtype=self.dtype)

    def set_input_scaling(self, mean, scale) -> None:
        """Standardize every input as ``(X - mean) / scale`` before the first layer.

        ``mean``, ``scale``: host arrays shaped (n_in,), finite, ``scale > 0`` (stored as
        float64, applied in the model's dtype). ``set_input_scaling(None, None)`` clears it.
        fit / evaluate / predict then take raw data; ``backward`` returns dL/d(raw X).
        """
        if mean is None and scale is None:
            new_mean = new_scale = None
        else:
            new_mean = _scaling_vector("mean", mean, self.n_in)
            new_scale = _scaling_vector("scale", scale, self.n_in)
            if not np.all(new_scale > 0):
                bad = np.flatnonzero(~(new_scale > 0))
                raise DataError(f"input scaling: scale must be > 0 for every feature; "
                                f"scale[{bad[0]}] = {float(new_scale[bad[0]])!r} "
                                f"({bad.size} bad entries)")
        self._in_mean, self._in_scale = new_mean, new_scale
        self._n = self._X = None  # a cached forward used the old scaling
        self._upload_scaling()

    @property
    def input_scaling(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mean, scale)`` as float64 host copies, or None when inputs are not scaled."""
        if self._in_mean is None:
            return None
        return self._in_mean.copy(), self._in_scale.copy()

    def to(self, backend: str | Backend) -> MLP:
        """Move the parameters to another device (in place); returns self.

        Optimizers built on the old buffers must be rebuilt (or reloaded from a checkpoint).
        """
        new = get_backend(backend)
        if new is not self.backend:
            host = self.backend.to_numpy(self.params)
            self.backend = new
            self._allocate(host)  # keeps the input scaling (host copies)
        return self

    def parameters(self) -> ParameterList:
        """Every Parameter(name, data, grad), plus the flat ``.data`` / ``.grad`` buffers."""
        params = [p for layer in self.layers for p in layer.parameters()]
        return ParameterList(params, self.params, self.grads, self.backend)

    def config(self) -> dict:
        """The constructor arguments (JSON-serialisable), enough to rebuild the architecture."""
        return {"layer_sizes": list(self.layer_sizes), "activation": self.activation,
                "output_activation": self.output_activation, "init": self.init,
                "dtype": self.dtype.name, "seed": self.seed, "alpha": self.alpha}

    @property
    def n_in(self) -> int:
        return self.layer_sizes[0]

    @property
    def n_out(self) -> int:
        return self.layer_sizes[-1]

    # --- forward and backward --------------------------------------------------------------

    def _buffers(self, n: int) -> _Work:
        work = self._work.get(n)
        if work is None:
            be, dt = self.backend, self.dtype
            try:
                work = _Work(
                    A=[be.empty((n, layer.n_out), dt) for layer in self.layers],
                    Z=[be.empty((n, layer.n_out), dt)
                       if activations.get(layer.activation).needs_preactivation else None
                       for layer in self.layers],
                    G=[be.empty((n, layer.n_out), dt) for layer in self.layers],
                )
            except MemoryError:
                need = 3 * n * sum(layer.n_out for layer in self.layers) * dt.itemsize
                raise DataError(f"out of memory allocating the work buffers for a batch of {n} "
                                f"samples (about {need:,} bytes); use a smaller batch_size"
                                ) from None
            self._work[n] = work
            if len(self._work) > _MAX_CACHED_BATCH_SIZES:
                self._work.popitem(last=False)
        else:
            self._work.move_to_end(n)
        return work

    def _as_input(self, X):
        be = self.backend
        if not (be.is_array(X) and X.dtype == self.dtype and X.flags.c_contiguous):
            X = be.asarray(X, dtype=self.dtype)
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise DataError(f"X must have shape (n_samples, {self.n_in}) for this model, "
                            f"got {tuple(X.shape)}")
        return X

    def forward(self, X):
        """Run the network on X (n, n_in); returns the output (n, n_out) on the model's device.

        The result is the model's own output buffer, overwritten by the next forward with the
        same batch size: copy it to keep it. Caches only what ``backward`` needs.
        """
        X = self._as_input(X)
        n = X.shape[0]
        work = self._buffers(n)
        kernels, alpha = self.backend.kernels, self.alpha
        if self._dev_mean is not None:
            X = self._standardize(X, work)
        A = X
        for layer, out, Z in zip(self.layers, work.A, work.Z):
            self.backend.matmul(A, layer.W, out=out)
            kernels.bias_act_fwd(layer.activation, out, layer.b, Z, alpha)
            A = out
        self._X, self._n = X, n
        return A

    def _standardize(self, X, work: _Work):
        """``(X - mean) / scale`` into the work buffer (X itself is left untouched)."""
        xp = self.backend.xp
        if work.X is None:
            work.X = self.backend.empty(X.shape, self.dtype)
        xp.subtract(X, self._dev_mean, out=work.X)
        xp.divide(work.X, self._dev_scale, out=work.X)
        return work.X

    def backward(self, dY, input_grad: bool = True):
        """Backpropagate dL/dY (n, n_out) through the last ``forward``.

        Overwrites every layer's ``dW`` and ``db``; returns dL/dX (n, n_in), or None when
        ``input_grad=False`` (saves the first layer's input-gradient matmul).
        """
        if self._n is None:
            raise DataError("backward() called before forward(): there is no forward pass to "
                            "backpropagate through; call model.forward(X) on the batch first")
        n = self._n
        dY = self._as_grad(dY, n)
        work = self._work[n]
        be, kernels, alpha = self.backend, self.backend.kernels, self.alpha
        G = dY
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            dZ = work.G[i]
            kernels.act_bwd(layer.activation, G, work.A[i], work.Z[i], dZ, layer.db, alpha)
            A_prev = self._X if i == 0 else work.A[i - 1]
            be.matmul(A_prev.T, dZ, out=layer.dW)
            if i > 0:
                G = work.G[i - 1]
                be.matmul(dZ, layer.W.T, out=G)
            elif input_grad:
                if work.dX is None:
                    work.dX = be.empty((n, self.n_in), self.dtype)
                be.matmul(dZ, layer.W.T, out=work.dX)
                if self._dev_scale is not None:
                    # d((x - mean) / scale) / dx = 1 / scale, per feature
                    be.xp.divide(work.dX, self._dev_scale, out=work.dX)
                return work.dX
        return None

    def _as_grad(self, dY, n):
        be = self.backend
        if not (be.is_array(dY) and dY.dtype == self.dtype and dY.flags.c_contiguous):
            dY = be.asarray(dY, dtype=self.dtype)
        if dY.ndim == 2 and dY.shape[0] != n:
            raise DataError(f"backward() got dY for {dY.shape[0]} samples but the last "
                            f"forward() ran on {n}: backward must follow the forward of the "
                            "same batch")
        if dY.shape != (n, self.n_out):
            raise DataError(f"dY must have the shape of the last output {(n, self.n_out)}, "
                            f"got {tuple(dY.shape)}")
        return dY

    def predict(self, X, batch_size: int = 4096):
        """Outputs for X in batches; a NumPy array unless X already lives on the device."""
        if not _is_int(batch_size) or batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        batch_size = int(batch_size)
        on_device = self.backend.is_array(X)
        X = self._as_input(X) if on_device else np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise DataError(f"X must have shape (n_samples, {self.n_in}) for this model, "
                            f"got {tuple(X.shape)}")
        parts = [self.forward(X[i:i + batch_size]).copy()
                 for i in range(0, X.shape[0], batch_size)]
        out = self.backend.xp.concatenate(parts) if parts else \
            self.backend.zeros((0, self.n_out), self.dtype)
        return out if on_device else self.backend.to_numpy(out)

    __call__ = forward

    def __repr__(self) -> str:
        sizes = "-".join(map(str, self.layer_sizes))
        return (f"MLP({sizes}, activation={self.activation!r}, "
                f"output_activation={self.output_activation!r}, dtype={self.dtype.name}, "
                f"device={self.backend.device})")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_finite_real(value) -> bool:
    try:
        return _is_real(value) and math.isfinite(value)
    except OverflowError:  # an int past float range
        return False


def _check_sizes(layer_sizes) -> list[int]:
    try:
        sizes = list(layer_sizes)
    except TypeError:
        sizes = None
    if isinstance(layer_sizes, (str, bytes)) or sizes is None or len(sizes) < 2 \
            or not all(_is_int(s) and s > 0 for s in sizes):
        raise ConfigError(f"layer_sizes must list at least two positive integers "
                          f"[n_in, ..., n_out], got {layer_sizes!r}")
    return [int(s) for s in sizes]


def n_parameters(layer_sizes: Sequence[int]) -> int:
    """Weights plus biases of an MLP with these layer sizes (exact Python int)."""
    sizes = [int(s) for s in layer_sizes]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def _check_activations(activation, n_hidden: int) -> list[str]:
    if isinstance(activation, str):
        hidden = [activation] * n_hidden
    elif isinstance(activation, (list, tuple)):
        hidden = list(activation)
        if len(hidden) != n_hidden:
            raise ConfigError(f"activation lists {len(hidden)} names for {n_hidden} hidden "
                              "layers; give one name or one per hidden layer")
    else:
        valid = ", ".join(sorted(activations.HIDDEN_ACTIVATIONS))
        raise ConfigError(f"activation must be a name or a list of names (one per hidden "
                          f"layer), got {activation!r}; valid activations: {valid}")
    for name in hidden:
        activations.get(name, hidden=True)
    return hidden


def _check_dtype(dtype) -> np.dtype:
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    return dt


def _check_seed(seed) -> int | None:
    if seed is None:
        return None
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def _scaling_vector(name: str, value, n_in: int) -> np.ndarray:
    if value is None:
        raise DataError(f"input scaling: {name} must be a numeric array of shape ({n_in},), "
                        "got None; give both mean and scale, or None for both to clear it")
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"input scaling: {name} must be a numeric array of shape ({n_in},), "
                        f"got {type(value).__name__}") from None
    if arr.shape != (n_in,):
        raise DataError(f"input scaling: {name} must have shape ({n_in},) (one value per "
                        f"input feature), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"input scaling: {name} contains NaN/Inf at index "
                        f"{int(np.flatnonzero(~np.isfinite(arr))[0])}; it must be finite")
    return arr


def _physical_memory() -> int | None:
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _too_large(sizes, n_params: int, dtype: np.dtype, why: str) -> str:
    need = 2 * n_params * dtype.itemsize
    return (f"MLP {sizes} is too large: {n_params:,} parameters in {dtype.name} need "
            f"{need:,} bytes ({need / 2**30:,.1f} GiB) for parameters + gradients; {why}")


def _check_memory(sizes, n_params: int, dtype: np.dtype) -> None:
    # Refuse before allocating: the host draws the initial weights, then params + grads are
    # allocated on the device; past physical RAM that is a swap storm or an OOM kill.
    memory = _physical_memory()
    need = 2 * n_params * dtype.itemsize
    if memory is not None and need > memory:
        raise ConfigError(_too_large(sizes, n_params, dtype,
                                     f"this machine has {memory:,} bytes of memory"))
