"""Optimizers: one fused pass over the model's flat parameter buffer per step.

(Over 400 lines: the base class holds the device copy of the scalars every optimizer shares,
and the rules its host fields are checked by whenever they are written; the four optimizers
are short.)

Graph-ready: a step passes no scalar by value. Each optimizer owns ``hyper``, a small float64
device array of its step kernel's scalars (``kernels.table.hyper_layout``), and a table of the
scalars that change per step (lr, Adam's bias corrections) for the next ``TABLE_ROWS`` steps,
computed on the host exactly as before and uploaded (through the backend's pinned staging
buffers: no allocation) once per ``TABLE_ROWS`` steps (once for good when they no longer
change: a constant lr without bias corrections is a 1-row table). A
step is two launches, ``opt_advance`` (t += 1, this step's row into ``hyper``) then the hyper
step kernel: no allocation, no host-device copy, the same arguments every step. With
``clip_norm`` one more comes first, ``opt_clip``: one reduction writing the gradient's scale
``min(1, clip_norm / (|g| + 1e-6))`` into ``hyper``, which the step kernel applies to g as it
reads it (``model.grads`` itself is left as backward wrote it). The host keeps its own ``t`` in
lock-step and never reads the device; writing ``t``, ``base_lr``, ``schedule``, ``clip_norm``
or a hyper-parameter (the guard's restore, resume, callbacks, the estimators' adaptive rate)
marks the device copy stale, and the next step uploads it again (``_sync_device``).

A write is checked there too (``validate``: the constructor's rules, so ``opt.eps = -1`` or
``opt.t = -3`` is a ConfigError at the next step, not a silent NaN), and every value a schedule
returns for the table must be a finite number >= 0. Choices that decide the kernel or the
state buffers (``amsgrad``, ``centered``, ``nesterov``, momentum on or off) are fixed at
construction. Nothing of this runs per step.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from devnet.errors import ConfigError, lookup
from devnet.kernels import table as kernel_table
from devnet.kernels.checks import TRUSTED
from devnet.nn.dense import ParameterList
from devnet.optim.schedules import Schedule

TABLE_ROWS = 1024
"""Steps of per-step scalars uploaded at once (a refill costs TABLE_ROWS schedule calls)."""


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


def _unit(name: str, value) -> float:
    return _number(name, value, 0.0, 1.0, hi_open=True)


def _positive(name: str, value) -> float:
    return _number(name, value, 0.0, lo_open=True)


def _non_negative(name: str, value) -> float:
    return _number(name, value, 0.0)


def _optional_positive(name: str, value) -> float | None:
    return None if value is None else _positive(name, value)


def _betas(name: str, value) -> tuple[float, float]:
    try:
        beta1, beta2 = value
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair (beta1, beta2), got {value!r}") from None
    return _unit("beta1", beta1), _unit("beta2", beta2)


def _steps_done(name: str, value) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) \
            and value >= 0:
        return int(value)
    raise ConfigError(f"{name} (completed steps) must be an integer >= 0, got {value!r}")


def _base_lr(name: str, value):
    if isinstance(value, Schedule):
        return value
    try:
        return _positive(name, value)
    except ConfigError:
        raise ConfigError(f"{name}: the learning rate must be a number > 0 (or a Schedule), "
                          f"got {value!r}") from None


def _schedule(name: str, value) -> Schedule | None:
    if value is None or isinstance(value, Schedule):
        return value
    raise ConfigError(f"{name} must be None or a devnet.optim.schedules.Schedule (subclass it "
                      f"for a custom curve), got {type(value).__name__}: {value!r}")


def _real(value) -> bool:
    """A finite real number (NumPy's too), not a bool."""
    if type(value) is float:  # the common case, without the slower ABC check
        return math.isfinite(value)
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) \
        and math.isfinite(value)


def _flag(name: str, value) -> bool:
    """``value`` if it is a bool (NumPy's too): "no" or 0 would silently mean True / False."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


class _Field:
    """An Optimizer attribute stored under ``_<name>``; subclasses say what a write does."""

    def __set_name__(self, owner, name):
        self.name, self.slot = name, "_" + name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        try:
            return obj.__dict__[self.slot]
        except KeyError:
            raise AttributeError(self.name) from None


class _Synced(_Field):
    """An Optimizer attribute whose writes mark the device copy of its scalars stale."""

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value
        obj.__dict__["_stale"] = True


class _Fixed(_Field):
    """A constructor choice that selects the kernel or the state buffers (``amsgrad``, ...):
    a later write of another value is a ConfigError (it would be silently ignored)."""

    def __set__(self, obj, value):
        if self.slot in obj.__dict__ and value != obj.__dict__[self.slot]:
            cls = type(obj).__name__
            raise ConfigError(f"{cls}.{self.name} is fixed when the optimizer is built (it "
                              f"selects the step kernel and state buffers): it is "
                              f"{obj.__dict__[self.slot]!r}; build a new "
                              f"{cls}(..., {self.name}={value!r}) instead")
        obj.__dict__[self.slot] = value


class Optimizer:
    """Base class. ``params`` is ``model.parameters()`` (or the model itself).

    Args:
        lr: a float > 0 or a Schedule of the step count.
        weight_decay: L2 penalty (decoupled in AdamW).
        clip_norm: clip the global gradient norm to this value in the update (None: off); the
            gradient buffer itself is not scaled.

    ``hyper``: the step kernel's scalars on the device (float64, ``kernels.table.hyper_layout``
    of ``kernel``); see the module docstring.
    """

    name = "optimizer"
    state_names: tuple[str, ...] = ()
    # the host fields the device copy is built from: writing one marks it stale
    t = _Synced()  #: completed steps
    base_lr = _Synced()
    schedule = _Synced()
    weight_decay = _Synced()
    clip_norm = _Synced()
    # the rule of each host field (the constructor's): ``validate`` applies them to later writes
    rules = {"t": _steps_done, "base_lr": _base_lr, "schedule": _schedule,
             "weight_decay": _non_negative, "clip_norm": _optional_positive}

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
            lr = _positive("lr", lr)
        self.base_lr = lr
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        self.clip_norm = _optional_positive("clip_norm", clip_norm)
        self.t = 0  # completed steps
        self.state = {name: self.backend.zeros(params.data.shape, params.data.dtype)
                      for name in self.state_names}
        # the device copy: hyper and the table of per-step scalars in one float64 buffer
        self.kernel = self._kernel()
        self._layout = kernel_table.hyper_layout(self.kernel)
        self._columns = kernel_table.hyper_columns(self.kernel)
        size = len(self._layout)
        self._device = self.backend.zeros(size + TABLE_ROWS * len(self._columns), np.float64)
        self.hyper = self._device[:size]
        self._table = None  # the rows in use of the table (a view of _device)
        self._clip = None  # clip_norm as last uploaded (None: no opt_clip launch)
        self._refill_at = 0  # the host step count at which the table runs out
        self._stale = True

    @property
    def lr(self) -> float:
        """The learning rate the next step will use (a ConfigError if it is not a number)."""
        if self.schedule is None:
            return self.base_lr
        step = self.t
        try:
            value = self.schedule(step)
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise self._lr_error(step, f"raised {type(exc).__name__}: {exc}") from None
        if not (_real(value) and value >= 0):
            raise self._lr_error(step, f"gave {value!r}")
        return value

    def step(self) -> None:
        """Update every parameter from its gradient, in one pass over the flat buffer.

        Two launches with the same arguments every step: ``opt_advance`` (the device's step
        count and this step's lr / bias corrections), then the hyper step kernel; with
        ``clip_norm``, ``opt_clip`` (the gradient's scale into ``hyper``) before them.
        """
        if self._stale or self._t >= self._refill_at:
            self._sync_device()  # before opt_clip: the upload resets its slot to 1
        kernels = self.backend.kernels
        # every buffer below is this optimizer's or the model's, allocated to agree: the
        # kernels' shape / dtype checks are skipped, as in the MLP's own passes
        with TRUSTED:
            if self._clip is not None:
                kernels.opt_clip(self.params.grad, self.hyper)
            kernels.opt_advance(self.hyper, self._table)
            self._t += 1  # in lock-step with the device's, whatever the update does next
            self._update_()

    def validate(self) -> None:
        """ConfigError unless every host field obeys the constructor's rules (``rules``).

        Run by the next step after any write to a field (and by ``fit`` and ``devnet.save``),
        so that a bad value written after construction (``opt.eps = -1``, ``opt.t = -3``,
        ``opt.betas = (2, 0.5)``) is refused before it reaches the kernel. Values are stored
        normalised (floats, ints).
        """
        for name, rule in self.rules.items():
            try:
                value = rule(name, getattr(self, name))
            except ConfigError as exc:
                raise ConfigError(f"{type(self).__name__}: {exc} (a value written after "
                                  "construction is checked before the next step)") from None
            self.__dict__["_" + name] = value  # normalised; stale already

    # --- the device copy of the scalars --------------------------------------------------------

    def _kernel(self) -> str:
        """The ``kernels.table.STEPS`` row this optimizer runs (fixed at construction)."""
        raise NotImplementedError

    def _lr_at(self, t: int) -> float:
        """The learning rate of step number ``t`` (1-based: the schedule's step ``t - 1``)."""
        return self.schedule(t - 1) if self.schedule is not None else self.base_lr

    def _step_scalars(self, t: int) -> tuple:
        """The stepwise scalars (``kernels.table.hyper_columns``) of step number ``t``."""
        return (self._lr_at(t),)

    def _constants(self) -> dict:
        """The step kernel's scalars that do not change per step, by name."""
        return {"wd": self.weight_decay}

    def _settled(self, t: int) -> bool:
        """Whether every step from number ``t`` on has step ``t``'s stepwise scalars."""
        return self.schedule is None

    def _sync_device(self) -> None:
        """Upload the device copy from the host fields: ``hyper`` (t, constants) and the
        table of the next steps' scalars; one host-to-device copy, in stream order."""
        self.validate()
        t0, columns = self._t, len(self._columns)
        steps = self._table_rows(t0, 1 if self._settled(t0 + 1) else TABLE_ROWS)
        rows = len(steps)
        constants = self._constants()
        host = np.zeros(len(self._layout) + rows * columns)
        for slot, name in enumerate(self._layout):
            if name in constants:
                host[slot] = constants[name]
        host[kernel_table.HYPER_T] = host[kernel_table.HYPER_T0] = t0
        host[kernel_table.HYPER_GSCALE] = kernel_table.HYPER_DEFAULTS["gscale"]
        clip = self.clip_norm
        host[kernel_table.HYPER_CLIP] = kernel_table.HYPER_DEFAULTS["clip"] if clip is None \
            else clip
        first = kernel_table.HYPER_STEPWISE0
        host[first:first + columns] = steps[0]  # overwritten by the first advance
        host[len(self._layout):] = steps.ravel()
        with self.backend.scope():  # through the backend's pinned staging: no allocation
            self._device[:host.size] = self.backend.upload(host, "optimizer")
        self._table = self._device[len(self._layout):host.size].reshape(rows, columns)
        self._refill_at = math.inf if self._settled(t0 + rows) else t0 + rows
        self._clip = clip
        self._stale = False

    def _table_rows(self, t0: int, rows: int) -> np.ndarray:
        """The stepwise scalars of steps ``t0 + 1 ..`` (float64, (<= rows, columns)).

        Every value must be a finite real number and the lr >= 0. The table stops before the
        first step whose values are not (a schedule growing past float's range far ahead is
        refused only when the run gets there); a ConfigError when that is the first step.
        """
        columns = len(self._columns)
        good = []
        for t in range(t0 + 1, t0 + 1 + rows):
            try:
                values = tuple(self._step_scalars(t))
                why = None if len(values) == columns and all(map(_real, values)) \
                    and values[0] >= 0 else f"gave {values!r}"
            except (TypeError, ValueError, ArithmeticError) as exc:
                why = f"raised {type(exc).__name__}: {exc}"
            if why is not None:
                if good:
                    break
                raise self._lr_error(t - 1, why)
            good.append(values)
        return np.array(good, dtype=np.float64).reshape(len(good), columns)

    def _lr_error(self, step: int, why: str) -> ConfigError:
        """The error for a schedule (or base_lr) that gives no usable rate at ``step``."""
        source = f"schedule {self.schedule!r}" if self.schedule is not None else \
            f"base_lr {self.base_lr!r}"
        return ConfigError(f"{self.name}: the learning rate must be a number: for step {step} "
                           f"the {source} {why}; expected a finite number >= 0 "
                           f"({', '.join(self._columns)}); a schedule that grows (gamma > 1) "
                           "leaves float range: cap it or shorten the run")

    def _update_(self) -> None:
        """Launch the hyper step kernel on the parameters, gradient and state (in place)."""
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
            self.backend.assign(buf, src)
        self.t = int(state["t"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}(lr={self.schedule or self.base_lr!r}, {args})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""

    name = "sgd"
    momentum = _Synced()
    nesterov = _Fixed()
    rules = {**Optimizer.rules, "momentum": _unit}

    def __init__(self, params, lr=0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, clip_norm: float | None = None):
        self.momentum = _unit("momentum", momentum)
        self.nesterov = _flag("nesterov", nesterov)
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov=True needs momentum > 0")
        self.state_names = ("momentum_buffer",) if self.momentum > 0 else ()
        super().__init__(params, lr, weight_decay, clip_norm)

    def validate(self) -> None:
        super().validate()
        if self.momentum > 0 and self.kernel == "sgd_step":
            raise ConfigError(f"SGD: momentum={self.momentum!r} was written to an SGD built "
                              "with momentum=0 (no momentum buffer: it would be ignored); "
                              f"build SGD(..., momentum={self.momentum!r}) instead")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("SGD: nesterov=True needs momentum > 0, got momentum=0")

    def _kernel(self) -> str:
        if self.momentum == 0:
            return "sgd_step"
        return "nesterov_step" if self.nesterov else "momentum_step"

    def _constants(self) -> dict:
        return {"mu": self.momentum, **super()._constants()}

    def _update_(self) -> None:
        k, p = self.backend.kernels, self.params
        if self.kernel == "sgd_step":
            k.sgd_step_hyper(p.data, p.grad, self.hyper)
        else:
            step = k.nesterov_step_hyper if self.kernel == "nesterov_step" else \
                k.momentum_step_hyper
            step(p.data, p.grad, self.state["momentum_buffer"], self.hyper)

    def hyperparameters(self) -> dict:
        return {"momentum": self.momentum, "nesterov": self.nesterov, **super().hyperparameters()}


class RMSProp(Optimizer):
    """RMSProp with optional momentum and centering (Graves)."""

    name = "rmsprop"
    rho, eps, momentum = _Synced(), _Synced(), _Synced()
    centered = _Fixed()
    rules = {**Optimizer.rules, "rho": _unit, "eps": _positive, "momentum": _unit}

    def __init__(self, params, lr=0.01, rho: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, centered: bool = False, weight_decay: float = 0.0,
                 clip_norm: float | None = None):
        self.rho = _unit("rho", rho)
        self.eps = _positive("eps", eps)
        self.momentum = _unit("momentum", momentum)
        self.centered = _flag("centered", centered)
        names = ["square_avg"]
        if self.momentum > 0:
            names.append("momentum_buffer")
        if self.centered:
            names.append("grad_avg")
        self.state_names = tuple(names)
        super().__init__(params, lr, weight_decay, clip_norm)

    def validate(self) -> None:
        super().validate()
        if self.momentum > 0 and "momentum_buffer" not in self.state:
            raise ConfigError(f"RMSProp: momentum={self.momentum!r} was written to an RMSProp "
                              "built with momentum=0 (no momentum buffer: it would be "
                              f"ignored); build RMSProp(..., momentum={self.momentum!r}) instead")

    def _kernel(self) -> str:
        return "rmsprop_step"

    def _constants(self) -> dict:
        return {"rho": self.rho, "mu": self.momentum, "eps": self.eps, **super()._constants()}

    def _update_(self) -> None:
        p, s = self.params, self.state
        self.backend.kernels.rmsprop_step_hyper(
            p.data, p.grad, s["square_avg"], s.get("momentum_buffer"), s.get("grad_avg"),
            self.hyper, self.centered)

    def hyperparameters(self) -> dict:
        return {"rho": self.rho, "eps": self.eps, "momentum": self.momentum,
                "centered": self.centered, **super().hyperparameters()}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with L2 weight decay and the AMSGrad option."""

    name = "adam"
    betas, eps = _Synced(), _Synced()
    amsgrad = _Fixed()
    rules = {**Optimizer.rules, "betas": _betas, "eps": _positive}

    def __init__(self, params, lr=1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 clip_norm: float | None = None):
        self.betas = _betas("betas", betas)
        self.eps = _positive("eps", eps)
        self.amsgrad = _flag("amsgrad", amsgrad)
        self.state_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad
                                                        else ())
        super().__init__(params, lr, weight_decay, clip_norm)

    def _kernel(self) -> str:
        return "adam_step"

    def _step_scalars(self, t: int) -> tuple:
        b1, b2 = self.betas
        return (self._lr_at(t), 1.0 - b1**t, 1.0 - b2**t)  # lr, bc1, bc2 (hyper_columns)

    def _settled(self, t: int) -> bool:
        b1, b2 = self.betas  # b**t only falls: once 1 - b**t rounds to 1 it stays there
        return super()._settled(t) and 1.0 - b1**t == 1.0 and 1.0 - b2**t == 1.0

    def _constants(self) -> dict:
        b1, b2 = self.betas
        return {"beta1": b1, "beta2": b2, "eps": self.eps, **super()._constants()}

    def _update_(self) -> None:
        p, s = self.params, self.state
        getattr(self.backend.kernels, self.kernel + "_hyper")(
            p.data, p.grad, s["exp_avg"], s["exp_avg_sq"], s.get("max_exp_avg_sq"), self.hyper,
            self.amsgrad)

    def hyperparameters(self) -> dict:
        return {"betas": list(self.betas), "eps": self.eps, "amsgrad": self.amsgrad,
                **super().hyperparameters()}


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay."""

    name = "adamw"

    def _kernel(self) -> str:
        return "adamw_step"

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
