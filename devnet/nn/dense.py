"""Dense layers and parameter views into a model's flat buffers."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from devnet.backend import backend_of
from devnet.errors import DataError
from devnet.kernels.reference import get_xp

_VIEWS = ("W", "b", "dW", "db", "gamma", "beta", "dgamma", "dbeta")


class Parameter(NamedTuple):
    """A named view into the flat parameter buffer (``data``) and gradient buffer (``grad``)."""

    name: str
    data: Any
    grad: Any


class ParameterList(list):
    """The model's Parameters plus the two flat (1-D) buffers they are views of, ``data`` and
    ``grad``, which optimizers update in one pass."""

    def __init__(self, params, data, grad, backend):
        super().__init__(params)
        self.data, self.grad, self.backend = data, grad, backend


class _View:
    """A layer attribute that is a view into the model's flat buffers.

    Assigning an array to it (``layer.W = new_W``) copies the values INTO the view: rebinding
    the attribute would leave a private array that forward reads but optimizers (which update
    the flat buffer) never touch. ``Dense.bind_`` points the view itself (unbound: None).
    """

    def __set_name__(self, owner, name):
        self.slot, self.name = "_" + name, name

    def __get__(self, layer, owner=None):
        return self if layer is None else layer.__dict__.get(self.slot)

    def __set__(self, layer, value):
        view = layer.__dict__.get(self.slot)
        if view is None:  # not bound to a model (yet)
            layer.__dict__[self.slot] = value
        elif value is not view:  # ``layer.W += dW`` has already written into the view
            _copy_into(view, value, f"{layer.name}.{self.name}")


def _copy_into(view, value, name: str) -> None:
    """``view[...] = value`` for a value of the view's shape (or a scalar), else a DataError."""
    xp = get_xp(view)
    try:
        arr = xp.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be set to a numeric array of shape "
                        f"{tuple(view.shape)}: {exc}") from None
    if arr.dtype.kind not in "biuf" or arr.shape not in (view.shape, ()):
        raise DataError(f"{name} is a view into the model's parameter buffer: it can only be "
                        f"set to real numbers of its shape {tuple(view.shape)}, got "
                        f"{arr.dtype} {tuple(arr.shape)}")
    _check_representable(xp, arr, view.dtype, name)
    backend_of(view).assign(view, value)  # on the view's device, whichever is current


def _check_representable(xp, arr, dtype, name: str) -> None:
    """A DataError unless every value of ``arr`` is finite and within the range of ``dtype``
    (a float64 1e300 would become inf in a float32 model): a parameter that is NaN / Inf
    makes every output NaN, silently."""
    if arr.size == 0:
        return
    if arr.dtype.kind == "f":
        finite = xp.isfinite(arr)
        if not bool(finite.all()):
            first = int(xp.argmin(finite.ravel()))
            raise DataError(f"{name} must be finite: got {float(arr.ravel()[first])!r} at flat "
                            f"index {first}; a NaN / Inf parameter makes every output NaN. "
                            "Set finite values")
    limit = float(np.finfo(dtype).max)
    largest = float(xp.abs(arr.astype(np.float64, copy=False)).max())
    if largest > limit:
        raise DataError(f"{name}: {largest:g} overflows the model's {np.dtype(dtype).name} "
                        f"(largest finite value {limit:g}) and would become inf; rescale the "
                        "values or build the model with dtype='float64'")


class Dense:
    """One fully connected layer ``A = act(X @ W + b)``; W is (n_in, n_out), b is (n_out,).

    ``W``, ``b``, ``dW`` and ``db`` are views into the owning MLP's flat buffers. Options (see
    ``MLP``): ``norm`` LayerNorm on the input first (``gamma``, ``beta`` (n_in,), views after W
    and b); ``residual`` adds the input to the output (n_in == n_out); ``dropout`` its rate.
    """

    W, b, dW, db = _View(), _View(), _View(), _View()
    gamma, beta, dgamma, dbeta = _View(), _View(), _View(), _View()

    def __init__(self, name: str, n_in: int, n_out: int, activation: str, norm: bool = False,
                 residual: bool = False, dropout: float = 0.0):
        self.name, self.n_in, self.n_out, self.activation = name, n_in, n_out, activation
        self.norm, self.residual, self.dropout = norm, residual, dropout
        self.unbind_()
        self.offset = None  # set by bind_

    @property
    def n_params(self) -> int:
        return self.n_in * self.n_out + self.n_out + (2 * self.n_in if self.norm else 0)

    def bind_(self, params, grads, offset: int) -> int:
        """Point W, b (gamma, beta) and their gradients into ``params`` / ``grads`` at
        ``offset``; return the next offset."""
        self.offset = offset  # W's first element in the flat buffers (W, then b, ...)
        w_end = offset + self.n_in * self.n_out
        end = w_end + self.n_out
        views = {"W": params[offset:w_end].reshape(self.n_in, self.n_out),
                 "b": params[w_end:end],
                 "dW": grads[offset:w_end].reshape(self.n_in, self.n_out),
                 "db": grads[w_end:end]}
        if self.norm:
            mid, end = end + self.n_in, end + 2 * self.n_in
            views.update(gamma=params[end - 2 * self.n_in:mid], beta=params[mid:end],
                         dgamma=grads[end - 2 * self.n_in:mid], dbeta=grads[mid:end])
        for name in _VIEWS:
            self.__dict__["_" + name] = views.get(name)
        return end

    def unbind_(self) -> None:
        """Drop the views into a model's buffers (W, b, ... become None)."""
        for name in _VIEWS:
            self.__dict__["_" + name] = None

    def parameters(self) -> list[Parameter]:
        params = [Parameter(f"{self.name}.W", self.W, self.dW),
                  Parameter(f"{self.name}.b", self.b, self.db)]
        if self.norm:
            params += [Parameter(f"{self.name}.norm.gamma", self.gamma, self.dgamma),
                       Parameter(f"{self.name}.norm.beta", self.beta, self.dbeta)]
        return params

    def __repr__(self) -> str:
        extra = "".join([", norm='layernorm'" if self.norm else "",
                         ", residual=True" if self.residual else "",
                         f", dropout={self.dropout}" if self.dropout else ""])
        return f"Dense({self.n_in}, {self.n_out}, activation={self.activation!r}{extra})"
