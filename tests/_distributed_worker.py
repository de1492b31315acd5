"""Run by tests/test_distributed.py under ``mpiexec -n N`` (or alone for the 1-process oracle).

    python tests/_distributed_worker.py OUT.npz [options as JSON]

Trains a small MLP on fixed random data with fit(..., comm=init()) and writes, from rank 0,
the final parameters and History to OUT.npz. Options (JSON): scenario, epochs, n, batch_size,
sizes, steps_before_fault, checkpoint, resume_from, sample_weight, single, dropout (the hidden
layers' rate; a residual + LayerNorm model with "deep": true).
"""

import json
import os
import signal
import sys

import numpy as np


def data(n, n_in, n_out, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    y = rng.integers(0, n_out, size=n)
    y[:n_out] = np.arange(n_out)  # every class present
    return X, y


def main():
    out = sys.argv[1]
    opts = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    import devnet as dn
    from devnet import distributed

    comm = None if opts.get("single") else distributed.init(timeout=opts.get("timeout", 20))
    rank = 0 if comm is None else comm.rank
    sizes = opts.get("sizes", [6, 16, 4])
    if opts.get("scenario") == "bad_model" and rank == 1:
        sizes = sizes[:1] + [sizes[1] + 1] + sizes[2:]
    n = opts.get("n", 101)
    if opts.get("scenario") == "bad_data" and rank == 1:
        n -= 1
    X, y = data(n, sizes[0], sizes[-1])
    sw = None
    if opts.get("sample_weight"):
        sw = np.random.default_rng(1).uniform(0.1, 2.0, size=n)
    deep = dict(block="residual", norm="layernorm") if opts.get("deep") else {}
    model = dn.MLP(sizes, dtype="float64", backend="cpu", seed=3,
                   dropout=opts.get("dropout", 0.0), **deep)
    fault_at = opts.get("steps_before_fault")

    class Fault(dn.Callback):
        def on_batch_end(self, step, logs):
            if fault_at is not None and step == fault_at and rank == 1:
                if opts["scenario"] == "raise":
                    raise RuntimeError("injected failure on rank 1")
                if opts["scenario"] == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)

    hist = dn.fit(model, X, y, loss="cross_entropy", optimizer="adam", lr=1e-2,
                  epochs=opts.get("epochs", 4), batch_size=opts.get("batch_size", 32), seed=5,
                  sample_weight=sw, validation_data=(X[:20], y[:20]), progress=False,
                  callbacks=[Fault()], checkpoint=opts.get("checkpoint"),
                  resume_from=opts.get("resume_from"), comm=comm)
    if rank == 0:
        np.savez(out, params=model.backend.to_numpy(model.params),
                 loss=np.array(hist.history["loss"]),
                 val_accuracy=np.array(hist.history["val_accuracy"]),
                 size=np.array(1 if comm is None else comm.size))


if __name__ == "__main__":
    main()
