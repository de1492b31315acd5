"""The NCCL path of devnet.distributed on CuPy's stand-in arrays, faking only the NCCL calls.

The fake ``cupy.cuda.nccl`` below acts as the NCCL library of a 2-rank job whose other rank
holds the same buffer: allReduce doubles the memory at the pointer it is given, bcast leaves it.
Everything around it (device pointers, dtypes, streams, events, the MPI bootstrap of the unique
id, the deadline) is devnet's own code, on ``devnet.testing.cupy_sim`` arrays. The fake follows
CuPy 14's API (the unique id is ``bytes``); the real binding's argument checks are tested too,
where ``cupy.cuda.nccl`` loads (it does without a GPU, given an NCCL library: nvidia-nccl-cu12).
"""

from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest

from devnet import distributed
from devnet.distributed import communicator as dist_comm
from devnet.errors import DevnetError
from devnet.testing import cupy_sim as cp


class FakeNccl:
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0
    CTYPES = {7: ctypes.c_float, 8: ctypes.c_double}

    def __init__(self):
        self.calls = []
        self.ids = []
        self.devices = []  # the current device at each collective
        fake = self

        class NcclCommunicator:
            def __init__(self, nranks, uid, rank):
                fake.ids.append((nranks, uid, rank))
                self.aborted = False

            def allReduce(self, send, recv, count, dtype, op, stream):  # noqa: N802 (NCCL's)
                fake.calls.append(("allReduce", send, recv, count, dtype, op, stream))
                fake.devices.append(cp.cuda.runtime.getDevice())
                mem = (fake.CTYPES[dtype] * count).from_address(recv)
                view = np.ctypeslib.as_array(mem)
                view *= 2  # the other rank holds the same values

            def bcast(self, buf, count, dtype, root, stream):
                fake.calls.append(("bcast", buf, count, dtype, root, stream))
                fake.devices.append(cp.cuda.runtime.getDevice())

            def abort(self):
                fake.calls.append(("abort",))

        self.NcclCommunicator = NcclCommunicator

    @staticmethod
    def get_unique_id():
        return bytes(range(128))  # CuPy >= 14; CuPy 13 gave a tuple of signed chars


def _real_nccl():
    """CuPy's own NCCL binding, or a skip saying why it does not load."""
    try:
        from cupy.cuda import nccl
    except Exception as exc:  # no CuPy, or CuPy without its NCCL library
        pytest.skip(f"cupy.cuda.nccl does not load ({type(exc).__name__}: {exc}); install "
                    "cupy-cuda12x and nvidia-nccl-cu12")
    if not nccl.available:
        pytest.skip("cupy.cuda.nccl cannot load the NCCL library; install nvidia-nccl-cu12")
    return nccl


class FakeComm(distributed.Communicator):
    """Rank 0 of ``size``, without MPI: the JSON broadcast of the NCCL id is rank 0's own."""

    def __init__(self, timeout=5.0, size=2):
        self.rank, self.size, self.timeout = 0, size, timeout
        self.pids, self.hosts, self.host = list(range(1, size + 1)), ["h"] * size, "h"
        self._nccl = {}
        self.broadcasts = []

    def bcast_json(self, obj, root=0, what="broadcast"):
        self.broadcasts.append(what)
        return json.loads(json.dumps(obj))  # what every rank gets: MPI carries JSON

    def dead_ranks(self):
        return []


@pytest.fixture
def fake(monkeypatch):
    nccl = FakeNccl()
    monkeypatch.setattr(dist_comm, "_nccl_module", lambda: nccl)
    return nccl


@pytest.mark.parametrize("dtype, code", [("float32", 7), ("float64", 8)])
def test_nccl_allreduce_sums_the_device_buffer_in_place(fake, rng, dtype, code):
    comm = FakeComm()
    host = rng.normal(size=37).astype(dtype)
    buf = cp.asarray(host)
    comm.allreduce_sum_(buf, "gradient all-reduce", xp=cp)
    np.testing.assert_array_equal(buf.get(), host * 2)
    name, send, recv, count, nccl_dtype, op, stream = fake.calls[-1]
    assert (name, send, recv, count, nccl_dtype, op) == ("allReduce", buf.data.ptr,
                                                         buf.data.ptr, 37, code, 0)
    # the unique id came from rank 0 over the (MPI) broadcast, once per device
    assert fake.ids == [(2, bytes(range(128)), 0)]
    assert comm.broadcasts == ["NCCL id broadcast"]
    comm.allreduce_sum_(buf, xp=cp)
    assert len(fake.ids) == 1


def test_nccl_bcast_passes_root_and_buffer(fake, rng):
    comm = FakeComm()
    buf = cp.asarray(rng.normal(size=5))
    comm.bcast_(buf, root=0, xp=cp)
    assert fake.calls[-1][:5] == ("bcast", buf.data.ptr, 5, 8, 0)


def test_nccl_runs_on_the_buffers_device_whatever_is_current(fake, rng):
    # and on that device's current stream, where devnet records the event it polls against
    # the deadline: an event recorded on another device would be done at once
    comm = FakeComm()
    with cp.cuda.Device(1):
        buf = cp.asarray(rng.normal(size=6))
    assert cp.cuda.runtime.getDevice() == 0
    comm.bcast_(buf, xp=cp)
    comm.allreduce_sum_(buf, xp=cp)
    assert fake.devices == [1, 1]
    assert cp.cuda.runtime.getDevice() == 0


def test_nccl_refuses_integer_buffers_listing_valid_dtypes(fake):
    comm = FakeComm()
    with pytest.raises(distributed.DistributedError, match="valid dtypes are float32, float64"):
        comm.allreduce_sum_(cp.arange(4), xp=cp)


def test_nccl_wait_aborts_the_communicator_at_the_deadline(fake, monkeypatch):
    comm = FakeComm(timeout=0.05)
    buf = cp.asarray(np.ones(3))

    class Never:
        done = False

    monkeypatch.setattr(dist_comm, "_LIVENESS_PERIOD", 0.01)
    stream = cp.cuda.get_current_stream()
    monkeypatch.setattr(type(stream), "record", lambda self, event=None: Never())
    with pytest.raises(distributed.DistributedError, match="not complete within 0.05 s"):
        comm.allreduce_sum_(buf, "gradient all-reduce", xp=cp)
    assert fake.calls[-1] == ("abort",)


def test_fake_nccl_has_the_installed_cupys_id_type():
    nccl = _real_nccl()
    assert type(FakeNccl.get_unique_id()) is type(nccl.get_unique_id())


def test_real_nccl_binding_takes_the_id_devnet_passes(monkeypatch):
    # CuPy 14's NcclCommunicator(int ndev, bytes commId, int rank) checks the id's type before
    # it calls NCCL: a tuple is a TypeError there. devnet's id (through the JSON broadcast, as
    # every rank gets it) gets past the check; then NCCL fails for want of a GPU, or, on a GPU
    # machine, builds the one-rank communicator
    nccl = _real_nccl()
    calls = []
    real = nccl.NcclCommunicator

    def communicator(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(nccl, "NcclCommunicator", communicator)
    monkeypatch.setattr(dist_comm, "_nccl_module", lambda: nccl)
    uid = nccl.get_unique_id()
    monkeypatch.setattr(nccl, "get_unique_id", lambda: uid)
    try:
        dist_comm._Nccl(FakeComm(size=1), cp, 0)
    except nccl.NcclError:
        pass  # past the argument check: no device to bind the communicator to
    assert calls == [(1, uid, 0)]


def test_nccl_id_in_cupy_13s_form(monkeypatch):
    # CuPy 13: get_unique_id() is a tuple of 128 signed chars, and NcclCommunicator takes
    # only a tuple (its Cython signature refuses bytes with a TypeError before calling NCCL)
    signed = tuple(np.frombuffer(bytes(range(128, 256)), np.int8).tolist())
    seen = []

    class Cupy13Nccl(FakeNccl):
        @staticmethod
        def get_unique_id():
            return signed

    nccl = Cupy13Nccl()

    def communicator(nranks, uid, rank):
        if not isinstance(uid, tuple):
            raise TypeError(f"Argument 'commId' has incorrect type (expected tuple, got "
                            f"{type(uid).__name__})")
        seen.append(uid)

    nccl.NcclCommunicator = communicator
    monkeypatch.setattr(dist_comm, "_nccl_module", lambda: nccl)
    dist_comm._Nccl(FakeComm(), cp, 0)
    assert seen == [signed]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_real_nccl_on_one_rank_takes_devnets_calls(rng, dtype):
    # the real cupy.cuda.nccl on a real device: devnet's argument order, pointers, dtype codes
    # and stream (one rank, so the sum and the broadcast leave the buffer as it was); two
    # ranks on two GPUs: test_distributed.py::test_two_ranks_on_gpus_equal_single_process
    try:
        dist_comm._nccl_module()
    except DevnetError as exc:
        pytest.skip(str(exc))
    import cupy

    comm = FakeComm(size=1)
    host = rng.normal(size=1001).astype(dtype)
    buf = cupy.asarray(host)
    nccl = comm._nccl_for(buf, cupy)
    nccl.allreduce_sum_(buf, "one-rank all-reduce")
    nccl.bcast_(buf, 0, "one-rank broadcast")
    np.testing.assert_array_equal(cupy.asnumpy(buf), host)
    with pytest.raises(distributed.DistributedError, match="valid dtypes are float32, float64"):
        nccl.allreduce_sum_(cupy.arange(4), "integer all-reduce")
