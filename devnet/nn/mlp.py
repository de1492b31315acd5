"""The multi-layer perceptron: its layers, flat parameter buffers, devices, copies and config;
its forward and backward passes are ``devnet.nn.passes.Passes``, which ``MLP`` inherits."""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from devnet import validation
from devnet.backend import Backend, get_backend
from devnet.errors import ConfigError, DataError
from devnet.nn import activations
from devnet.nn import init as initializers
from devnet.nn.dense import Dense, ParameterList
from devnet.nn.passes import Passes
from devnet.nn.usage import Usage

BLOCKS = ("plain", "residual")
NORMS = (None, "layernorm")


class MLP(Passes):
    """A stack of Dense layers: ``layer_sizes = [n_in, h1, ..., n_out]``.

    Rows are samples: ``Z = X @ W + b``. All parameters live in ONE flat buffer (``layers[i].W``
    and ``.b`` are views, LayerNorm's gamma and beta too), gradients likewise, so an optimizer
    updates the whole model in one kernel launch.

    Deep networks: with ``block="residual"``, every layer but the first and the output layer
    whose input and output widths are equal is a pre-norm residual block
    ``h <- h + dropout(act(norm(h) @ W + b))``; the others are plain layers
    ``h <- dropout(act(norm(h) @ W + b))``. ``norm="layernorm"`` normalizes the input of every
    layer but the first (the data: see ``set_input_scaling``), per row ``gamma (h - mean) /
    sqrt(var + 1e-5) + beta`` (gamma starts at 1, beta at 0). ``dropout=p`` drops each hidden
    activation with probability p in training only (``forward(X, training=True, step=s)``),
    scaling the kept ones by 1 / (1 - p); the mask hashes (dropout_seed, s, layer, element),
    the element counted in the whole batch (``row0``): identical on every device, after a
    resume and across data-parallel ranks.

    Args:
        layer_sizes: at least two positive ints.
        activation: hidden activation name, or one name per hidden layer.
        output_activation: "identity" (logits, for the fused losses), "softmax", "sigmoid", ...
        init: weight initialiser name (``devnet.nn.init.INITIALIZERS``); biases start at zero.
        dtype: "float32" or "float64".
        backend: a device spec (``"auto"``, ``"cpu"``, ``"cuda:0"``) or a Backend.
        seed: seeds the initial weights (drawn on the host: identical on every device).
        alpha: the negative slope of leaky_relu.
        block: "plain" or "residual" (see above).
        norm: None or "layernorm" (see above).
        dropout: the hidden activations' dropout rate in [0, 1) during training.
        dropout_seed: keys the dropout masks; default ``seed`` (a random one if that is None).
    """

    def __init__(self, layer_sizes: Sequence[int], activation: str | Sequence[str] = "relu",
                 output_activation: str = "identity", init: str = "he",
                 dtype: str = "float32", backend: str | Backend = "auto", seed: int | None = 0,
                 alpha: float = 0.01, block: str = "plain", norm: str | None = None,
                 dropout: float = 0.0, dropout_seed: int | None = None):
        sizes = _check_sizes(layer_sizes)
        hidden = _check_activations(activation, len(sizes) - 2)
        activations.get(output_activation)
        dtype = validation.float_dtype("dtype", dtype)
        initializers.get(init)
        seed = validation.seed("seed", seed)
        if not (validation.real(alpha) and alpha >= 0):
            raise ConfigError(f"alpha must be a finite number >= 0, got {alpha!r}")
        block, norm, dropout = _check_deep(block, norm, dropout)
        if dropout_seed is None:
            dropout_seed = seed if seed is not None else \
                int(np.random.SeedSequence().entropy % 2**63)
        dropout_seed = validation.seed("dropout_seed", dropout_seed)

        self.layer_sizes, self.activations = sizes, hidden + [output_activation]
        self.activation = activation if isinstance(activation, str) else list(activation)
        self.output_activation, self.init, self.dtype = output_activation, init, dtype
        self.seed, self.alpha, self.dropout_seed = seed, float(alpha), dropout_seed
        self.block, self.norm, self.dropout = block, norm, dropout
        last = len(sizes) - 2
        self.layers = [
            Dense(f"layers.{i}", sizes[i], sizes[i + 1], act,
                  norm=norm == "layernorm" and i > 0,
                  residual=block == "residual" and 1 <= i < last and sizes[i] == sizes[i + 1],
                  dropout=dropout if i < last else 0.0)
            for i, act in enumerate(self.activations)]
        # any layer with a norm or a skip: forward and backward take the general path
        self._deep = any(layer.norm or layer.residual for layer in self.layers)
        self._keys = None  # per layer: the dropout key of the last forward, or None
        self._row0 = 0  # the last forward's row0: backward recomputes the masks with it
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
            if layer.norm:  # gamma = 1 (beta stays 0), after W and b
                start = offset + w.size + layer.n_out
                flat[start:start + layer.n_in] = 1.0
            offset += layer.n_params
        return flat

    def _allocate(self, host_params: np.ndarray) -> None:
        be = self.backend
        if "_usage" not in self.__dict__:  # kept by ``to``: a claim outlives the move
            self._usage = Usage()
        self.params = be.asarray(host_params, dtype=self.dtype)
        self.grads = be.zeros(self.n_params, self.dtype)
        offset = 0
        with be.scope():  # the layers' views of the flat buffers, made on their device
            for layer in self.layers:
                offset = layer.bind_(self.params, self.grads, offset)
        self._work = OrderedDict()  # the training forward's work buffers, by batch size
        self._local = threading.local()  # inference's, one set per thread: nothing shared
        self._n = self._X = None
        self._upload_scaling()

    def _upload_scaling(self) -> None:  # device copies in the model's dtype
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
        with self._usage.exclusive("set_input_scaling()"):
            if mean is not None or scale is not None:  # (None, None) clears it
                mean = _scaling_vector("mean", mean, self.n_in)
                scale = _scaling_vector("scale", scale, self.n_in)
                if not np.all(scale > 0):
                    bad = np.flatnonzero(~(scale > 0))
                    raise DataError(f"input scaling: scale must be > 0 for every feature; "
                                    f"scale[{bad[0]}] = {float(scale[bad[0]])!r} "
                                    f"({bad.size} bad entries)")
                _representable(mean, scale, self.dtype)
            self._in_mean, self._in_scale = mean, scale
            self._n = self._X = None  # a cached forward used the old scaling
            self._upload_scaling()

    @property
    def input_scaling(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mean, scale)`` as float64 host copies, or None when inputs are not scaled."""
        if self._in_mean is None:
            return None
        return self._in_mean.copy(), self._in_scale.copy()

    def to(self, backend: str | Backend) -> MLP:
        """Move the parameters to another device (in place); returns self. Optimizers built on
        the old buffers must be rebuilt (or reloaded from a checkpoint)."""
        new = get_backend(backend)
        with self._usage.exclusive("model.to()"):
            if new is not self.backend:
                host = self.backend.to_numpy(self.params)
                self.backend = new
                self._allocate(host)  # keeps the input scaling (host copies)
        return self

    # --- copies ----------------------------------------------------------------------------
    # A plain deepcopy / pickle would copy each layer's W, b, ... as arrays of their own, no
    # longer views into the copy's flat ``params`` (which its optimizer updates). The state
    # keeps the flat buffers (host copies) and the device spec; restoring binds fresh views.

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_work", "_local", "_usage", "_X", "_n", "_dev_mean", "_dev_scale"):
            state.pop(key, None)  # per-forward caches, device copies of the scaling, threads
        state["params"] = self.backend.to_numpy(self.params).copy()
        state["grads"] = self.backend.to_numpy(self.grads).copy()
        state["backend"] = (self.backend.device, getattr(self.backend, "kernel_set", "fused"))
        state["layers"] = [_unbound(layer) for layer in self.layers]
        return state

    def __setstate__(self, state: dict) -> None:
        device, kernels = state["backend"]
        self._restore(state, get_backend(device, kernels=kernels))

    def __deepcopy__(self, memo: dict) -> MLP:
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone._restore(copy.deepcopy(self.__getstate__(), memo), self.backend)
        return clone

    def __copy__(self) -> MLP:
        # a copy sharing the flat buffers but not the layers' views would be the trap above
        return self.__deepcopy__({})

    def _restore(self, state: dict, backend: Backend) -> None:
        state = dict(state)
        params, grads = state.pop("params"), state.pop("grads")
        state.pop("backend")
        self.__dict__.update(state)
        self.backend = backend  # the same device object in this process (deepcopy)
        self._allocate(params)
        self.backend.assign(self.grads, grads)

    def parameters(self) -> ParameterList:
        """Every Parameter(name, data, grad), plus the flat ``.data`` / ``.grad`` buffers."""
        params = [p for layer in self.layers for p in layer.parameters()]
        return ParameterList(params, self.params, self.grads, self.backend)

    def config(self) -> dict:
        """The constructor arguments (JSON-serialisable), enough to rebuild the architecture."""
        config = {"layer_sizes": list(self.layer_sizes), "activation": self.activation,
                  "output_activation": self.output_activation, "init": self.init,
                  "dtype": self.dtype.name, "seed": self.seed, "alpha": self.alpha,
                  "block": self.block, "norm": self.norm, "dropout": self.dropout}
        if self.dropout > 0:
            config["dropout_seed"] = self.dropout_seed
        return config

    @property
    def n_in(self) -> int:
        return self.layer_sizes[0]

    @property
    def n_out(self) -> int:
        return self.layer_sizes[-1]

    def __repr__(self) -> str:
        sizes = "-".join(map(str, self.layer_sizes))
        deep = "".join([f", block={self.block!r}" if self.block != "plain" else "",
                        f", norm={self.norm!r}" if self.norm else "",
                        f", dropout={self.dropout}" if self.dropout else ""])
        return (f"MLP({sizes}, activation={self.activation!r}, "
                f"output_activation={self.output_activation!r}{deep}, dtype={self.dtype.name}, "
                f"device={self.backend.device})")


def _unbound(layer: Dense) -> Dense:
    """A shallow copy of ``layer`` without its views into a model's buffers."""
    layer = copy.copy(layer)
    layer.unbind_()
    return layer


def _check_sizes(layer_sizes) -> list[int]:
    try:
        sizes = list(layer_sizes)
    except TypeError:
        sizes = None
    if isinstance(layer_sizes, (str, bytes)) or sizes is None or len(sizes) < 2 \
            or not all(validation.is_int(s) and s > 0 for s in sizes):
        raise ConfigError(f"layer_sizes must list at least two positive integers "
                          f"[n_in, ..., n_out], got {layer_sizes!r}")
    return [int(s) for s in sizes]


def n_parameters(layer_sizes: Sequence[int], norm: str | None = None) -> int:
    """Weights plus biases (plus LayerNorm's gamma and beta with ``norm="layernorm"``: on the
    input of every layer but the first) of an MLP with these layer sizes (exact Python int)."""
    sizes = [int(s) for s in layer_sizes]
    n = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    return n + (2 * sum(sizes[1:-1]) if norm == "layernorm" else 0)


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


def _check_deep(block, norm, dropout) -> tuple[str, str | None, float]:
    if not (isinstance(block, str) and block in BLOCKS):
        raise ConfigError(f"unknown block {block!r}; valid blocks: {', '.join(BLOCKS)}")
    if not (norm is None or isinstance(norm, str) and norm in NORMS):
        raise ConfigError(f"unknown norm {norm!r}; valid norms: None, "
                          f"{', '.join(repr(n) for n in NORMS if n)}")
    if not (validation.real(dropout) and 0 <= dropout < 1):
        raise ConfigError(f"dropout must be a rate in [0, 1), got {dropout!r}")
    return block, norm, float(dropout)


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


def _representable(mean: np.ndarray, scale: np.ndarray, dtype: np.dtype) -> None:
    """A DataError unless the scaling survives the cast to the model's ``dtype``: a float64
    mean past float32's range became inf (every output NaN), a scale below its smallest
    normal number 0 or a subnormal whose reciprocal overflows (outputs inf)."""
    info = np.finfo(dtype)
    with np.errstate(over="ignore"):
        bad_mean = np.flatnonzero(~np.isfinite(mean.astype(dtype)))
    if bad_mean.size:
        raise DataError(f"input scaling: mean[{bad_mean[0]}] = {float(mean[bad_mean[0]])!r} "
                        f"is beyond the range of the model's {dtype.name} (+-{float(info.max):g})")
    bad_scale = np.flatnonzero(~(scale >= info.tiny) | ~(scale <= info.max))
    if bad_scale.size:
        raise DataError(f"input scaling: scale[{bad_scale[0]}] = "
                        f"{float(scale[bad_scale[0]])!r} is not a normal {dtype.name} number; "
                        f"scale must be in [{float(info.tiny):g}, {float(info.max):g}]")


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
    if memory is not None and 2 * n_params * dtype.itemsize > memory:
        raise ConfigError(_too_large(sizes, n_params, dtype,
                                     f"this machine has {memory:,} bytes of memory"))
