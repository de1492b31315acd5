"""Dense layers and parameter views into a model's flat buffers."""

from __future__ import annotations

from typing import Any, NamedTuple


class Parameter(NamedTuple):
    """A named view into the flat parameter buffer (``data``) and gradient buffer (``grad``)."""

    name: str
    data: Any
    grad: Any


class ParameterList(list):
    """The model's Parameters plus the two flat buffers they are views of.

    Optimizers update ``data`` (1-D, every parameter) from ``grad`` in one pass.
    """

    def __init__(self, params, data, grad, backend):
        super().__init__(params)
        self.data = data
        self.grad = grad
        self.backend = backend


class Dense:
    """One fully connected layer ``A = act(X @ W + b)``; W is (n_in, n_out), b is (n_out,).

    ``W``, ``b``, ``dW`` and ``db`` are views into the owning MLP's flat buffers.
    """

    def __init__(self, name: str, n_in: int, n_out: int, activation: str):
        self.name = name
        self.n_in = n_in
        self.n_out = n_out
        self.activation = activation
        self.W = self.b = self.dW = self.db = None

    @property
    def n_params(self) -> int:
        return self.n_in * self.n_out + self.n_out

    def bind_(self, params, grads, offset: int) -> int:
        """Point W, b, dW, db into ``params`` / ``grads`` at ``offset``; return the next offset."""
        w_end = offset + self.n_in * self.n_out
        end = w_end + self.n_out
        self.W = params[offset:w_end].reshape(self.n_in, self.n_out)
        self.b = params[w_end:end]
        self.dW = grads[offset:w_end].reshape(self.n_in, self.n_out)
        self.db = grads[w_end:end]
        return end

    def parameters(self) -> list[Parameter]:
        return [Parameter(f"{self.name}.W", self.W, self.dW),
                Parameter(f"{self.name}.b", self.b, self.db)]

    def __repr__(self) -> str:
        return f"Dense({self.n_in}, {self.n_out}, activation={self.activation!r})"
