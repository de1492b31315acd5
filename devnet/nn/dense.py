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

    ``W``, ``b``, ``dW`` and ``db`` are views into the owning MLP's flat buffers. Options (set
    by the MLP, see its docstring): ``norm`` LayerNorm on the layer's input first (learned
    ``gamma``, ``beta`` of shape (n_in,), views too, after W and b); ``residual`` adds the input
    to the output (a pre-norm residual block, n_in == n_out); ``dropout`` the rate applied to
    the activation during training.
    """

    def __init__(self, name: str, n_in: int, n_out: int, activation: str, norm: bool = False,
                 residual: bool = False, dropout: float = 0.0):
        self.name = name
        self.n_in = n_in
        self.n_out = n_out
        self.activation = activation
        self.norm = norm
        self.residual = residual
        self.dropout = dropout
        self.W = self.b = self.dW = self.db = None
        self.offset = None  # set by bind_
        self.gamma = self.beta = self.dgamma = self.dbeta = None

    @property
    def n_params(self) -> int:
        return self.n_in * self.n_out + self.n_out + (2 * self.n_in if self.norm else 0)

    def bind_(self, params, grads, offset: int) -> int:
        """Point W, b (gamma, beta) and their gradients into ``params`` / ``grads`` at
        ``offset``; return the next offset."""
        self.offset = offset  # W's first element in the flat buffers (W, then b, ...)
        w_end = offset + self.n_in * self.n_out
        end = w_end + self.n_out
        self.W = params[offset:w_end].reshape(self.n_in, self.n_out)
        self.b = params[w_end:end]
        self.dW = grads[offset:w_end].reshape(self.n_in, self.n_out)
        self.db = grads[w_end:end]
        if self.norm:
            mid, end = end + self.n_in, end + 2 * self.n_in
            self.gamma, self.beta = params[end - 2 * self.n_in:mid], params[mid:end]
            self.dgamma, self.dbeta = grads[end - 2 * self.n_in:mid], grads[mid:end]
        return end

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
