"""Optimizers: one fused kernel launch over the model's flat parameter buffer per step."""

from __future__ import annotations

import math

import numpy as np

from devnet.errors import ConfigError, lookup
from devnet.nn.dense import ParameterList
from devnet.optim.schedules import Schedule


def _number(name: str, value, lo: float, hi: float = math.inf, *, lo_open=False, hi_open=False):
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if ok and math.isfinite(value):
        above = value > lo if lo_open else value >= lo
        below = value < hi if hi_open else value <= hi
        ok = above and below
    else:
        ok = False
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ConfigError(f"{name} must be a number in {left}{lo}, {hi}{right}, got {value!r}")
    return float(value)


def _flag(name: str, value) -> bool:
    """``value`` if it is a bool (NumPy's too): "no" or 0 would silently mean True / False."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


class Optimizer:
    """Base class. ``params`` is ``model.parameters()`` (or the model itself).

    Args:
        lr: a float > 0 or a Schedule of the step count.
        weight_decay: L2 penalty (decoupled in AdamW).
        clip_norm: clip the global gradient norm to this value before the update (None: off).
    """

    name = "optimizer"
    state_names: tuple[str, ...] = ()

    def __init__(self, params, lr, weight_decay: float = 0.0, clip_norm: float | None = None):
        if hasattr(params, "parameters") and callable(params.parameters):
            params = params.parameters()
        if not isinstance(params, ParameterList):
            raise ConfigError("an optimizer takes model.parameters() (or the model): the "
                              "parameters must be views of the model's flat buffer")
        self.params = params
        self.backend = params.backend
        if isinstance(lr, Schedule):
            self.schedule = lr
        else:
            self.schedule = None
            lr = _number("lr", lr, 0.0, lo_open=True)
        self.base_lr = lr
        self.weight_decay = _number("weight_decay", weight_decay, 0.0)
        self.clip_norm = None if clip_norm is None else _number("clip_norm", clip_norm, 0.0,
                                                                lo_open=True)
        self.t = 0  # completed steps
        self.state = {name: self.backend.zeros(params.data.shape, params.data.dtype)
                      for name in self.state_names}

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return self.schedule(self.t) if self.schedule is not None else self.base_lr

    def step(self) -> None:
        """Update every parameter from its gradient, in one pass over the flat buffer."""
        lr = self.lr
        if self.clip_norm is not None:
            self._clip_()
        self.t += 1
        self._update(lr)

    def _clip_(self) -> None:
        # on the device, no host sync: g *= min(1, clip / (|g| + eps))
        xp, g = self.backend.xp, self.params.grad
        norm = xp.sqrt(xp.dot(g, g))
        g *= xp.minimum(1.0, self.clip_norm / (norm + 1e-6)).astype(g.dtype)

    def _update(self, lr: float) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        """The constructor arguments other than params and lr (JSON-serialisable)."""
        return {"weight_decay": self.weight_decay, "clip_norm": self.clip_norm}

    def state_dict(self) -> dict:
        """Everything needed to resume: kind, hyper-parameters, step count and state buffers.

        State buffers are returned as NumPy arrays (host copies).
        """
        lr = self.schedule.config() if self.schedule is not None else self.base_lr
        return {"name": self.name, "lr": lr, "hyperparameters": self.hyperparameters(),
                "t": self.t,
                "state": {k: self.backend.to_numpy(v).copy() for k, v in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore the step count and state buffers from ``state_dict()`` output."""
        if state.get("name") != self.name:
            raise ConfigError(f"state is for optimizer {state.get('name')!r}, not {self.name!r}")
        for k, buf in self.state.items():
            src = np.asarray(state["state"].get(k)) if k in state["state"] else None
            if src is None or src.shape != buf.shape:
                raise ConfigError(f"optimizer state {k!r} is missing or has the wrong shape "
                                  f"(expected {buf.shape})")
            buf[...] = self.backend.asarray(src, dtype=buf.dtype)
        self.t = int(state["t"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}(lr={self.schedule or self.base_lr!r}, {args})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""

    name = "sgd"

    def __init__(self, params, lr=0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, clip_norm: float | None = None):
        self.momentum = _number("momentum", momentum, 0.0, 1.0, hi_open=True)
        self.nesterov = _flag("nesterov", nesterov)
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov=True needs momentum > 0")
        self.state_names = ("momentum_buffer",) if self.momentum > 0 else ()
        super().__init__(params, lr, weight_decay, clip_norm)

    def _update(self, lr: float) -> None:
        k, p = self.backend.kernels, self.params
        if self.momentum == 0:
            k.sgd_step(p.data, p.grad, lr, self.weight_decay)
        else:
            step = k.nesterov_step if self.nesterov else k.momentum_step
            step(p.data, p.grad, self.state["momentum_buffer"], lr, self.momentum,
                 self.weight_decay)

    def hyperparameters(self) -> dict:
        return {"momentum": self.momentum, "nesterov": self.nesterov, **super().hyperparameters()}


class RMSProp(Optimizer):
    """RMSProp with optional momentum and centering (Graves)."""

    name = "rmsprop"

    def __init__(self, params, lr=0.01, rho: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, centered: bool = False, weight_decay: float = 0.0,
                 clip_norm: float | None = None):
        self.rho = _number("rho", rho, 0.0, 1.0, hi_open=True)
        self.eps = _number("eps", eps, 0.0, lo_open=True)
        self.momentum = _number("momentum", momentum, 0.0, 1.0, hi_open=True)
        self.centered = _flag("centered", centered)
        names = ["square_avg"]
        if self.momentum > 0:
            names.append("momentum_buffer")
        if self.centered:
            names.append("grad_avg")
        self.state_names = tuple(names)
        super().__init__(params, lr, weight_decay, clip_norm)

    def _update(self, lr: float) -> None:
        p, s = self.params, self.state
        self.backend.kernels.rmsprop_step(
            p.data, p.grad, s["square_avg"], s.get("momentum_buffer"), s.get("grad_avg"), lr,
            self.rho, self.momentum, self.eps, self.weight_decay, self.centered)

    def hyperparameters(self) -> dict:
        return {"rho": self.rho, "eps": self.eps, "momentum": self.momentum,
                "centered": self.centered, **super().hyperparameters()}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with L2 weight decay and the AMSGrad option."""

    name = "adam"
    kernel = "adam_step"

    def __init__(self, params, lr=1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 clip_norm: float | None = None):
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ConfigError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (_number("beta1", beta1, 0.0, 1.0, hi_open=True),
                      _number("beta2", beta2, 0.0, 1.0, hi_open=True))
        self.eps = _number("eps", eps, 0.0, lo_open=True)
        self.amsgrad = _flag("amsgrad", amsgrad)
        self.state_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad
                                                        else ())
        super().__init__(params, lr, weight_decay, clip_norm)

    def _update(self, lr: float) -> None:
        p, s = self.params, self.state
        b1, b2 = self.betas
        getattr(self.backend.kernels, self.kernel)(
            p.data, p.grad, s["exp_avg"], s["exp_avg_sq"], s.get("max_exp_avg_sq"), lr, b1, b2,
            self.eps, self.weight_decay, 1.0 - b1**self.t, 1.0 - b2**self.t, self.amsgrad)

    def hyperparameters(self) -> dict:
        return {"betas": list(self.betas), "eps": self.eps, "amsgrad": self.amsgrad,
                **super().hyperparameters()}


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay."""

    name = "adamw"
    kernel = "adamw_step"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 amsgrad=False, clip_norm=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, clip_norm)


OPTIMIZERS = {o.name: o for o in (SGD, RMSProp, Adam, AdamW)}


def get(name: str | Optimizer, params, **kwargs) -> Optimizer:
    """The optimizer called ``name`` (``OPTIMIZERS``) over ``params``; an instance is returned."""
    if isinstance(name, Optimizer):
        return name
    cls = lookup(OPTIMIZERS, name, "optimizer")
    try:
        return cls(params, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for optimizer {name!r}: {exc}") from None


def from_state_dict(params, state: dict) -> Optimizer:
    """Rebuild an optimizer over ``params`` from ``Optimizer.state_dict()`` output."""
    from devnet.optim.schedules import from_config

    lr = state["lr"]
    lr = from_config(lr) if isinstance(lr, dict) else lr
    hyper = dict(state.get("hyperparameters", {}))
    if "betas" in hyper:
        hyper["betas"] = tuple(hyper["betas"])
    opt = get(state.get("name"), params, lr=lr, **hyper)
    opt.load_state_dict(state)
    return opt
