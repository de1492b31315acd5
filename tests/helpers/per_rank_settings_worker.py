"""Run by tests/distributed/test_distributed_checks.py under mpiexec (or alone, ``single``): a
user's data-parallel fit, where the ranks may be given different settings.

    python tests/helpers/per_rank_settings_worker.py OUT.npz [options as JSON]

Options (JSON): n, batch_size, epochs, sizes, lr, dropout, model_seed, seed, weights (a list
repeated to n: sample weights), val_shift (added to the validation inputs), scaling (True:
input standardisation from the data, times ``scaling``), stop_epoch (a callback sets
stop_training at that epoch's end), early_stop (EarlyStopping patience on val_loss), progress,
checkpoint, gather, single (no communicator), plus ``rank1``: a dict of options overriding these on
rank 1 only. Rank 0 writes the parameters and the History to OUT.npz; every rank writes
``OUT.rank<r>.json`` (epochs it ran, its final parameter sum, its History's val_loss, the
lengths of an all-gather of differently sized strings) for the test to compare.
"""

import json
import sys

import numpy as np


def main():
    out = sys.argv[1]
    opts = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    import devnet as dn
    from devnet import distributed

    comm = None if opts.get("single") else distributed.init(timeout=opts.get("timeout", 8))
    rank = 0 if comm is None else comm.rank
    if rank == 1:
        opts.update(opts.get("rank1", {}))
    sizes = opts.get("sizes", [5, 8, 3])
    n = opts.get("n", 40)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, sizes[0]))
    y = rng.integers(0, sizes[-1], size=n)
    y[:min(n, sizes[-1])] = np.arange(min(n, sizes[-1]))
    Xv = rng.normal(size=(12, sizes[0])) + opts.get("val_shift", 0.0)
    yv = rng.integers(0, sizes[-1], size=12)
    sw = None
    if opts.get("weights") is not None:
        sw = np.resize(np.array(opts["weights"], dtype=np.float64), n)
    model = dn.MLP(sizes, dtype="float64", backend="cpu", seed=opts.get("model_seed", 3),
                   dropout=opts.get("dropout", 0.0))
    if opts.get("scaling"):
        mean, scale = dn.data.fit_standardization(X)
        model.set_input_scaling(mean, scale * opts["scaling"])
    epochs_run = []

    class Recorder(dn.Callback):
        def on_epoch_end(self, epoch, logs):
            epochs_run.append(epoch)
            if opts.get("stop_epoch") is not None and epoch >= opts["stop_epoch"]:
                self.trainer.stop_training = True

    callbacks = [Recorder()]
    if opts.get("early_stop") is not None:
        callbacks.append(dn.callbacks.EarlyStopping("val_loss", patience=opts["early_stop"]))
    hist = dn.fit(model, X, y, loss="cross_entropy", optimizer="adam", lr=opts.get("lr", 1e-2),
                  epochs=opts.get("epochs", 3), batch_size=opts.get("batch_size", 8),
                  seed=opts.get("seed", 5), sample_weight=sw, validation_data=(Xv, yv),
                  progress=opts.get("progress", False), callbacks=callbacks,
                  checkpoint=opts.get("checkpoint"), comm=comm)
    params = model.backend.to_numpy(model.params)
    # objects of different sizes on each rank, beyond 4 KiB on rank 1
    gathered = [] if comm is None or not opts.get("gather") else \
        comm.allgather_json("x" * (10 + 6000 * rank))
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"epochs": epochs_run, "param_sum": float(params.sum()),
                   "val_loss": hist.history["val_loss"],
                   "gathered": [len(g) for g in gathered]}, f)
    if rank == 0:
        np.savez(out, params=params, loss=np.array(hist.history["loss"]),
                 val_loss=np.array(hist.history["val_loss"]),
                 size=np.array(1 if comm is None else comm.size))


if __name__ == "__main__":
    main()
