"""The multi-layer perceptron: forward and hand-written backward over flat parameter buffers."""

from __future__ import annotations

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
        n_hidden = len(sizes) - 2
        if isinstance(activation, str):
            hidden = [activation] * n_hidden
        else:
            hidden = list(activation)
            if len(hidden) != n_hidden:
                raise ConfigError(f"activation lists {len(hidden)} names for {n_hidden} hidden "
                                  "layers; give one name or one per hidden layer")
        for name in hidden:
            activations.get(name, hidden=True)
        activations.get(output_activation)
        if str(dtype) not in DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
        initializers.get(init)
        if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha >= 0):
            raise ConfigError(f"alpha must be a finite number >= 0, got {alpha!r}")

        self.layer_sizes = sizes
        self.activations = hidden + [output_activation]
        self.activation = activation if isinstance(activation, str) else list(activation)
        self.output_activation = output_activation
        self.init = init
        self.dtype = np.dtype(str(dtype))
        self.seed = seed
        self.alpha = float(alpha)
        self.layers = [Dense(f"layers.{i}", sizes[i], sizes[i + 1], act)
                       for i, act in enumerate(self.activations)]
        self.n_params = sum(layer.n_params for layer in self.layers)
        self.backend = get_backend(backend)
        self._allocate(self._initial_params())

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

    def to(self, backend: str | Backend) -> MLP:
        """Move the parameters to another device (in place); returns self.

        Optimizers built on the old buffers must be rebuilt (or reloaded from a checkpoint).
        """
        new = get_backend(backend)
        if new is not self.backend:
            host = self.backend.to_numpy(self.params)
            self.backend = new
            self._allocate(host)
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
            work = _Work(
                A=[be.empty((n, layer.n_out), dt) for layer in self.layers],
                Z=[be.empty((n, layer.n_out), dt)
                   if activations.get(layer.activation).needs_preactivation else None
                   for layer in self.layers],
                G=[be.empty((n, layer.n_out), dt) for layer in self.layers],
            )
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
        A = X
        for layer, out, Z in zip(self.layers, work.A, work.Z):
            self.backend.matmul(A, layer.W, out=out)
            kernels.bias_act_fwd(layer.activation, out, layer.b, Z, alpha)
            A = out
        self._X, self._n = X, n
        return A

    def backward(self, dY, input_grad: bool = True):
        """Backpropagate dL/dY (n, n_out) through the last ``forward``.

        Overwrites every layer's ``dW`` and ``db``; returns dL/dX (n, n_in), or None when
        ``input_grad=False`` (saves the first layer's input-gradient matmul).
        """
        if self._n is None:
            raise RuntimeError("backward() called before forward()")
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
                return work.dX
        return None

    def _as_grad(self, dY, n):
        be = self.backend
        if not (be.is_array(dY) and dY.dtype == self.dtype and dY.flags.c_contiguous):
            dY = be.asarray(dY, dtype=self.dtype)
        if dY.shape != (n, self.n_out):
            raise DataError(f"dY must have the shape of the last output {(n, self.n_out)}, "
                            f"got {tuple(dY.shape)}")
        return dY

    def predict(self, X, batch_size: int = 4096):
        """Outputs for X in batches; a NumPy array unless X already lives on the device."""
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


def _check_sizes(layer_sizes) -> list[int]:
    try:
        sizes = [int(s) for s in layer_sizes]
        ok = len(sizes) >= 2 and all(s == t and s > 0 for s, t in zip(sizes, layer_sizes))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"layer_sizes must list at least two positive integers "
                          f"[n_in, ..., n_out], got {layer_sizes!r}")
    return sizes
