"""Interop with PyTorch and JAX: DLPack zero-copy exchange and nn.Sequential weights.

Arrays cross with DLPack (``__dlpack__``; CuPy also reads ``__cuda_array_interface__``), so a
tensor already on the right device is shared, not copied::

    X = interop.as_array(torch_tensor, model.backend)      # zero-copy when devices match
    params = interop.export_parameters(model, "torch")      # torch views of model.params

PyTorch ``nn.Sequential`` stacks of ``Linear`` (+ activation) layers convert both ways, in
memory (``from_torch_sequential`` / ``to_torch_sequential``) or through a safetensors file whose
keys are the Sequential's own ``state_dict`` keys (``import_torch`` / ``export_torch``).
PyTorch's Linear weight is (out, in): devnet's W is its transpose, (in, out).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from devnet import validation
from devnet.backend import Backend, get_backend
from devnet.backend.host import detach as _detach
from devnet.backend.host import to_numpy
from devnet.errors import CheckpointError, ConfigError, DataError

__all__ = ["as_array", "from_dlpack", "to_numpy", "export_parameters", "to_torch", "to_jax",
           "to_torch_sequential", "from_torch_sequential", "export_torch", "import_torch",
           "TORCH_ACTIVATIONS"]

#: torch.nn module class name -> devnet activation name (Linear layers carry the weights)
TORCH_ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid",
                     "LeakyReLU": "leaky_relu", "GELU": "gelu", "SiLU": "silu",
                     "Softmax": "softmax", "Identity": "identity"}
_TO_TORCH = {v: k for k, v in TORCH_ACTIVATIONS.items()}
_META_KEY = "devnet.activations"


def from_dlpack(x, backend: str | Backend = "auto"):
    """``x`` (any DLPack / CUDA-array-interface producer) as an array on ``backend``: shared
    when ``x`` already lives on that device, else copied (GPU to GPU, or through the host)."""
    be = get_backend(backend)
    return _numeric(_from_dlpack(be, _detach(x)), x)


def _from_dlpack(be: Backend, x):
    if be.is_array(x):
        return x
    arr = _shared(be, x)
    if arr is not None:
        # cupy.from_dlpack imports on the producer's GPU, which may not be be's: copy it there
        return arr if be.is_array(arr) else be.asarray(arr)
    try:
        return be.asarray(to_numpy(x))
    except (BufferError, RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
        # bfloat16, a sparse / meta / conjugate-view torch tensor, ...: say what it was
        raise DataError(f"cannot convert {_describe(x)} to an array on {be.device}: {exc}; "
                        "convert it to a dense float32 / float64 tensor first") from None


def _shared(be: Backend, x):
    """``x`` as an ``be.xp`` array sharing its memory (DLPack, or CUDA array interface), on
    whatever device holds it; None when ``be.xp`` cannot read it in place."""
    try:
        return be.xp.from_dlpack(x)
    except (BufferError, RuntimeError, TypeError, ValueError, AttributeError):
        pass  # a host producer for CuPy, a device one for NumPy, or an old producer
    if hasattr(x, "__cuda_array_interface__") and not isinstance(x, be.xp.ndarray):
        try:
            return be.asarray(x)  # CuPy reads __cuda_array_interface__ zero-copy
        except Exception:  # the CPU backend cannot read device memory
            pass
    return None


def _describe(x) -> str:
    dtype = getattr(x, "dtype", None)
    return type(x).__name__ + (f" of dtype {dtype}" if dtype is not None else "")


def _numeric(arr, original):
    """``arr`` unless it holds no real numbers (strings, objects, None): then a DataError."""
    if arr.dtype.kind not in "biufc":
        raise DataError(f"{_describe(original)} is not numeric (dtype {arr.dtype}); expected "
                        "an array of numbers")
    return arr


def as_array(x, backend: str | Backend = "auto"):
    """The edge conversion for ``fit`` / ``predict`` inputs: ``x`` on ``backend``'s device.

    Device arrays pass through; tensors arrive by DLPack (zero-copy on the same device);
    anything else (lists, NumPy on a GPU backend) is copied. The dtype is kept.
    """
    be = get_backend(backend)
    if be.is_array(x):
        return _numeric(x, x)
    if not isinstance(x, np.ndarray) and (hasattr(x, "__dlpack__")
                                          or hasattr(x, "__cuda_array_interface__")):
        return from_dlpack(x, be)
    if x is None or isinstance(x, (str, bytes)):
        raise DataError(f"cannot convert {type(x).__name__} to an array: expected numbers")
    try:
        arr = be.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"cannot convert {type(x).__name__} to an array on {be.device}: "
                        f"{exc}") from None
    return _numeric(arr, x)


def export_parameters(model, to: str | None = None) -> dict:
    """The model's parameters by name (``layers.0.W`` (n_in, n_out), ``layers.0.b``, ...).

    ``to=None``: the backend's own arrays (NumPy / CuPy views); ``"torch"`` or ``"jax"`` wraps
    each view by DLPack. Torch tensors share the model's memory; JAX arrays are immutable.
    """
    wrap = {None: lambda a: a, "torch": to_torch, "jax": to_jax}
    validation.check_model(model)
    if not (to is None or isinstance(to, str)) or to not in wrap:  # a list is unhashable
        raise ConfigError(f"unknown export target {to!r}; valid targets: None, jax, torch")
    return {p.name: wrap[to](p.data) for p in model.parameters()}


def to_torch(a):
    """A torch tensor sharing memory with ``a`` (NumPy or CuPy), via DLPack."""
    torch = _import("torch", "PyTorch")
    if not hasattr(a, "__dlpack__"):
        raise DataError(f"to_torch shares the memory of a NumPy or CuPy array, got "
                        f"{type(a).__name__}; use torch.tensor(...) to copy other data")
    return torch.from_dlpack(a)


def to_jax(a):
    """A JAX array from ``a`` (NumPy or CuPy) via DLPack (zero-copy where JAX allows)."""
    jax = _import("jax", "JAX")
    return jax.dlpack.from_dlpack(a)


def _import(name: str, what: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"{what} is not installed ({exc}); pip install {name}") from None


# --- PyTorch nn.Sequential ------------------------------------------------------------------

# the arguments that make a torch.nn module compute devnet's activation: softmax per row
# (sample), gelu's tanh approximation
_TORCH_ARGS = {"softmax": {"dim": 1}, "gelu": {"approximate": "tanh"}}


def _torch_act(torch, name: str, alpha: float):
    """The torch.nn module of devnet activation ``name``; None for the identity."""
    if name not in _TO_TORCH:
        raise ConfigError(f"activation {name!r} has no torch.nn equivalent; valid: "
                          f"{', '.join(sorted(_TO_TORCH))}")
    if name == "identity":
        return None
    kwargs = {"negative_slope": alpha} if name == "leaky_relu" else _TORCH_ARGS.get(name, {})
    return getattr(torch.nn, _TO_TORCH[name])(**kwargs)


def to_torch_sequential(model):
    """A ``torch.nn.Sequential`` of Linear (+ activation) layers computing what ``model`` does
    (weights copied to the CPU in the model's dtype)."""
    torch = _import("torch", "PyTorch")
    host_layers = _host_layers(model)
    dtype = getattr(torch, model.dtype.name)
    modules = []
    for layer, (W, b) in zip(model.layers, host_layers):
        lin = torch.nn.Linear(layer.n_in, layer.n_out, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        modules.append(lin)
        act = _torch_act(torch, layer.activation, model.alpha)
        if act is not None:
            modules.append(act)
    return torch.nn.Sequential(*modules)


def _host_layers(model) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each layer's (W, b) as host copies, the model's input standardization folded into the
    first layer so that a plain Linear stack computes the same function:
    ((x - mean) / scale) @ W + b = x @ (W / scale[:, None]) + (b - (mean / scale) @ W).
    """
    validation.check_model(model)
    if model.block != "plain" or model.norm is not None:
        raise ConfigError(f"only plain MLPs export as a Linear stack; this model has "
                          f"block={model.block!r}, norm={model.norm!r}")
    layers = [(model.backend.to_numpy(layer.W).copy(), model.backend.to_numpy(layer.b).copy())
              for layer in model.layers]
    if model.input_scaling is not None:
        mean, scale = model.input_scaling
        W, b = (a.astype(np.float64) for a in layers[0])
        layers[0] = ((W / scale[:, None]).astype(model.dtype),
                     (b - (mean / scale) @ W).astype(model.dtype))
    return layers


def _parse_sequential(modules) -> tuple[list, list[str], float]:
    """[(weight (out, in), bias)] per Linear, one activation name per Linear, leaky slope."""
    layers, acts, slopes = [], [], set()
    for i, mod in enumerate(modules):
        kind = type(mod).__name__
        if kind == "Linear":
            if mod.bias is None:
                raise ConfigError(f"module {i} is a Linear without bias; devnet layers have one")
            layers.append((_weights(mod.weight, i), _weights(mod.bias, i)))
            acts.append("identity")
        elif kind in TORCH_ACTIVATIONS:
            if not layers or acts[-1] != "identity":
                raise ConfigError(f"module {i} ({kind}) must follow a Linear layer directly")
            acts[-1] = TORCH_ACTIVATIONS[kind]
            if kind == "LeakyReLU":
                slopes.add(float(mod.negative_slope))
            # devnet's softmax normalizes each row (sample); dim=0 would mix the batch
            if kind == "Softmax" and getattr(mod, "dim", 1) not in (1, -1, None):
                raise ConfigError(f"module {i}: Softmax(dim={mod.dim}) normalizes across "
                                  "samples; devnet's softmax is per row: Softmax(dim=1)")
            if kind == "GELU" and getattr(mod, "approximate", "none") != "tanh":
                raise ConfigError(f"module {i}: devnet's gelu is GELU(approximate='tanh'); "
                                  "the exact (erf) GELU has no devnet equivalent")
        else:
            raise ConfigError(f"module {i} is a {kind}; a devnet MLP imports only Linear and "
                              f"{', '.join(sorted(TORCH_ACTIVATIONS))}")
    if not layers:
        raise ConfigError("the Sequential has no Linear layer")
    if len(slopes) > 1:
        raise ConfigError(f"the LeakyReLU modules have different negative slopes "
                          f"{sorted(slopes)}; a devnet MLP has one (alpha)")
    return layers, acts, slopes.pop() if slopes else 0.01


def _weights(tensor, i: int) -> np.ndarray:
    """A Linear's weight or bias as a finite float32 / float64 host array (half-precision
    weights widened to float32: NumPy has no bfloat16, and devnet computes in float32 or 64)."""
    t = tensor.detach().cpu()
    if t.dtype.is_floating_point and t.element_size() < 4:
        t = t.float()
    a = t.numpy()
    _finite_weights(a, f"module {i} (Linear)", ConfigError)
    return a


def _finite_weights(a: np.ndarray, where: str, error: type) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise error(f"{where} has NaN or Inf weights; a model built from them would output NaN")


def _build(layers, acts, alpha, backend, dtype):
    """An MLP of the Linear weights ``layers`` [(weight (out, in), bias)]; ``dtype`` None:
    float64 weights stay float64, the rest become float32."""
    from devnet.nn import MLP

    for i, (w, b) in enumerate(layers):
        if w.ndim != 2 or b.ndim != 1:
            raise ConfigError(f"Linear {i}: weight must be 2-D (out, in) and bias 1-D (out,), "
                              f"got weight {tuple(w.shape)} / bias {tuple(b.shape)}")
    sizes = [layers[0][0].shape[1]] + [w.shape[0] for w, _ in layers]
    for i, ((w, b), n_in) in enumerate(zip(layers, sizes[:-1], strict=True)):
        if w.shape != (sizes[i + 1], n_in) or b.shape != (sizes[i + 1],):
            raise ConfigError(f"Linear {i}: weight {tuple(w.shape)} / bias {tuple(b.shape)} do "
                              f"not chain with the previous layer's {n_in} outputs")
    if dtype is None:
        dtype = "float64" if layers[0][0].dtype == np.float64 else "float32"
    model = MLP(sizes, activation=acts[:-1], output_activation=acts[-1], dtype=dtype,
                backend=backend, seed=None, alpha=alpha)
    for layer, (w, b) in zip(model.layers, layers, strict=True):
        # through the views' setter: it refuses values the model's dtype cannot hold
        layer.W = np.ascontiguousarray(w.T)
        layer.b = b
    return model


def from_torch_sequential(seq, backend: str | Backend = "auto", dtype: str | None = None):
    """A devnet MLP with the weights of ``seq`` (Linear and activation modules only).

    dtype: "float32" / "float64", default the Linear weights' dtype.
    """
    try:
        modules = list(seq)
    except TypeError:
        raise ConfigError(f"from_torch_sequential takes an nn.Sequential (or a list of "
                          f"modules) of Linear and {', '.join(sorted(TORCH_ACTIVATIONS))}; "
                          f"got a {type(seq).__name__}, which is not a sequence of modules"
                          + (": wrap it, nn.Sequential(layer)" if type(seq).__name__ ==
                             "Linear" else "")) from None
    layers, acts, alpha = _parse_sequential(modules)
    return _build(layers, acts, alpha, backend, dtype)


def export_torch(model, path: str | Path) -> Path:
    """Write ``model`` as the safetensors ``state_dict`` of ``to_torch_sequential(model)``
    (keys ``"<index>.weight"`` (out, in) and ``"<index>.bias"``), with the activations in its
    metadata for ``import_torch``. Needs no PyTorch.
    """
    from safetensors.numpy import save_file

    host_layers = _host_layers(model)
    tensors, index = {}, 0
    for layer, (W, b) in zip(model.layers, host_layers):
        tensors[f"{index}.weight"] = np.ascontiguousarray(W.T)
        tensors[f"{index}.bias"] = np.ascontiguousarray(b)
        index += 1 if layer.activation == "identity" else 2
    meta = {_META_KEY: json.dumps([layer.activation for layer in model.layers]),
            "devnet.alpha": repr(model.alpha)}
    path = Path(path)
    try:
        save_file(tensors, str(path), metadata=meta)
    except Exception as exc:  # safetensors raises its own error types (a missing folder, ...)
        raise CheckpointError(f"cannot write {str(path)!r}: {exc}") from None
    return path


def import_torch(path: str | Path, activation: str = "relu", output_activation: str = "identity",
                 backend: str | Backend = "auto", dtype: str | None = None):
    """A devnet MLP from a safetensors file of an ``nn.Sequential`` state_dict.

    Linear layers are the ``"<index>.weight"`` / ``"<index>.bias"`` pairs in index order. The
    activations come from the file's devnet metadata when ``export_torch`` wrote it, else
    ``activation`` between layers and ``output_activation`` after the last.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {exc}") \
            from None
    indices, prefixes = defaultdict(dict), set()
    for key, tensor in tensors.items():
        m = re.fullmatch(r"(.*?)(\d+)\.(weight|bias)", key)
        if m is None:
            raise CheckpointError(f"{path}: key {key!r} is not '<index>.weight' / "
                                  "'<index>.bias' of an nn.Sequential")
        prefixes.add(m.group(1))
        indices[int(m.group(2))][m.group(3)] = tensor
    if len(prefixes) > 1:
        # "enc.0.weight" and "dec.0.weight" would both be layer 0, one silently dropped
        raise CheckpointError(f"{path}: keys of more than one module ({sorted(prefixes)}); "
                              "expected one nn.Sequential's state_dict")
    layers = []
    for i in sorted(indices):
        entry = indices[i]
        if set(entry) != {"weight", "bias"}:
            raise CheckpointError(f"{path}: layer {i} needs both weight and bias")
        for part in ("weight", "bias"):
            if entry[part].dtype.kind != "f":
                raise CheckpointError(f"{path}: {i}.{part} has dtype {entry[part].dtype}; "
                                      "expected floating-point weights")
            _finite_weights(entry[part], f"{path}: {i}.{part}", CheckpointError)
        layers.append((entry["weight"], entry["bias"]))
    if not layers:
        raise CheckpointError(f"{path}: no Linear weights in the file")
    if _META_KEY in meta:
        acts, alpha = _metadata(path, meta)
        if len(acts) != len(layers):
            raise CheckpointError(f"{path}: metadata lists {len(acts)} activations for "
                                  f"{len(layers)} layers")
    else:
        acts = [activation] * (len(layers) - 1) + [output_activation]
        alpha = 0.01
    return _build(layers, acts, alpha, backend, dtype)


def _metadata(path: Path, meta: dict) -> tuple[list[str], float]:
    """The activations and leaky slope ``export_torch`` recorded, or a CheckpointError."""
    try:
        acts = json.loads(meta[_META_KEY])
        alpha = float(meta.get("devnet.alpha", 0.01))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable devnet metadata ({exc})") from None
    if not (isinstance(acts, list) and all(isinstance(a, str) for a in acts)):
        raise CheckpointError(f"{path}: metadata {_META_KEY!r} must be a JSON list of "
                              f"activation names, got {meta[_META_KEY]!r}")
    return acts, alpha
