"""A training step captured once as a CUDA graph and replayed per step.

``GraphStep(step, batch_size)`` is called as the ``Step`` it wraps. On a backend that captures
graphs (CUDA: ``backend.graph_reason()`` is None) each batch of ``batch_size`` rows is copied
into fixed device buffers, and the step runs on a stream of its own:

1. the first call runs the Step eagerly there: it allocates the work buffers, the kernels'
   scratch and the cuBLAS handle, and compiles the kernels, so that nothing of that happens
   inside the capture;
2. the second call captures the Step's call (forward, loss, backward, optimizer, the running
   loss sum) and launches the graph;
3. every later call launches the graph: one launch instead of every kernel, GEMM and the Python
   around them.

A step can be replayed because nothing it launches changes from step to step: the optimizer's
per-step scalars live in its device array ``hyper``, which ``opt_advance`` fills on the device
(its table refilled from the host, outside the graph, every ``TABLE_ROWS`` steps); the loss
value's slot, the buffers and every scalar argument are the same each step. What breaks that is
ineligible (``graph_eligible``): dropout (its masks are keyed by the step count, a kernel
argument the host passes), sample weights (normalised per batch into a new array), Step hooks
(host code between the stages), the reference kernels (they allocate). A call the graph cannot
replay (another batch size, a weight other than 1) runs the Step eagerly, ordered with the
graph's stream; when the optimizer's table, its clipping or a buffer the graph uses changes,
the step is warmed up and captured again.
"""

from __future__ import annotations

from devnet.errors import ConfigError
from devnet.train import plan


def graph_eligible(step, weighted: bool = False) -> tuple[bool, str]:
    """(True, what runs) when ``step`` can be captured as a graph, else (False, why not).

    weighted: the calls will pass sample weights.
    """
    model = step.model
    backend = model.backend
    reason = getattr(backend, "graph_reason", None)
    if reason is None:
        return False, f"the {backend.device} backend has no CUDA graphs"
    why = reason()
    if why:
        return False, why
    if step.optimizer is None:
        return False, "the Step has no optimizer (loss_and_grad only)"
    if step.hooks:
        return False, ("Step hooks (such as the data-parallel gradient sum) run host code "
                       "between the stages")
    overrides = plan.step_overrides(step)
    if overrides:  # host code in the step, run once at capture and never at a replay
        return False, f"{type(step).__name__} overrides the Step's {', '.join(overrides)}"
    if step.training and model.dropout > 0:
        return False, ("dropout's masks are keyed by the step count, a kernel argument the "
                       "host passes every step")
    if weighted:
        return False, "sample weights are normalised per batch into a new array"
    if not step._checked:
        return False, (f"the loss {step.loss.name!r} checks its data on every call (a read "
                       "back to the host)")
    return True, "captured once per batch size, replayed per step"


class GraphStep:
    """A Step replayed as a CUDA graph for batches of ``batch_size`` rows (see the module).

    Called as the Step: ``gstep(x, y, w=None, index=0, weight=1.0, rows=None, row0=0)``
    returns the loss value (a device scalar, valid until the next call) and adds it to
    ``step.running``. ``x``, ``y``: the batch on the model's device; calls with another batch
    size, sample weights or a weight other than 1 run the Step eagerly. ``engine``: what ran
    the last call ("eager", "capture" or "graph"). A ConfigError, naming the reason, when the
    Step is not eligible (``graph_eligible``).
    """

    def __init__(self, step, batch_size: int):
        ok, why = graph_eligible(step)
        if not ok:
            raise ConfigError(f"this training step cannot run as a CUDA graph: {why}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.step, self.batch_size = step, batch_size
        be = step.model.backend
        self.backend = be
        self.stream = be.capture_stream()
        self._ready, self._done = be.event(), be.event()
        self.x = self.y = None  # the fixed input buffers, made on the first call
        self.graph = self._graph_key = self._warm_key = None
        self._value = self._model_state = self._work = None
        self.engine = None

    def _refusal(self, x, y, w, weight) -> str | None:
        """Why this call is run eagerly, or None when the graph takes it."""
        if w is not None:
            return "sample weights"
        if weight != 1.0:
            return "a weight other than 1"
        if x.shape[0] != self.batch_size:
            return f"a batch of {x.shape[0]} rows, not {self.batch_size}"
        if self.x is not None and (x.shape != self.x.shape or x.dtype != self.x.dtype or
                                   y.shape != self.y.shape or y.dtype != self.y.dtype):
            return "inputs of another shape or dtype than the first batch's"
        return None

    def _key(self):
        """What the captured launches depend on besides the fixed buffers' contents (the work
        buffers by identity: ``_work`` holds the captured ones, so the id is never reused; the
        input scaling's arrays by address, as the graph reads them; the leaky slope and the
        loss's parameters, kernel arguments)."""
        model, opt = self.step.model, self.step.optimizer
        table = opt._table
        scaling = tuple(None if a is None else a.data.ptr
                        for a in (model._dev_mean, model._dev_scale))
        return (model.params.data.ptr, model.grads.data.ptr, opt.hyper.data.ptr,
                None if table is None else (table.data.ptr, table.shape),
                opt._clip is None, tuple(b.data.ptr for b in opt.state.values()),
                id(model._work.get(self.batch_size)), self.step.running.data.ptr, scaling,
                model.alpha, tuple(self.step.loss.params().items()))

    def __call__(self, x, y, w=None, index: int = 0, weight: float = 1.0, rows=None,
                 row0: int = 0):
        step, be = self.step, self.backend
        if self._refusal(x, y, w, weight):
            self.engine = "eager"
            return step(x, y, w, index, weight, rows, row0)
        opt = step.optimizer
        with step.scope():  # the backend's stream, where the batch was written
            if self.x is None:
                self.x, self.y = be.empty(x.shape, x.dtype), be.empty(y.shape, y.dtype)
            if x is not self.x:
                self.x[...] = x
            if y is not self.y:
                self.y[...] = y
            if opt._stale or opt._t >= opt._refill_at:
                opt._sync_device()  # a host upload: never inside the graph
            self._ready.record(be.stream)
        self.stream.wait_event(self._ready)
        key = self._key()
        with be.on_stream(self.stream):
            if self.graph is not None and key == self._graph_key:
                self.graph.launch(self.stream)
                opt._t += 1  # the host's step count, as the captured opt.step() advanced it
                for name, value in self._model_state.items():
                    setattr(step.model, name, value)
                value, self.engine = self._value, "graph"
            elif key != self._warm_key:
                self.graph = None
                value = step(self.x, self.y, None, index, 1.0, rows, row0)
                # after the step: its work buffers exist now
                self._work = step.model._work.get(self.batch_size)
                self._warm_key, self.engine = self._key(), "eager"
            else:
                value = self._capture(index, rows, row0)
                self.graph.launch(self.stream)
                self._graph_key, self.engine = key, "capture"
        self._done.record(self.stream)
        be.stream.wait_event(self._done)
        return value

    def _capture(self, index, rows, row0):
        step, model = self.step, self.step.model
        self.backend.bind_gemm(self.stream)
        self.stream.begin_capture()
        try:
            value = step(self.x, self.y, None, index, 1.0, rows, row0)
        except Exception as exc:
            try:
                self.stream.end_capture()
            except Exception:  # noqa: BLE001 - a capture the failure invalidated
                pass
            raise ConfigError(f"the training step could not be captured as a CUDA graph "
                              f"({type(exc).__name__}: {exc}); train without the graph"
                              ) from exc
        self.graph = self.stream.end_capture()
        self._value = value
        # what the Step's forward leaves on the model for a later backward or layer_outputs
        self._model_state = {name: getattr(model, name) for name in ("_X", "_n", "_keys")}
        return value
