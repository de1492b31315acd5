"""The multi-layer perceptron: forward and hand-written backward over flat parameter buffers.

Over 400 lines: the plain path and the deep path (residual blocks, LayerNorm, dropout) share the
model's buffers, its argument checks and its checkpoint config, and read best side by side.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from devnet import validation
from devnet.backend import Backend, get_backend
from devnet.backend.host import detach, to_numpy
from devnet.errors import ConfigError, DataError
from devnet.kernels import scalar
from devnet.kernels.checks import TRUSTED
from devnet.nn import activations
from devnet.nn import init as initializers
from devnet.nn.dense import Dense, ParameterList
from devnet.nn.usage import Usage, get_ident

DTYPES = ("float32", "float64")
BLOCKS = ("plain", "residual")
NORMS = (None, "layernorm")
_MAX_CACHED_BATCH_SIZES = 4  # work buffers kept for this many batch sizes (LRU)
# NumPy < 2 only warns on ragged lists, with this (moved to np.exceptions in 1.25)
_RaggedWarning = getattr(np, "exceptions", np).VisibleDeprecationWarning
_MAX_ROW0 = 2**62  # row0 + the element count must fit the kernels' int64 element index


def _own_buffers(method):
    """Run ``method`` with the kernels' argument checks off: it checks X / dY itself, and every
    other buffer its kernels touch is the model's own, allocated to agree. It runs in the
    backend's scope: its own xp calls (input scaling, copies) go to whichever device is
    current. The training buffers it uses belong to the thread training the model, if one
    does: another thread is refused (one comparison, no lock, in the training step)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        owner = self._usage.owner
        if owner is not None and owner != get_ident():
            raise self._usage.busy(f"model.{method.__name__}()")
        with TRUSTED, self.backend.scope():
            return method(self, *args, **kwargs)
    return run


def _inference(method):
    """Run ``method`` as one inference: registered with the model's Usage (refused while
    another thread trains the model; a training claim waits for it), in the backend's scope
    with the kernels' argument checks off (its buffers are the calling thread's own)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        usage = self._usage
        me = usage.enter_shared(f"model.{method.__name__}()")
        try:
            with TRUSTED, self.backend.scope():
                return method(self, *args, **kwargs)
        finally:
            usage.exit_shared(me)
    return run


@dataclass
class _Work:
    """Preallocated buffers for one batch size n."""

    A: list  # per layer (n, n_out): matmul output, then the activation in place
    Z: list  # per layer (n, n_out) pre-activation, or None where act' comes from A
    G: list  # per layer (n, n_out): dL/dA, turned into dL/dZ in place (top layer: dL/dZ only)
    dX: Any = None  # (n, n_in), allocated on the first backward that asks for it
    X: Any = None  # (n, n_in) the standardized input, allocated when input scaling is set
    # deep-network buffers, None for layers without that option:
    U: list = None  # per normed layer (n, n_in): LayerNorm of its input (the matmul's input)
    mean: list = None  # per normed layer (n,): the LayerNorm row means ...
    rstd: list = None  # ... and 1 / sqrt(var + eps)
    dU: list = None  # per normed layer (n, n_in): dL/dU
    R: list = None  # per residual block (n, n_out): its output, input + dropout(act(...))
    D: list = None  # per residual block (n, n_out): dL/dZ (G stays: it is the skip's gradient)
    inputs: list = None  # per layer: its input in the last forward (X or the previous output)

    ids: set = None  # id() of every buffer above (they stay alive with this _Work)

    def own_(self, *buffers) -> None:
        """Record ``buffers`` (allocated for this batch size) as this _Work's own."""
        self.ids = self.ids or set()
        self.ids.update(id(buf) for buf in buffers if buf is not None)

    def owns(self, a) -> bool:
        """True when ``a`` is (a view of) one of these buffers: ``forward(model.forward(X))``
        would overwrite its own input, which backward reads again for dW."""
        while getattr(a, "base", None) is not None:
            a = a.base
        return id(a) in self.ids


class MLP:
    """A stack of Dense layers: ``layer_sizes = [n_in, h1, ..., n_out]``.

    Rows are samples: ``Z = X @ W + b``. All parameters live in ONE flat buffer (``layers[i].W``
    and ``.b`` are views, LayerNorm's gamma and beta too), gradients likewise, so an optimizer
    updates the whole model in one kernel launch.

    Deep networks: with ``block="residual"``, hidden layer i (1 <= i <= len(layer_sizes) - 3,
    i.e. every layer but the first and the output layer) whose input and output widths are
    equal is a pre-norm residual block ``h <- h + dropout(act(norm(h) @ W + b))``; the first
    layer, the output layer and any layer that changes the width are plain (projection)
    layers ``h <- dropout(act(norm(h) @ W + b))``. ``norm="layernorm"`` normalizes the input of
    every layer but the first (whose input is the data: see ``set_input_scaling``), residual
    or not, output layer included: per row ``gamma (h - mean) / sqrt(var + 1e-5) + beta``, gamma
    starting at 1 and beta at 0. ``dropout=p`` drops each hidden activation (not the output)
    with probability p during training only (``forward(X, training=True, step=s)``: fit does
    that), scaling the kept ones by 1 / (1 - p); the mask is a hash of (dropout_seed, s, layer,
    element), identical on every device and after a resume. The element is counted in the whole
    batch (``forward(..., row0=r)`` for rows r.. of it): the masks of a batch's parts are the
    masks of the batch, so data-parallel ranks drop what one process would.

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
        dtype = _check_dtype(dtype)
        initializers.get(init)
        seed = validation.seed("seed", seed)
        if not (_is_finite_real(alpha) and alpha >= 0):
            raise ConfigError(f"alpha must be a finite number >= 0, got {alpha!r}")
        block, norm, dropout = _check_deep(block, norm, dropout)
        if dropout_seed is None:
            dropout_seed = seed if seed is not None else \
                int(np.random.SeedSequence().entropy % 2**63)
        dropout_seed = validation.seed("dropout_seed", dropout_seed)

        self.layer_sizes = sizes
        self.activations = hidden + [output_activation]
        self.activation = activation if isinstance(activation, str) else list(activation)
        self.output_activation = output_activation
        self.init = init
        self.dtype = dtype
        self.seed = seed
        self.alpha = float(alpha)
        self.block, self.norm, self.dropout = block, norm, dropout
        self.dropout_seed = dropout_seed
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
        self._work: OrderedDict[int, _Work] = OrderedDict()  # the training forward's
        # inference's work buffers, one set per thread: threads predicting at once write
        # nothing another one reads (``_inference_buffers``)
        self._local = threading.local()
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
        with self._usage.exclusive("set_input_scaling()"):
            self._set_input_scaling(mean, scale)

    def _set_input_scaling(self, mean, scale) -> None:
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
            _representable(new_mean, new_scale, self.dtype)
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
        with self._usage.exclusive("model.to()"):
            if new is not self.backend:
                host = self.backend.to_numpy(self.params)
                self.backend = new
                self._allocate(host)  # keeps the input scaling (host copies)
        return self

    # --- copies ----------------------------------------------------------------------------
    # A plain deepcopy / pickle would copy each layer's W, b, ... as an array of its own, no
    # longer a view into the copy's flat ``params``: an optimizer over the copy's parameters()
    # would update a buffer its forward never reads. The state keeps the flat buffers (host
    # copies) and the device spec instead; restoring binds fresh views, as ``to`` does.

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

    # --- forward and backward --------------------------------------------------------------

    def _buffers(self, n: int) -> _Work:
        """The training forward / backward's buffers for n samples (LRU of batch sizes)."""
        work = self._work.get(n)
        if work is None:
            return _cached(self._work, n, self._new_work)
        self._work.move_to_end(n)  # the step's path: no call beyond the lookup
        return work

    def _inference_buffers(self, n: int) -> _Work:
        """The calling thread's inference buffers for n samples: no backward follows, so no
        gradients, pre-activations or output buffer (the caller gives ``out``)."""
        cache = getattr(self._local, "work", None)
        if cache is None:
            cache = self._local.work = OrderedDict()
        return _cached(cache, n, functools.partial(self._new_work, training=False))

    def _new_work(self, n: int, training: bool = True) -> _Work:
        be, dt = self.backend, self.dtype
        last = len(self.layers) - 1
        try:
            if training:
                work = _Work(
                    A=[be.empty((n, layer.n_out), dt) for layer in self.layers],
                    Z=[be.empty((n, layer.n_out), dt)
                       if activations.get(layer.activation).needs_preactivation else None
                       for layer in self.layers],
                    G=[be.empty((n, layer.n_out), dt) for layer in self.layers],
                )
            else:
                work = _Work(A=[be.empty((n, layer.n_out), dt) if i < last else None
                                for i, layer in enumerate(self.layers)],
                             Z=[None] * len(self.layers), G=[])
            if self._deep:
                def each(cond, shape):
                    return [be.empty(shape(layer), dt) if cond(layer) else None
                            for layer in self.layers]

                def normed(layer):
                    return layer.norm

                def resid(layer):
                    return layer.residual

                def normed_train(layer):  # the gradient buffers: backward's only
                    return training and layer.norm

                def resid_train(layer):
                    return training and layer.residual

                work.U = each(normed, lambda layer: (n, layer.n_in))
                work.dU = each(normed_train, lambda layer: (n, layer.n_in))
                work.mean = each(normed, lambda layer: (n,))
                work.rstd = each(normed, lambda layer: (n,))
                work.R = each(resid, lambda layer: (n, layer.n_out))
                work.D = each(resid_train, lambda layer: (n, layer.n_out))
        except MemoryError:
            need = 5 * n * sum(layer.n_out for layer in self.layers) * dt.itemsize
            raise DataError(f"out of memory allocating the work buffers for a batch of {n} "
                            f"samples (about {need:,} bytes); use a smaller batch_size"
                            ) from None
        work.own_(*(buf for bufs in (work.A, work.Z, work.G, work.U, work.dU, work.R,
                                     work.D) for buf in bufs or ()))
        return work

    def owns(self, a) -> bool:
        """True when ``a`` is (a view of) a buffer of the training forward / backward: the
        output ``forward`` returns, ``layer_outputs()``, the dL/dX of ``backward``. The next
        forward of that batch size overwrites it: fit copies such data first."""
        return any(work.owns(a) for work in self._work.values())

    def _as_input(self, X):
        be = self.backend
        if not (be.is_array(X) and X.dtype == self.dtype and X.flags.c_contiguous):
            X = be.asarray(_numeric(be, X, "X"), dtype=self.dtype)
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise DataError(f"X must have shape (n_samples, {self.n_in}) for this model, "
                            f"got {tuple(X.shape)}")
        return X

    @_own_buffers
    def forward(self, X, training: bool = False, step: int = 0, row0: int = 0):
        """Run the network on X (n, n_in); returns the output (n, n_out) on the model's device.

        ``training=True`` applies dropout with the masks of optimizer step ``step`` (fit passes
        its global step count); the default, inference, never drops. ``row0``: X's first row
        within the step's whole batch (a data-parallel rank's shard starts there), so the masks
        are those the whole batch's rows row0..row0+n-1 get. The result is the model's
        own output buffer, overwritten by the next forward with the same batch size: copy it
        to keep it. Caches only what ``backward`` needs.
        """
        X = self._as_input(X)
        drop = _check_training(training, step, row0) and self.dropout > 0
        n = X.shape[0]
        work = self._buffers(n)
        if work.owns(X):
            X = X.copy()
        if self._dev_mean is not None:
            X = self._standardize(X, work)
        if drop or self._deep:
            A, self._keys = self._forward_deep(X, work, work.A, step if drop else None, row0)
            self._row0 = int(row0)
        else:
            self._keys = None
            A = self._forward_plain(X, work.A, work.Z)
        self._X, self._n = X, n
        return A

    def _forward_plain(self, X, outs, Zs):
        """Layer i's output into ``outs[i]`` (its pre-activation into ``Zs[i]`` if not None);
        returns the last one."""
        matmul, kernels, alpha = self.backend.matmul, self.backend.kernels, self.alpha
        A = X
        for layer, out, Z in zip(self.layers, outs, Zs):
            matmul(A, layer.W, out=out)
            kernels.bias_act_fwd(layer.activation, out, layer.b, Z, alpha)
            A = out
        return A

    def _forward_deep(self, X, work: _Work, outs, step: int | None, row0: int = 0):
        """The forward with LayerNorm, residual blocks and (``step`` not None) dropout; X's rows
        are rows row0.. of the step's batch (they key the masks). Layer i's matmul output goes
        to ``outs[i]`` (``work.A`` in training). Returns the output and the dropout keys."""
        row0 = int(row0)
        be, kernels, alpha = self.backend, self.backend.kernels, self.alpha
        keys = [None] * len(self.layers)
        inputs = [None] * len(self.layers)
        A = X
        for i, layer in enumerate(self.layers):
            inputs[i] = A
            if layer.norm:
                kernels.layernorm_fwd(A, layer.gamma, layer.beta, work.U[i], work.mean[i],
                                      work.rstd[i])
                A = work.U[i]
            out, Z = outs[i], work.Z[i]
            be.matmul(A, layer.W, out=out)
            p = layer.dropout if step is not None else 0.0
            if p > 0:
                keys[i] = scalar.dropout_key(self.dropout_seed, step, i)
            if layer.residual:  # out <- dropout(act(out + b)); R <- input + out, one pass
                kernels.bias_act_drop_fwd(layer.activation, out, layer.b, Z, alpha, p,
                                          keys[i] or 0, inputs[i], work.R[i], row0=row0)
                A = work.R[i]
            else:
                if p > 0:
                    kernels.bias_act_drop_fwd(layer.activation, out, layer.b, Z, alpha, p,
                                              keys[i], row0=row0)
                else:
                    kernels.bias_act_fwd(layer.activation, out, layer.b, Z, alpha)
                A = out
        work.inputs = inputs
        return A, keys

    def layer_outputs(self) -> list:
        """Each layer's output in the last ``forward`` (device arrays, the model's buffers)."""
        if self._n is None:
            raise DataError("layer_outputs() called before forward()")
        work = self._work[self._n]
        return [work.R[i] if layer.residual else work.A[i]
                for i, layer in enumerate(self.layers)]

    def _standardize(self, X, work: _Work):
        """``(X - mean) / scale`` into the work buffer (X itself is left untouched)."""
        xp = self.backend.xp
        if work.X is None:
            work.X = self.backend.empty(X.shape, self.dtype)
            work.own_(work.X)
        xp.subtract(X, self._dev_mean, out=work.X)
        xp.divide(work.X, self._dev_scale, out=work.X)
        return work.X

    @_own_buffers
    def backward(self, dY, input_grad: bool = True):
        """Backpropagate dL/dY (n, n_out) through the last ``forward``.

        Overwrites every layer's ``dW`` and ``db``; returns dL/dX (n, n_in), or None when
        ``input_grad=False`` (saves the first layer's input-gradient matmul).
        """
        if self._n is None:
            raise DataError("backward() called before forward(): there is no forward pass to "
                            "backpropagate through; call model.forward(X) on the batch first")
        if not isinstance(input_grad, (bool, np.bool_)):
            raise ConfigError(f"input_grad must be True or False, got {input_grad!r}")
        n = self._n
        dY = self._as_grad(dY, n)
        work = self._work[n]
        if self._keys is not None or self._deep:
            return self._backward_deep(dY, work, n, input_grad)
        be, kernels, alpha = self.backend, self.backend.kernels, self.alpha
        G = dY
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            dZ = self._dz_buffer(layer, G, work.G[i])
            kernels.act_bwd(layer.activation, G, work.A[i], work.Z[i], dZ, layer.db, alpha)
            A_prev = self._X if i == 0 else work.A[i - 1]
            be.matmul(A_prev.T, dZ, out=layer.dW)
            if i > 0:
                G = work.G[i - 1]
                be.matmul(dZ, layer.W.T, out=G)
            elif input_grad:
                return self._input_grad(dZ, layer, work, n)
        return None

    @staticmethod
    def _dz_buffer(layer, G, own):
        """Where dL/dZ goes: G itself for an identity layer without dropout (dZ = G, so the
        kernel only sums the bias gradient, no copy); else the layer's own buffer ``own``."""
        if layer.activation == "identity" and not layer.dropout and \
                getattr(G.flags, "writeable", True):
            return G
        return own

    def _input_grad(self, dZ, layer, work: _Work, n: int):
        be = self.backend
        if work.dX is None:
            work.dX = be.empty((n, self.n_in), self.dtype)
            work.own_(work.dX)
        be.matmul(dZ, layer.W.T, out=work.dX)
        if self._dev_scale is not None:
            # d((x - mean) / scale) / dx = 1 / scale, per feature
            be.xp.divide(work.dX, self._dev_scale, out=work.dX)
        return work.dX

    def _backward_deep(self, dY, work: _Work, n: int, input_grad: bool):
        """``backward`` through LayerNorm, residual blocks and dropout (``_forward_deep``)."""
        be, kernels, alpha = self.backend, self.backend.kernels, self.alpha
        keys = self._keys or [None] * len(self.layers)
        G = dY  # dL/d(layer output)
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            # a residual block keeps G (the skip's gradient) and puts dL/dZ beside it
            dZ = work.D[i] if layer.residual else self._dz_buffer(layer, G, work.G[i])
            if keys[i] is not None:
                kernels.act_drop_bwd(layer.activation, G, work.A[i], work.Z[i], dZ, layer.db,
                                     alpha, layer.dropout, keys[i], row0=self._row0)
            else:
                kernels.act_bwd(layer.activation, G, work.A[i], work.Z[i], dZ, layer.db, alpha)
            inp = work.inputs[i]
            be.matmul((work.U[i] if layer.norm else inp).T, dZ, out=layer.dW)
            if i == 0 and not layer.norm:
                return self._input_grad(dZ, layer, work, n) if input_grad else None
            if i == 0 and not input_grad:
                return None
            if i == 0:
                if work.dX is None:
                    work.dX = be.empty((n, self.n_in), self.dtype)
                    work.own_(work.dX)
                dX = work.dX
            else:
                dX = work.G[i - 1]
            skip = G if layer.residual else None
            if layer.norm:  # dX <- LayerNorm backward of dU (+ the skip's G), fused
                be.matmul(dZ, layer.W.T, out=work.dU[i])
                kernels.layernorm_bwd(work.dU[i], inp, work.mean[i], work.rstd[i],
                                      layer.gamma, dX, layer.dgamma, layer.dbeta, skip)
            else:
                be.matmul(dZ, layer.W.T, out=dX)
                if skip is not None:
                    be.xp.add(dX, skip, out=dX)
            if i == 0:
                if self._dev_scale is not None:
                    be.xp.divide(dX, self._dev_scale, out=dX)
                return dX
            G = dX
        return None

    def _as_grad(self, dY, n):
        be = self.backend
        if not (be.is_array(dY) and dY.dtype == self.dtype and dY.flags.c_contiguous):
            dY = be.asarray(_numeric(be, dY, "dY"), dtype=self.dtype)
        if not getattr(dY.flags, "writeable", True):
            # the kernels take dL/dY as a writable work buffer type (Numba types a read-only
            # array apart and cannot compile the in-place branch for it): copy, never write it
            dY = dY.copy()
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
        host = X if isinstance(X, np.ndarray) else None if on_device else _numeric(None, X, "X")
        if host is not None:  # finite values that the cast to the dtype would make inf
            validation.check_range("X", host, self.dtype)
        X = self._as_input(X) if on_device else host
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise DataError(f"X must have shape (n_samples, {self.n_in}) for this model, "
                            f"got {tuple(X.shape)}")
        out = self._predict(X, batch_size)
        return out if on_device else self.backend.to_numpy(out)

    @_inference
    def _predict(self, X, batch_size: int):
        """The outputs for X (n, n_in) in batches, on the model's device; one inference, so a
        training claim from another thread waits for all of its batches."""
        xp = self.backend.xp
        out = self.backend.empty((X.shape[0], self.n_out), self.dtype)
        for i in range(0, X.shape[0], batch_size):
            batch = self._as_input(X[i:i + batch_size])
            # predict is an edge (fit's step never calls it): NaN / Inf input is an error
            # naming the rows, not NaN outputs (or, through a saturating activation, numbers)
            if not bool(xp.isfinite(batch).all()):
                raise DataError(f"X contains NaN or Inf (in rows {i}..{i + len(batch) - 1}); "
                                "expected finite numbers")
            self._infer(batch, out[i:i + batch_size])
        return out

    @_inference
    def infer_(self, X, out):
        """Write the inference output for X (n, n_in) into ``out`` (n, n_out), both on the
        model's device in its dtype; returns ``out``.

        Safe from many threads at once: it uses the calling thread's own work buffers and none
        of the state ``backward`` reads (refused while another thread trains the model).
        """
        X = self._as_input(X)
        if not (self.backend.is_array(out) and out.shape == (X.shape[0], self.n_out)
                and out.dtype == self.dtype and out.flags.c_contiguous):
            raise DataError(f"infer_ needs out: a C-contiguous {self.dtype.name} array of shape "
                            f"{(X.shape[0], self.n_out)} on the model's device, got "
                            f"{type(out).__name__} {getattr(out, 'dtype', '')} "
                            f"{tuple(getattr(out, 'shape', ()))}")
        return self._infer(X, out)

    def _infer(self, X, out):
        n = X.shape[0]
        work = self._inference_buffers(n)
        if self._dev_mean is not None:
            X = self._standardize(X, work)
        outs = work.A[:-1] + [out]
        if self._deep:
            self._forward_deep(X, work, outs, None)
        else:
            self._forward_plain(X, outs, work.Z)
        return out

    __call__ = forward

    def __repr__(self) -> str:
        sizes = "-".join(map(str, self.layer_sizes))
        deep = "".join([f", block={self.block!r}" if self.block != "plain" else "",
                        f", norm={self.norm!r}" if self.norm else "",
                        f", dropout={self.dropout}" if self.dropout else ""])
        return (f"MLP({sizes}, activation={self.activation!r}, "
                f"output_activation={self.output_activation!r}{deep}, dtype={self.dtype.name}, "
                f"device={self.backend.device})")


def _cached(cache: OrderedDict, n: int, make) -> _Work:
    """``cache[n]``, made by ``make(n)`` if missing; the least recently used batch size beyond
    ``_MAX_CACHED_BATCH_SIZES`` is dropped."""
    work = cache.get(n)
    if work is None:
        work = cache[n] = make(n)
        if len(cache) > _MAX_CACHED_BATCH_SIZES:
            cache.popitem(last=False)
    else:
        cache.move_to_end(n)
    return work


def _unbound(layer: Dense) -> Dense:
    """A shallow copy of ``layer`` without its views into a model's buffers."""
    layer = copy.copy(layer)
    layer.unbind_()
    return layer


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_finite_real(value) -> bool:
    try:
        return _is_real(value) and math.isfinite(value)
    except OverflowError:  # an int past float range
        return False


def _numeric(backend, a, name: str):
    """``a`` as an array of real numbers (on ``backend``'s device, or NumPy for None), dtype
    kept; a DataError for anything else (strings, objects, complex, ragged lists, tensors that
    cannot be read), never a raw conversion error or a silent cast (complex loses its
    imaginary part, a datetime becomes its tick count)."""
    if backend is not None and backend.is_array(a):
        arr = a
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", _RaggedWarning)
                a = detach(a)  # a torch tensor that requires grad refuses to export
                arr = backend.asarray(a) if backend is not None else to_numpy(a)
        except (TypeError, ValueError, RuntimeError, BufferError, _RaggedWarning) as exc:
            raise DataError(f"{name} could not be read as a numeric array "
                            f"({type(a).__name__}; ragged rows, strings or an unsupported "
                            f"tensor dtype such as bfloat16?): {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name} must hold real numbers (float, int or bool), got dtype "
                        f"{arr.dtype}")
    return arr


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


def _check_dtype(dtype) -> np.dtype:
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    return np.dtype(dt.name)  # native byte order: the kernels cannot type '>f8'


def _check_deep(block, norm, dropout) -> tuple[str, str | None, float]:
    if not (isinstance(block, str) and block in BLOCKS):
        raise ConfigError(f"unknown block {block!r}; valid blocks: {', '.join(BLOCKS)}")
    if not (norm is None or isinstance(norm, str) and norm in NORMS):
        raise ConfigError(f"unknown norm {norm!r}; valid norms: None, "
                          f"{', '.join(repr(n) for n in NORMS if n)}")
    if not (_is_finite_real(dropout) and 0 <= dropout < 1):
        raise ConfigError(f"dropout must be a rate in [0, 1), got {dropout!r}")
    return block, norm, float(dropout)


def _check_training(training, step, row0=0) -> bool:
    if not isinstance(training, (bool, np.bool_)):
        raise ConfigError(f"training must be True or False, got {training!r}")
    if not (_is_int(step) and step >= 0):
        raise ConfigError(f"step must be a non-negative integer (the optimizer step that keys "
                          f"the dropout masks), got {step!r}")
    if not (_is_int(row0) and 0 <= row0 <= _MAX_ROW0):
        raise ConfigError(f"row0 must be a non-negative integer up to 2**62 (the first row's "
                          f"index in the step's whole batch, which keys the dropout masks), got "
                          f"{row0!r}")
    return bool(training)


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
    need = 2 * n_params * dtype.itemsize
    if memory is not None and need > memory:
        raise ConfigError(_too_large(sizes, n_params, dtype,
                                     f"this machine has {memory:,} bytes of memory"))
