"""The MLP's forward and hand-written backward passes over its preallocated work buffers.

``Passes`` is the half of ``MLP`` (which inherits it) that runs the network: training forward
/ backward (plain and deep: residual blocks, LayerNorm, dropout), inference from many threads
at once, and the per-batch-size work buffers both use.
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from devnet import validation
from devnet.backend.host import detach, to_numpy
from devnet.errors import ConfigError, DataError
from devnet.kernels import scalar
from devnet.nn import activations

_MAX_CACHED_BATCH_SIZES = 4  # work buffers kept for this many batch sizes (LRU)
# NumPy < 2 only warns on ragged lists, with this (moved to np.exceptions in 1.25)
_RaggedWarning = getattr(np, "exceptions", np).VisibleDeprecationWarning
_MAX_ROW0 = 2**62  # row0 + the element count must fit the kernels' int64 element index


def _own_buffers(method):
    """Run ``method`` in the backend's scope, refused while another thread trains the model.
    ``method`` calls the unchecked kernels (``backend.raw_kernels``): it checks X / dY itself,
    and every other buffer its kernels touch is the model's own, allocated to agree."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        self._usage.check(f"model.{method.__name__}()")
        with self.backend.scope():
            return method(self, *args, **kwargs)
    return run


def _inference(method):
    """Run ``method`` as one inference (``Usage.shared``) in the backend's scope; it calls the
    unchecked kernels (its buffers are the calling thread's own)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._usage.shared(f"model.{method.__name__}()"), self.backend.scope():
            return method(self, *args, **kwargs)
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


class Passes:
    """The forward, backward and inference methods of ``MLP``; they read what ``MLP`` sets up
    (layers, backend, dtype, input scaling, the ``_work`` / ``_local`` caches, ``_usage``)."""

    def _buffers(self, n: int) -> _Work:
        """The training forward / backward's buffers for n samples (LRU of batch sizes)."""
        work = self._work.get(n)
        if work is None:
            return _cached(self._work, n, self._new_work)
        self._work.move_to_end(n)  # the step's path: no call beyond the lookup
        return work

    def _inference_buffers(self, n: int) -> _Work:
        """The calling thread's inference buffers for n samples."""
        cache = getattr(self._local, "work", None)
        if cache is None:
            cache = self._local.work = OrderedDict()
        return _cached(cache, n, functools.partial(self._new_work, training=False))

    def _new_work(self, n: int, training: bool = True) -> _Work:
        be, dt = self.backend, self.dtype
        last = len(self.layers) - 1
        try:
            work = _Work(  # inference: no output (the caller's), pre-activations or gradients
                A=[be.empty((n, layer.n_out), dt) if training or i < last else None
                   for i, layer in enumerate(self.layers)],
                Z=[be.empty((n, layer.n_out), dt) if training and
                   activations.get(layer.activation).needs_preactivation else None
                   for layer in self.layers],
                G=[be.empty((n, layer.n_out), dt) for layer in self.layers] if training else [])
            if self._deep:
                def each(attr, shape, grad=False):  # gradient buffers: backward's only
                    return [be.empty(shape(layer), dt)
                            if getattr(layer, attr) and (training or not grad) else None
                            for layer in self.layers]

                work.U = each("norm", lambda layer: (n, layer.n_in))
                work.dU = each("norm", lambda layer: (n, layer.n_in), grad=True)
                work.mean = each("norm", lambda layer: (n,))
                work.rstd = each("norm", lambda layer: (n,))
                work.R = each("residual", lambda layer: (n, layer.n_out))
                work.D = each("residual", lambda layer: (n, layer.n_out), grad=True)
        except MemoryError:
            need = 5 * n * sum(layer.n_out for layer in self.layers) * dt.itemsize
            raise DataError(f"out of memory allocating the work buffers for a batch of {n} "
                            f"samples (about {need:,} bytes); use a smaller batch_size"
                            ) from None
        work.own_(*(buf for bufs in (work.A, work.Z, work.G, work.U, work.dU, work.R,
                                     work.D) for buf in bufs or ()))
        return work

    def owns(self, a) -> bool:
        """True when ``a`` is (a view of) a training forward / backward buffer (``forward``'s
        output, ``layer_outputs()``, ``backward``'s dL/dX), which the next forward of that
        batch size overwrites: fit copies such data first."""
        return any(work.owns(a) for work in self._work.values())

    def _device_array(self, a, name: str):
        """``a`` as a C-contiguous array of the model's dtype on its device."""
        be = self.backend
        if not (be.is_array(a) and a.dtype == self.dtype and a.flags.c_contiguous):
            a = be.asarray(_numeric(be, a, name), dtype=self.dtype)
        return a

    def _as_input(self, X):
        return self._check_features(self._device_array(X, "X"))

    def _check_features(self, X):
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
        are those the whole batch's rows row0..row0+n-1 get. The result is the model's own
        buffer, overwritten by the next forward with the same batch size: copy it to keep it.
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
        matmul, kernels, alpha = self.backend.matmul, self.backend.raw_kernels, self.alpha
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
        be, kernels, alpha = self.backend, self.backend.raw_kernels, self.alpha
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
            elif p > 0:
                kernels.bias_act_drop_fwd(layer.activation, out, layer.b, Z, alpha, p, keys[i],
                                          row0=row0)
                A = out
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
        out = self._lazy(work, "X", X.shape[0])
        xp.subtract(X, self._dev_mean, out=out)
        xp.divide(out, self._dev_scale, out=out)
        return out

    def _lazy(self, work: _Work, name: str, n: int):
        """``work``'s (n, n_in) buffer ``name`` ("X" or "dX"), allocated on first use."""
        buf = getattr(work, name)
        if buf is None:
            buf = self.backend.empty((n, self.n_in), self.dtype)
            setattr(work, name, buf)
            work.own_(buf)
        return buf

    def _unscaled(self, dX):
        """dL/dX of the standardized input made dL/d(raw X), in place:
        d((x - mean) / scale) / dx = 1 / scale, per feature."""
        if self._dev_scale is not None:
            self.backend.xp.divide(dX, self._dev_scale, out=dX)
        return dX

    @_own_buffers
    def backward(self, dY, input_grad: bool = True):
        """Backpropagate dL/dY (n, n_out) through the last ``forward``: overwrites every layer's
        ``dW`` and ``db``; returns dL/dX (n, n_in), or None when ``input_grad=False``."""
        if self._n is None:
            raise DataError("backward() called before forward(): there is no forward pass to "
                            "backpropagate through; call model.forward(X) on the batch first")
        validation.flag("input_grad", input_grad)
        n = self._n
        dY = self._as_grad(dY, n)
        work = self._work[n]
        if self._keys is not None or self._deep:
            return self._backward_deep(dY, work, n, input_grad)
        be, kernels, alpha = self.backend, self.backend.raw_kernels, self.alpha
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
        dX = self._lazy(work, "dX", n)
        self.backend.matmul(dZ, layer.W.T, out=dX)
        return self._unscaled(dX)

    def _backward_deep(self, dY, work: _Work, n: int, input_grad: bool):
        """``backward`` through LayerNorm, residual blocks and dropout (``_forward_deep``)."""
        be, kernels, alpha = self.backend, self.backend.raw_kernels, self.alpha
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
            if i == 0 and not (layer.norm and input_grad):
                return self._input_grad(dZ, layer, work, n) if input_grad else None
            dX = self._lazy(work, "dX", n) if i == 0 else work.G[i - 1]
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
                return self._unscaled(dX)
            G = dX
        return None

    def _as_grad(self, dY, n):
        dY = self._device_array(dY, "dY")
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
        if not validation.is_int(batch_size) or batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        batch_size = int(batch_size)
        on_device = self.backend.is_array(X)
        host = X if isinstance(X, np.ndarray) else None if on_device else _numeric(None, X, "X")
        if host is not None:  # finite values that the cast to the dtype would make inf
            validation.check_range("X", host, self.dtype)
        X = self._as_input(X) if on_device else self._check_features(host)
        out = self._predict(X, batch_size)
        return out if on_device else self.backend.to_numpy(out)

    @_inference
    def _predict(self, X, batch_size: int):
        """The outputs for X (n, n_in) in batches, on the model's device: one inference, so a
        training claim waits for all of its batches."""
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
        model's device in its dtype; returns ``out``. Safe from many threads at once (refused
        while another thread trains the model)."""
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


def _check_training(training, step, row0=0) -> bool:
    training = validation.flag("training", training)
    if not (validation.is_int(step) and step >= 0):
        raise ConfigError(f"step must be a non-negative integer (the optimizer step that keys "
                          f"the dropout masks), got {step!r}")
    if not (validation.is_int(row0) and 0 <= row0 <= _MAX_ROW0):
        raise ConfigError(f"row0 must be a non-negative integer up to 2**62 (the first row's "
                          f"index in the step's whole batch, which keys the dropout masks), got "
                          f"{row0!r}")
    return training
