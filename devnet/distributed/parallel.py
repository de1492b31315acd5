"""fit's data-parallel side: the ``DataParallel`` step hook that shards each global batch,
sums the gradients over the ranks and keeps the ranks in agreement (start-of-fit check,
broadcasts, epoch logs, stop decisions)."""

from __future__ import annotations

import hashlib
import json
import math
import numbers

import numpy as np

from devnet.distributed.communicator import Communicator, DistributedError, log, name_ranks
from devnet.train.history import Callback
from devnet.train.step import Batch, StepHook


class DataParallel(StepHook):
    """What ``fit(..., comm=comm)`` adds to the single-process step (its Step hook).

    Built before the first step: checks that the ranks agree, broadcasts rank 0's state. Per
    step: ``batch`` picks this rank's rows (its ``row0`` keys the dropout masks, so the ranks
    drop what one process would), ``scale_`` weighs its loss gradient by its share,
    ``allreduce_grads_`` sums the gradients (``collective``: the divergence guard's
    single-process replay leaves it out). Per epoch: ``sum_losses``, and the callbacks
    bracketed by ``agree_on_logs_`` and ``agree_on_stop``.
    """

    collective = True

    def __init__(self, comm: Communicator, trainer, X, y, sample_weight):
        if not isinstance(comm, Communicator):
            raise DistributedError(f"comm must be the Communicator from "
                                   f"devnet.distributed.init(), got {type(comm).__name__}")
        self.comm, self.trainer, self.model = comm, trainer, trainer.model
        self.sample_weight, self.factor = sample_weight, 1.0
        self._check_agreement(X, y, sample_weight)
        self._broadcast_state()

    @property
    def is_root(self) -> bool:
        return self.comm.rank == 0

    def _signature(self, X, y, sw) -> dict:
        t, scaling = self.trainer, self.model.input_scaling
        opt = t.optimizer
        return {
            # seed and dropout_seed: rank 0's parameters and dropout seed are broadcast
            "model": {k: v for k, v in self.model.config().items()
                      if k not in ("seed", "dropout_seed")},
            "n_params": int(self.model.n_params),
            "input_scaling": None if scaling is None else [_digest(a) for a in scaling],
            "loss": t.loss.config(), "optimizer": opt.name,
            "optimizer_settings": json.loads(json.dumps({
                "lr": opt.schedule.config() if opt.schedule is not None else opt.base_lr,
                **opt.hyperparameters()}, default=repr)),
            "optimizer_state": sorted(opt.state), "optimizer_t": int(opt.t),
            "n_samples": int(len(X)), "X": [list(X.shape), str(X.dtype), _digest(X)],
            "y": [list(y.shape), str(y.dtype), _digest(y)],
            "sample_weight": None if sw is None else _digest(sw),
            "batch_size": t.batch_size, "epochs": t.epochs, "shuffle": t.shuffle,
            "epoch": t.epochs_done, "step": t.step,
        }

    def _check_agreement(self, X, y, sw) -> None:
        """One all-gather of a small signature; the first difference from rank 0 is an error."""
        mine = self._signature(X, y, sw)
        every = self.comm.allgather_json(mine, "start-of-fit check")
        for rank, theirs in enumerate(every):
            for key in mine:
                if theirs[key] != every[0][key]:
                    hint = _HINTS.get(key, "")
                    raise DistributedError(
                        f"ranks disagree on {key!r} before the first step: rank 0 has "
                        f"{_short(every[0][key])}, rank {rank} has {_short(theirs[key])}. "
                        f"Every rank must run fit on the same model, data and settings{hint}")

    def _broadcast_state(self) -> None:
        """Rank 0's parameters, optimizer state, shuffling RNG and dropout seed on every rank."""
        comm, opt, t, be = self.comm, self.trainer.optimizer, self.trainer, self.model.backend
        with be.scope():  # on the backend's stream, ordered with the steps that follow
            comm.bcast_(self.model.params, what="parameter broadcast", xp=be.xp)
            for name in sorted(opt.state):
                comm.bcast_(opt.state[name], what=f"optimizer state {name!r} broadcast",
                            xp=be.xp)
        # seed=None draws a different seed on every rank: the batches and masks must agree
        state = comm.bcast_json(_jsonable(t.rng.bit_generator.state), what="RNG broadcast")
        t.rng.bit_generator.state = state
        self.model.dropout_seed = comm.bcast_json(self.model.dropout_seed,
                                                  what="dropout seed broadcast")

    def shard(self, order, lo: int, hi: int) -> tuple[int, int]:
        """This rank's positions [a, b) of the global batch at positions lo..hi-1 of the epoch's
        ``order`` (None: 0..n-1); sets ``factor``. An empty share (a last batch smaller than
        the world) takes the first row with factor 0: no kernel sees 0 rows."""
        n, size, rank = hi - lo, self.comm.size, self.comm.rank
        a, b = lo + rank * n // size, lo + (rank + 1) * n // size
        if b == a:
            self.factor = 0.0
            return lo, lo + 1
        sw = self.sample_weight
        if sw is None:
            self.factor = (b - a) / n
        else:  # the loss normalises weights by the batch's mean: the share is by weight
            idx = np.arange(lo, hi) if order is None else order[lo:hi]
            mine = idx[a - lo:b - lo]
            total = float(sw[idx].sum(dtype=np.float64))
            self.factor = float(sw[mine].sum(dtype=np.float64)) / total if total > 0 else 0.0
        return a, b

    def batch(self, feed, lo: int, hi: int) -> Batch:
        """This rank's Batch of the global batch at positions lo..hi-1 of ``feed``'s epoch order
        (``shard``); its ``row0`` is where the rank's rows start in the global batch."""
        a, b = self.shard(feed.order, lo, hi)
        return feed.batch(a, b)._replace(row0=a - lo)

    def output_grad_(self, grad, value, batch):
        """Step hook: ``scale_``."""
        return self.scale_(grad, value)

    def param_grad_(self, value, batch):
        """Step hook: ``allreduce_grads_`` before the update."""
        self.allreduce_grads_()
        return value

    def scale_(self, grad, value):
        """``grad *= factor`` in place (dL/dpred of this rank's rows); returns value * factor:
        summed over the ranks they are the global batch mean."""
        if self.factor != 1.0:
            grad *= grad.dtype.type(self.factor)
            value = value * self.factor
        return value

    def allreduce_grads_(self) -> None:
        """Sum the flat gradient buffer over the ranks, in place: one call per step."""
        self.comm.allreduce_sum_(self.model.grads, f"gradient all-reduce (step "
                                 f"{self.trainer.step})", self.model.backend.xp)

    def sum_losses(self, acc, last):
        """The epoch's loss sums added over the ranks: (acc, last) as floats (last may be None).
        Also checks that the ranks' parameters still agree (a float64 sum per rank)."""
        vals = np.array([float(acc), 0.0 if last is None else float(last)])
        self.comm.allreduce_sum_(vals, f"epoch {self.trainer.epoch} loss sum")
        check = float(self.model.backend.xp.sum(self.model.params, dtype=np.float64))
        sums = self.comm.allgather_json(check, "parameter check")
        differ = [r for r, v in enumerate(sums) if v != sums[0] and v == v]
        if differ:
            raise DistributedError(f"the parameters of {name_ranks(differ)} differ from rank 0's "
                                   f"after epoch {self.trainer.epoch} (sums {sums})")
        return float(vals[0]), None if last is None else float(vals[1])

    def root_only(self, progress, callbacks: list):
        """Progress and file-writing callbacks stay on rank 0; every rank's callbacks run between
        ``agree_on_logs_`` and ``agree_on_stop``."""
        if not self.is_root:
            from devnet.callbacks import CSVLogger, ModelCheckpoint

            progress = False
            callbacks = [cb for cb in callbacks if not isinstance(cb, (ModelCheckpoint,
                                                                       CSVLogger))]
        return progress, [_AtEpochEnd(self.agree_on_logs_), *callbacks,
                          _AtEpochEnd(lambda epoch, logs: self.agree_on_stop(epoch))]

    def agree_on_logs_(self, epoch: int, logs: dict) -> None:
        """Check that every rank's epoch logs are rank 0's, then make them exactly rank 0's (in
        ``logs`` and the History), so callbacks decide alike. With equal parameters only other
        validation data -- or, in the last digits, other BLAS builds -- differ: hence a
        tolerance by dtype."""
        mine = {k: float(v) for k, v in logs.items()
                if k != "time" and isinstance(v, numbers.Real)}
        every = self.comm.allgather_json(mine, f"epoch {epoch} logs")
        root = every[0]
        rtol = 1e-4 if self.model.dtype == np.float32 else 1e-9
        for rank, theirs in enumerate(every[1:], 1):
            if set(theirs) != set(root):
                raise DistributedError(
                    f"ranks disagree on what epoch {epoch} logged: rank 0 has "
                    f"{sorted(root)}, rank {rank} has {sorted(theirs)}; pass the same "
                    "validation_data / validation_split and train_metrics on every rank")
            for key, value in root.items():
                other = theirs[key]
                if not (math.isclose(value, other, rel_tol=rtol, abs_tol=rtol)
                        or (value != value and other != other)):
                    raise DistributedError(
                        f"ranks disagree on {key!r} after epoch {epoch}: rank 0 has "
                        f"{value!r}, rank {rank} has {other!r}; every rank must pass the same "
                        f"validation_data (and sample weights), or callbacks such as "
                        f"EarlyStopping would decide differently on each")
        history = self.trainer.history.history
        for key, value in root.items():
            logs[key] = value
            if history.get(key):
                history[key][-1] = value

    def agree_on_stop(self, epoch: int) -> None:
        """Stop every rank when any rank's callbacks stopped it (else the others would wait in
        the next all-reduce until the timeout)."""
        flags = self.comm.allgather_json(bool(self.trainer.stop_training),
                                         f"epoch {epoch} stop decision")
        if any(flags) and not all(flags) and self.is_root:
            stopped = [r for r, flag in enumerate(flags) if flag]
            log(f"devnet.distributed: {name_ranks(stopped)} stopped training after epoch "
                 f"{epoch}; every rank stops")
        self.trainer.stop_training = any(flags)


class _AtEpochEnd(Callback):
    """Runs ``hook(epoch, logs)`` at each epoch end, where it sits among the callbacks."""

    def __init__(self, hook):
        self.hook = hook

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self.hook(epoch, logs)


_HINTS = {
    "input_scaling": " (compute the standardisation from the same data on every rank, or "
                     "on rank 0 and broadcast it)",
    "optimizer_settings": " (give every rank the same lr, schedule and optimizer arguments)",
    "n_samples": " (each rank loads the whole data set; fit shards every batch itself)",
    **dict.fromkeys(("X", "y"), " (each rank loads the whole, identical data set; fit shards "
                                "every batch itself)"),
    "model": " (build the model from the same arguments on every rank)",
    **dict.fromkeys(("epoch", "step", "optimizer_t"),
                    " (resume every rank from the same checkpoint)"),
}


_DIGEST_CHUNK = 16 << 20  # bytes hashed per update: memory stays bounded whatever the size


def _digest(a: np.ndarray) -> str:
    """A fingerprint of every byte of an array in C order, whatever its layout (not a sample:
    one differing value must not pass), hashed a bounded block at a time."""
    a = np.asarray(a)
    digest = hashlib.sha1()
    for block in np.nditer(a, flags=["external_loop", "buffered", "zerosize_ok"], order="C",
                           buffersize=max(1, _DIGEST_CHUNK // max(1, a.itemsize))):
        digest.update(np.ascontiguousarray(block).view(np.uint8))
    return digest.hexdigest()[:16]


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


def _jsonable(state):
    if isinstance(state, dict):
        return {k: _jsonable(v) for k, v in state.items()}
    if isinstance(state, np.integer):
        return int(state)
    return state
