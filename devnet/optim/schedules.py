"""Learning-rate schedules: pure functions of the step count, so resuming needs only the step.

Every schedule is callable as ``schedule(step) -> lr`` (step counts from 0) and serialises with
``config()`` / ``from_config()``. ``warmup(inner, steps)`` composes with any of them.
"""

from __future__ import annotations

import inspect
import math

from devnet.errors import ConfigError, lookup
from devnet.validation import real


def _rate(name: str, value, *, allow_zero: bool = False, most: float | None = None) -> float:
    """A finite float > 0 (>= 0 with ``allow_zero``; <= ``most``); NumPy scalars accepted."""
    if not (real(value) and value >= 0 and (value > 0 or allow_zero)
            and (most is None or value <= most)):
        bound = ">= 0" if allow_zero else "> 0"
        bound += f" and <= {most:g}" if most is not None else ""
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _count(name: str, value) -> int:
    """A whole number of steps >= 1 (5, np.int64(5), 5.0); 0.5 or 2.5 is a ConfigError."""
    if not (real(value) and value == int(value) and value >= 1):
        raise ConfigError(f"{name} must be a whole number of steps >= 1, got {value!r}")
    return int(value)


def _stretch(steps: int, old: int, new: int) -> int:
    return max(1, round(steps * new / old))


class Schedule:
    """Base class: ``lr = schedule(step)``."""

    name = "schedule"

    # the step from which the lr stays at its final value (None: never); resuming checks it
    horizon: int | None = None

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def extended(self, planned_steps: int, new_steps: int) -> Schedule:
        """This schedule with its time axis stretched by ``new_steps / planned_steps`` (step
        counts rounded, >= 1; exponential ``gamma ** (planned / new)``; warm-up keeps its length
        and stretches what follows it; a constant schedule is returned unchanged)."""
        return self

    def config(self) -> dict:
        return {"name": self.name, **{k: v for k, v in vars(self).items() if k != "inner"}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """``lr`` at every step."""

    name = "constant"

    def __init__(self, lr: float):
        self.lr = _rate("lr", lr)

    def __call__(self, step: int) -> float:
        return self.lr


class Step(Schedule):
    """``lr * gamma ** (step // step_size)``."""

    name = "step"

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.lr = _rate("lr", lr)
        self.step_size = _count("step_size", step_size)
        self.gamma = _rate("gamma", gamma)

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)

    def extended(self, planned_steps: int, new_steps: int) -> Step:
        return Step(self.lr, _stretch(self.step_size, planned_steps, new_steps), self.gamma)


class Exponential(Schedule):
    """``lr * gamma ** step``."""

    name = "exponential"

    def __init__(self, lr: float, gamma: float):
        self.lr = _rate("lr", lr)
        self.gamma = _rate("gamma", gamma)

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma**step

    def extended(self, planned_steps: int, new_steps: int) -> Exponential:
        return Exponential(self.lr, self.gamma ** (planned_steps / new_steps))


class Cosine(Schedule):
    """Cosine decay from ``lr`` to ``min_lr`` over ``total_steps``, then ``min_lr``."""

    name = "cosine"

    def __init__(self, lr: float, total_steps: int, min_lr: float = 0.0):
        self.lr = _rate("lr", lr)
        self.total_steps = _count("total_steps", total_steps)
        self.min_lr = _rate("min_lr", min_lr, allow_zero=True, most=self.lr)

    @property
    def horizon(self) -> int:
        return self.total_steps

    def __call__(self, step: int) -> float:
        t = min(step, self.total_steps) / self.total_steps
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))

    def extended(self, planned_steps: int, new_steps: int) -> Cosine:
        return Cosine(self.lr, _stretch(self.total_steps, planned_steps, new_steps),
                      self.min_lr)


class Warmup(Schedule):
    """Linear warm-up over ``warmup_steps`` to ``inner``'s value, then ``inner(step - warmup)``.

    During warm-up ``lr = inner(0) * (start_factor + (1 - start_factor) * (step + 1) / warmup)``.
    """

    name = "warmup"

    def __init__(self, inner: Schedule, warmup_steps: int, start_factor: float = 0.0):
        if not isinstance(inner, Schedule):
            raise ConfigError(f"warmup wraps a Schedule, got {type(inner).__name__}")
        self.inner = inner
        self.warmup_steps = _count("warmup_steps", warmup_steps)
        self.start_factor = _rate("start_factor", start_factor, allow_zero=True, most=1.0)

    @property
    def horizon(self) -> int | None:
        inner = self.inner.horizon
        return None if inner is None else self.warmup_steps + inner

    def extended(self, planned_steps: int, new_steps: int) -> Warmup:
        w = self.warmup_steps
        inner = self.inner.extended(max(planned_steps - w, 1), max(new_steps - w, 1))
        return Warmup(inner, w, self.start_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            frac = (step + 1) / self.warmup_steps
            return self.inner(0) * (self.start_factor + (1 - self.start_factor) * frac)
        return self.inner(step - self.warmup_steps)

    def config(self) -> dict:
        return {**super().config(), "inner": self.inner.config()}


SCHEDULES = {s.name: s for s in (Constant, Step, Exponential, Cosine, Warmup)}


constant, step, exponential, cosine, warmup = Constant, Step, Exponential, Cosine, Warmup


def warmup_cosine(lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> Warmup:
    """Linear warm-up for ``warmup_steps``, then cosine decay over the remaining steps."""
    warmup_steps = _count("warmup_steps", warmup_steps)
    total_steps = _count("total_steps", total_steps)
    return Warmup(Cosine(lr, max(total_steps - warmup_steps, 1), min_lr), warmup_steps)


def from_config(config: dict) -> Schedule:
    """Rebuild a schedule from ``Schedule.config()``."""
    if not isinstance(config, dict):
        raise ConfigError(f"a schedule config must be a dict {{'name': ..., ...}} "
                          f"(Schedule.config()), got {type(config).__name__}: {config!r}")
    config = dict(config)
    cls = lookup(SCHEDULES, config.pop("name", None), "schedule")
    if cls is Warmup:
        if "inner" not in config:
            raise ConfigError("a warmup schedule config needs 'inner', the config of the "
                              "schedule it warms up")
        config["inner"] = from_config(config["inner"])
    try:
        return cls(**config)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for schedule {cls.name!r}: {exc}") from None


# --- schedules by name over a planned run: the one table fit(schedule=...) and the CLI use ----
# Each takes (lr, total_steps, **overrides); an argument left out defaults from total_steps.

def _named_step(lr, total_steps, step_size=None, gamma=0.1):
    return step(lr, max(1, total_steps // 3) if step_size is None else step_size, gamma)


def _named_exponential(lr, total_steps, gamma=None):
    # decays by 100x over the run unless gamma is given
    return exponential(lr, 0.01 ** (1 / max(total_steps, 1)) if gamma is None else gamma)


def _named_warmup_cosine(lr, total_steps, warmup_steps=None, min_lr=0.0):
    # warm-up over the first 5% of the run unless warmup_steps is given
    if warmup_steps is not None and not isinstance(warmup_steps, bool) and \
            isinstance(warmup_steps, int) and isinstance(total_steps, int) and \
            warmup_steps >= total_steps:
        raise ConfigError(f"warmup_cosine: warmup_steps = {warmup_steps} is not below the "
                          f"run's {total_steps} steps, so the rate would never leave its "
                          "warm-up; give fewer warmup_steps (or more epochs)")
    warmup = max(1, total_steps // 20) if warmup_steps is None else warmup_steps
    return warmup_cosine(lr, warmup, total_steps, min_lr)


NAMED = {
    "constant": lambda lr, total_steps: constant(lr),
    "step": _named_step,
    "exponential": _named_exponential,
    "cosine": Cosine,
    "warmup_cosine": _named_warmup_cosine,
}


def named_args(name: str) -> dict[str, inspect.Parameter]:
    """The arguments schedule ``name`` of ``NAMED`` takes besides lr (total_steps included)."""
    params = inspect.signature(lookup(NAMED, name, "schedule")).parameters
    return {k: p for k, p in params.items() if k != "lr"}


def build(spec, lr: float, total_steps: int) -> Schedule | None:
    """A Schedule from ``spec``: None or a Schedule (as is); a name of ``NAMED``; a dict
    ``{"name": <NAMED name>, **overrides}`` (``total_steps`` may be among them); or a
    ``Schedule.config()`` dict (``from_config``)."""
    if spec is None or isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str):
        return lookup(NAMED, spec, "schedule")(lr, total_steps)
    if not isinstance(spec, dict):
        raise ConfigError(f"schedule must be a name ({', '.join(NAMED)}), a dict or a "
                          f"Schedule, got {type(spec).__name__}")
    config = dict(spec)
    name = config.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"a schedule dict needs a 'name': one of {', '.join(NAMED)} (with "
                          f"its overrides), or a Schedule.config() dict; got {spec!r}")
    if name not in NAMED or "lr" in config:
        return from_config(config)
    config.pop("name")
    valid = named_args(name)
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ConfigError(f"schedule {name!r} got unknown argument(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(valid)}")
    config.setdefault("total_steps", total_steps)
    return NAMED[name](lr, **config)
