"""Optimizers: one fused pass over the model's flat parameter buffer per step.

Each hyper-parameter is declared once, as a ``Hyper`` in its class's ``hypers``: the
constructor's signature and checks, ``hyperparameters()``, ``state_dict`` and the repr derive
from it; the state buffers and the step kernel's arguments from the ``kernels.table.STEPS``
row. Adding an optimizer: its scalar update (``kernels/scalar.py``), its row
(``kernels/table.py``) and a short class here.

Graph-ready: a step passes no scalar by value. ``hyper`` is a float64 device array of the step
kernel's scalars (``kernels.table.hyper_layout``); the per-step scalars (lr, Adam's bias
corrections) of the next ``TABLE_ROWS`` steps are computed on the host and uploaded in one
copy (one row for good once they stop changing). A step is ``opt_advance`` (t += 1, this
step's row into ``hyper``) then the step kernel, preceded with ``clip_norm`` by ``opt_clip``
(the gradient's scale into ``hyper``; ``model.grads`` is left as backward wrote it): no
allocation, no host-device copy. The host keeps ``t`` in lock-step and never reads the
device; writing a field marks the device copy stale, and the next step checks (``validate``)
and uploads it again (``_sync_device``).
"""

from __future__ import annotations

import inspect
import math

import numpy as np

from devnet import validation as check
from devnet.errors import ConfigError, lookup
from devnet.kernels import table as kernel_table
from devnet.nn.dense import ParameterList
from devnet.optim.schedules import Schedule

TABLE_ROWS = 1024  # steps of per-step scalars uploaded at once (fewer: ``expect_steps``)


def _betas(name: str, value) -> tuple[float, float]:
    return check.pair(name, value, check.unit, ("beta1", "beta2"))


def _base_lr(name: str, value):
    if isinstance(value, Schedule):
        return value
    try:
        return check.positive(name, value)
    except ConfigError:
        raise ConfigError(f"{name}: the learning rate must be a number > 0 (or a Schedule), "
                          f"got {value!r}") from None


def _schedule(name: str, value) -> Schedule | None:
    if value is None or isinstance(value, Schedule):
        return value
    raise ConfigError(f"{name} must be None or a devnet.optim.schedules.Schedule (subclass it "
                      f"for a custom curve), got {type(value).__name__}: {value!r}")


#: the types a column-wise table value may have (others go through ``_table_checked``)
_FLOATS = frozenset((float, np.float64))


def _columnwise(cls) -> bool:
    """Whether ``cls._step_columns`` and ``cls._step_scalars`` come from the same class (a
    subclass overriding only ``_step_scalars`` is built a step at a time)."""
    def owner(name):
        return next(k for k in cls.__mro__ if name in vars(k))

    return owner("_step_columns") is owner("_step_scalars")


class Hyper:
    """One optimizer field (stored under ``_<name>``), declared once: rule, default, slot.

    ``slot``: the ``hyper_layout`` name the value fills, one per item of a pair (Adam's betas),
    or a step kernel flag's name; None: the kernel does not read it. ``fixed``: it selects the
    kernel or the state buffers, so a later write of another value is a ConfigError; any other
    write marks the device copy stale.
    """

    def __init__(self, name: str, rule, default=None, slot=None,
                 annotation=inspect.Parameter.empty, fixed: bool = False):
        self.name, self.rule, self.default, self.slot = name, rule, default, slot
        self.annotation, self.fixed, self.key = annotation, fixed, "_" + name

    def but(self, default) -> Hyper:
        """The same declaration with another default (AdamW's weight decay)."""
        return Hyper(self.name, self.rule, default, self.slot, self.annotation, self.fixed)

    def slots(self, value) -> dict:
        """The kernel's names for ``value``: {slot: value} (one per item for a pair)."""
        if self.slot is None:
            return {}
        return dict(zip(self.slot, value)) if isinstance(self.slot, tuple) else {self.slot: value}

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        try:
            return obj.__dict__[self.key]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, obj, value):
        if not self.fixed:
            obj.__dict__["_stale"] = True
        elif self.key in obj.__dict__ and value != obj.__dict__[self.key]:
            cls = type(obj).__name__
            raise ConfigError(f"{cls}.{self.name} is fixed when the optimizer is built (it "
                              f"selects the step kernel and state buffers): it is "
                              f"{obj.__dict__[self.key]!r}; build a new "
                              f"{cls}(..., {self.name}={value!r}) instead")
        obj.__dict__[self.key] = value


WEIGHT_DECAY = Hyper("weight_decay", check.non_negative, 0.0, "wd", float)
CLIP_NORM = Hyper("clip_norm", check.optional_positive, None, None, float | None)
EPS = Hyper("eps", check.positive, 1e-8, "eps", float)


class Optimizer:
    """Base class. ``params`` is ``model.parameters()`` (or the model itself).

    Args:
        lr: a float > 0 or a Schedule of the step count.
        weight_decay: L2 penalty (decoupled in AdamW).
        clip_norm: clip the global gradient norm to this value in the update (None: off); the
            gradient buffer itself is not scaled.

    A subclass declares ``hypers`` (the constructor's arguments after lr, in order),
    ``lr_default``, ``kernel`` (its ``kernels.table.STEPS`` row) and ``buffers`` (the row's
    state buffers -> their ``state`` names).
    """

    name = "optimizer"
    kernel = ""
    lr_default = inspect.Parameter.empty
    hypers: tuple[Hyper, ...] = (WEIGHT_DECAY, CLIP_NORM)
    buffers: dict[str, str] = {}
    # the host fields besides the hyper-parameters that the device copy is built from
    t = Hyper("t", lambda name, value: check.count(name, value, "completed steps"), 0)
    base_lr = Hyper("base_lr", _base_lr)
    schedule = Hyper("schedule", _schedule)
    weight_decay, clip_norm = WEIGHT_DECAY, CLIP_NORM

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._declare()

    @classmethod
    def _declare(cls) -> None:
        """The class's fields and signature from its ``hypers``."""
        for h in cls.hypers:
            setattr(cls, h.name, h)
        arg = inspect.Parameter.POSITIONAL_OR_KEYWORD
        cls.__signature__ = inspect.Signature([
            inspect.Parameter("params", arg),
            inspect.Parameter("lr", arg, default=cls.lr_default),
            *(inspect.Parameter(h.name, arg, default=h.default, annotation=h.annotation)
              for h in cls.hypers)])

    def __init__(self, params, *args, **kwargs):
        try:
            bound = self.__signature__.bind(params, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{type(self).__name__}(): {exc}") from None
        bound.apply_defaults()
        values = bound.arguments
        for h in self.hypers:
            setattr(self, h.name, h.rule(h.name, values[h.name]))
        self._check_together(written=False)
        params, lr = values["params"], values["lr"]
        if hasattr(params, "parameters") and callable(params.parameters):
            params = params.parameters()
        if not isinstance(params, ParameterList):
            raise ConfigError("an optimizer takes model.parameters() (or the model): the "
                              "parameters must be views of the model's flat buffer")
        self.params = params
        self.backend = params.backend
        self.schedule = lr if isinstance(lr, Schedule) else None
        self.base_lr = lr if isinstance(lr, Schedule) else check.positive("lr", lr)
        self.t = 0
        self.kernel = self._kernel()
        row = kernel_table.STEPS[self.kernel]
        gates = self._kernel_values()
        self._layout = kernel_table.hyper_layout(self.kernel)
        self._columns = kernel_table.hyper_columns(self.kernel)
        constant = self._layout[kernel_table.HYPER_STEPWISE0 + len(self._columns):]
        undeclared = [*(s for s in (*constant, *row.flags) if s not in gates),
                      *(b for b in row.buffers[1:] if b not in self.buffers)]
        if undeclared:  # a class that does not match its kernel's row
            raise TypeError(f"{type(self).__name__} declares nothing for {undeclared} of "
                            f"kernel {self.kernel!r} (hypers' slots, buffers)")
        self.state = {self.buffers[b]: self.backend.zeros(params.data.shape, params.data.dtype)
                      for b in row.buffers[1:] if gates.get(row.optional.get(b), True)}
        self._launch = (self.kernel + "_hyper", tuple(self.buffers[b] for b in row.buffers[1:]),
                        tuple(gates[f] for f in row.flags))
        # the device copy: hyper and the table of per-step scalars in one float64 buffer
        size = len(self._layout)
        self._device = self.backend.zeros(size + TABLE_ROWS * len(self._columns), np.float64)
        self.hyper = self._device[:size]
        self._table = None  # the rows in use of the table (a view of _device)
        self._clip = None  # clip_norm as last uploaded (None: no opt_clip launch)
        self._refill_at = 0  # the host step count at which the table runs out
        self._until = None  # expect_steps: the step count the table need not go past
        self._stale = True

    @property
    def state_names(self) -> tuple[str, ...]:
        """The state buffers this optimizer keeps (fixed at construction)."""
        return tuple(self.state)

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
        if not (check.real(value) and value >= 0):
            raise self._lr_error(step, f"gave {value!r}")
        return value

    def step(self) -> None:
        """Update every parameter from its gradient, in one pass over the flat buffer."""
        if self._stale or self._t >= self._refill_at:
            self._sync_device()  # before opt_clip: the upload resets its slot to 1
        # every buffer below is this optimizer's or the model's, allocated to agree: the
        # unchecked kernels, as in the MLP's own passes
        kernels, p = self.backend.raw_kernels, self.params
        entry, buffers, flags = self._launch
        if self._clip is not None:
            kernels.opt_clip(p.grad, self.hyper)
        kernels.opt_advance(self.hyper, self._table)
        self._t += 1  # in lock-step with the device's, whatever the update does next
        getattr(kernels, entry)(p.data, p.grad, *(self.state.get(b) for b in buffers),
                                self.hyper, *flags)

    def expect_steps(self, count: int | None) -> None:
        """Plan for ``count`` more steps (None: no plan): the table of per-step scalars is then
        built for those steps only, not ``TABLE_ROWS``. A hint: results never depend on it."""
        if count is not None:
            count = check.count("count", count, "steps planned")
        self._until = None if count is None else self._t + count

    def validate(self) -> None:
        """ConfigError unless every host field obeys its declared rule (``opt.eps = -1`` is
        refused at the next step, ``fit`` or ``devnet.save``); stores the values normalised."""
        for h in (Optimizer.t, Optimizer.base_lr, Optimizer.schedule, *self.hypers):
            try:
                value = h.rule(h.name, getattr(self, h.name))
            except ConfigError as exc:
                raise ConfigError(f"{type(self).__name__}: {exc} (a value written after "
                                  "construction is checked before the next step)") from None
            self.__dict__[h.key] = value  # normalised; stale already
        gates = self._kernel_values()
        for buffer, gate in kernel_table.STEPS[self.kernel].optional.items():
            if gates.get(gate) and self.buffers[buffer] not in self.state:
                self._unbuffered(gate)
        self._check_together(written=True)

    def _unbuffered(self, slot: str):
        h = next(h for h in self.hypers if slot in h.slots(getattr(self, h.name)))
        cls, value = type(self).__name__, getattr(self, h.name)
        raise ConfigError(f"{cls}: {h.name}={value!r} was written to an {cls} built with "
                          f"{h.name}=0 (no {h.name} buffer: it would be ignored); build "
                          f"{cls}(..., {h.name}={value!r}) instead")

    def _check_together(self, written: bool) -> None:
        """A ConfigError when the hyper-parameters contradict one another (``written``: after
        construction)."""

    # --- the device copy of the scalars --------------------------------------------------------

    def _kernel(self) -> str:
        """The ``kernels.table.STEPS`` row this optimizer runs (fixed at construction)."""
        return self.kernel

    def _kernel_values(self) -> dict:
        """The hyper-parameters by the kernel's names for them (slots and flags)."""
        values = {}
        for h in self.hypers:
            values.update(h.slots(getattr(self, h.name)))
        return values

    def _lr_at(self, t: int) -> float:
        """The learning rate of step number ``t`` (1-based: the schedule's step ``t - 1``)."""
        return self.schedule(t - 1) if self.schedule is not None else self.base_lr

    def _step_scalars(self, t: int) -> tuple:
        """The stepwise scalars (``kernels.table.hyper_columns``) of step number ``t``."""
        return (self._lr_at(t),)

    def _step_columns(self, steps: range) -> list:
        """``_step_scalars`` of the step numbers ``steps``, a column (list) per scalar, in far
        fewer Python calls (``_columnwise``)."""
        if self.schedule is None:
            return [[self.base_lr] * len(steps)]
        schedule = self.schedule
        return [[schedule(t - 1) for t in steps]]

    def _settled(self, t: int) -> bool:
        """Whether every step from number ``t`` on has step ``t``'s stepwise scalars."""
        return self.schedule is None

    def _sync_device(self) -> None:
        """Upload ``hyper`` and the table of the next steps' scalars in one copy."""
        self.validate()
        t0, columns = self._t, len(self._columns)
        wanted = TABLE_ROWS if self._until is None or self._until <= t0 else \
            min(TABLE_ROWS, self._until - t0)
        settled = self._settled(t0 + 1)  # then one row holds every step's
        steps = self._table_rows(t0, 1 if settled else wanted)
        filled = len(steps)
        if not settled and filled < TABLE_ROWS:
            # the rows past the filled ones repeat the last (never read: the table is refilled
            # at t0 + filled), so that it keeps its shape across refills: a captured CUDA graph
            # of the step stays valid
            steps = np.concatenate([steps, np.repeat(steps[-1:], TABLE_ROWS - filled, 0)])
        rows = len(steps)
        constants = self._kernel_values()
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
        self._refill_at = math.inf if self._settled(t0 + filled) else t0 + filled
        self._clip = clip
        self._stale = False

    def _table_rows(self, t0: int, rows: int) -> np.ndarray:
        """The stepwise scalars of steps ``t0 + 1 ..`` (float64, (<= rows, columns)).

        The table stops before the first step whose values are not finite reals with lr >= 0
        (a schedule leaving float range far ahead is refused only when the run gets there); a
        ConfigError when that is the first step.
        """
        table = self._table_columns(t0, rows)
        return table if table is not None else self._table_checked(t0, rows)

    def _table_columns(self, t0: int, rows: int) -> np.ndarray | None:
        """``_table_rows`` a column at a time, or None where a value is not a finite float
        with lr >= 0 (``_table_checked`` then finds it and says why)."""
        if not _columnwise(type(self)):
            return None
        try:
            columns = self._step_columns(range(t0 + 1, t0 + 1 + rows))
        except (TypeError, ValueError, ArithmeticError):
            return None
        if len(columns) != len(self._columns) or any(
                len(col) != rows or not _FLOATS.issuperset(map(type, col)) for col in columns):
            return None
        table = np.array(columns, dtype=np.float64).T
        if not (np.isfinite(table).all() and (table[:, 0] >= 0).all()):
            return None
        return np.ascontiguousarray(table)

    def _table_checked(self, t0: int, rows: int) -> np.ndarray:
        """``_table_rows`` a step at a time, each value checked."""
        columns = len(self._columns)
        good = []
        for t in range(t0 + 1, t0 + 1 + rows):
            try:
                values = tuple(self._step_scalars(t))
                why = None if len(values) == columns and all(map(check.real, values)) \
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

    def hyperparameters(self) -> dict:
        """The constructor arguments other than params and lr (JSON-serialisable)."""
        return {h.name: list(v) if isinstance(v := getattr(self, h.name), tuple) else v
                for h in self.hypers}

    def state_dict(self) -> dict:
        """Everything needed to resume: kind, hyper-parameters, step count and state buffers
        (NumPy host copies)."""
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


Optimizer._declare()


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""

    name, lr_default = "sgd", 0.01
    hypers = (Hyper("momentum", check.unit, 0.0, "mu", float),
              Hyper("nesterov", check.flag, False, None, bool, fixed=True),
              WEIGHT_DECAY, CLIP_NORM)
    buffers = {"buf": "momentum_buffer"}

    def _kernel(self) -> str:
        if self.momentum == 0:
            return "sgd_step"
        return "nesterov_step" if self.nesterov else "momentum_step"

    def _check_together(self, written: bool) -> None:
        if written and self.momentum > 0 and self.kernel == "sgd_step":
            self._unbuffered("mu")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("SGD: nesterov=True needs momentum > 0, got momentum=0" if written
                              else "nesterov=True needs momentum > 0")


class RMSProp(Optimizer):
    """RMSProp with optional momentum and centering (Graves)."""

    name, kernel, lr_default = "rmsprop", "rmsprop_step", 0.01
    hypers = (Hyper("rho", check.unit, 0.99, "rho", float), EPS,
              Hyper("momentum", check.unit, 0.0, "mu", float),
              Hyper("centered", check.flag, False, "centered", bool, fixed=True),
              WEIGHT_DECAY, CLIP_NORM)
    buffers = {"sq": "square_avg", "mom": "momentum_buffer", "gavg": "grad_avg"}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with L2 weight decay and the AMSGrad option."""

    name, kernel, lr_default = "adam", "adam_step", 1e-3
    hypers = (Hyper("betas", _betas, (0.9, 0.999), ("beta1", "beta2"), tuple[float, float]),
              EPS, WEIGHT_DECAY,
              Hyper("amsgrad", check.flag, False, "amsgrad", bool, fixed=True), CLIP_NORM)
    buffers = {"m": "exp_avg", "v": "exp_avg_sq", "vmax": "max_exp_avg_sq"}

    def _step_scalars(self, t: int) -> tuple:
        b1, b2 = self.betas
        return (self._lr_at(t), 1.0 - b1**t, 1.0 - b2**t)  # lr, bc1, bc2 (hyper_columns)

    def _step_columns(self, steps: range) -> list:
        b1, b2 = self.betas
        return [*super()._step_columns(steps), [1.0 - b1**t for t in steps],
                [1.0 - b2**t for t in steps]]

    def _settled(self, t: int) -> bool:
        b1, b2 = self.betas  # b**t only falls: once 1 - b**t rounds to 1 it stays there
        return super()._settled(t) and 1.0 - b1**t == 1.0 and 1.0 - b2**t == 1.0


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay."""

    name, kernel = "adamw", "adamw_step"
    hypers = tuple(h.but(0.01) if h is WEIGHT_DECAY else h for h in Adam.hypers)


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
    opt = get(state.get("name"), params, lr=lr, **state.get("hyperparameters", {}))
    opt.load_state_dict(state)
    return opt
