"""Run by tests/distributed/test_distributed.py under ``mpiexec -n N`` (or alone for the
1-process oracle).

    python tests/helpers/distributed_worker.py OUT.npz [options as JSON]

Trains a small MLP on fixed random data with fit(..., comm=init()) and writes, from rank 0,
the final parameters and History to OUT.npz. Options (JSON): scenario, epochs, n, batch_size,
sizes, steps_before_fault, checkpoint, resume_from, sample_weight, single, dropout (the hidden
layers' rate; a residual + LayerNorm model with "deep": true), device ("cpu", or "cuda": each
rank on ``comm.device``, the single process on cuda:0), nccl ("mpi": the NCCL calls carried out
by ``MpiNccl``, for the CUDA simulator, whose device buffers are host memory; it also records
each NCCL call made off the model's device or stream, written as ``nccl_scope``).
"""

import collections
import ctypes
import json
import os
import signal
import sys

import numpy as np


class MpiNccl:
    """The names of ``cupy.cuda.nccl`` devnet uses, each NCCL call done by MPI on the buffer at
    the device pointer (the CUDA simulator's memory is the host's). Only the NCCL calls are
    replaced: devnet's own code around them (the id broadcast, pointers, dtypes, streams,
    events, the deadline) runs as on GPUs. ``backend``, once set, is the model's: a call made
    while another device or stream is current is recorded in ``off_scope`` (on a GPU it would
    run unordered with the step, and devnet's completion event would be recorded elsewhere)."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0
    CTYPES = {NCCL_FLOAT32: ctypes.c_float, NCCL_FLOAT64: ctypes.c_double}

    def __init__(self):
        from mpi4py import MPI

        self.mpi, self.calls = MPI, collections.Counter()
        self.backend, self.off_scope = None, []
        fake = self

        class NcclCommunicator:
            def __init__(self, nranks, uid, rank):
                world = MPI.COMM_WORLD
                assert (nranks, rank) == (world.size, world.rank), (nranks, rank)
                ids = world.allgather(tuple(uid))
                assert all(i == ids[0] for i in ids), "ranks built NCCL with different ids"
                fake.calls["init"] += 1

            def allReduce(self, send, recv, count, dtype, op, stream):  # noqa: N802 (NCCL's)
                assert send == recv and op == fake.NCCL_SUM
                fake.check_scope("allReduce", stream)
                MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, fake.view(recv, count, dtype))
                fake.calls["allReduce"] += 1

            def bcast(self, buf, count, dtype, root, stream):
                fake.check_scope("bcast", stream)
                MPI.COMM_WORLD.Bcast(fake.view(buf, count, dtype), root=root)
                fake.calls["bcast"] += 1

            def abort(self):
                fake.calls["abort"] += 1

        self.NcclCommunicator = NcclCommunicator

    def check_scope(self, call, stream):
        be = self.backend
        if be is None:
            return
        device = be.xp.cuda.runtime.getDevice()
        if (device, stream) != (be.index, be.stream.ptr):
            self.off_scope.append(f"{call} with device {device}, stream {stream:#x} current; "
                                  f"the model's are {be.index}, {be.stream.ptr:#x}")

    def view(self, ptr, count, dtype):
        return np.ctypeslib.as_array((self.CTYPES[dtype] * count).from_address(ptr))

    @staticmethod
    def get_unique_id():
        return os.urandom(128)  # rank 0's, broadcast; bytes, as CuPy >= 14 gives it


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
    from devnet.distributed import communicator as dist_comm

    comm = None if opts.get("single") else distributed.init(timeout=opts.get("timeout", 20))
    rank = 0 if comm is None else comm.rank
    nccl = None
    if opts.get("nccl") == "mpi":
        nccl = MpiNccl()
        dist_comm._nccl_module = lambda: nccl
    backend = "cpu"
    if opts.get("device") == "cuda":
        backend = "cuda:0" if comm is None else comm.device
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
    model = dn.MLP(sizes, dtype="float64", backend=backend, seed=3,
                   dropout=opts.get("dropout", 0.0), **deep)
    if nccl is not None:
        nccl.backend = model.backend
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
    devices = [model.backend.device] if comm is None else \
        comm.allgather_json(model.backend.device, "devices")
    off_scope = [] if nccl is None else nccl.off_scope
    if comm is not None:
        off_scope = sum(comm.allgather_json(off_scope, "NCCL scope"), [])
    if rank == 0:
        calls = nccl.calls if nccl is not None else {}
        np.savez(out, params=model.backend.to_numpy(model.params),
                 loss=np.array(hist.history["loss"]),
                 val_accuracy=np.array(hist.history["val_accuracy"]),
                 size=np.array(1 if comm is None else comm.size), devices=np.array(devices),
                 nccl=np.array([calls.get(k, 0) for k in ("init", "allReduce", "bcast")]),
                 nccl_scope=np.array(off_scope, dtype=str))


if __name__ == "__main__":
    main()
