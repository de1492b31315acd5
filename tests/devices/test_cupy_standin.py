"""The CuPy stand-in (``devnet.testing.cupy_sim``) refuses whatever CuPy 14 refuses.

The simulator pass of ``make test`` runs devnet's CUDA path on the stand-in; a stand-in looser
than CuPy lets a bug through to the first GPU run. Each rule below is CuPy's (read from its
source); ``tests/devices/test_cuda_sim_drift.py`` checks the names and parameters against the
installed ``cupy``. Stream ordering: the stand-in computes at once but keeps the order a GPU
would impose, so a use of a buffer, or a host write to pinned memory, that nothing synchronised
raises ``StreamOrderError``. Runs in the ordinary pytest process (no simulator needed).
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from devnet.backend import cuda as cuda_backend
from devnet.testing import cupy_sim as cp

StreamOrderError = cp.StreamOrderError


@pytest.fixture
def d(rng):
    """A device array, uploaded on the legacy default stream and synchronised."""
    a = cp.asarray(rng.standard_normal(6))
    cp.cuda.Stream.null.synchronize()
    return a


@pytest.fixture
def h(rng):
    return rng.standard_normal(6)


# --- operands ------------------------------------------------------------------------------------

HOST_OPERAND = {
    "d + h": lambda d, h: d + h,
    "h + d": lambda d, h: h + d,
    "d * h": lambda d, h: d * h,
    "d += h": lambda d, h: d.__iadd__(h),
    "d > h": lambda d, h: d > h,
    "cp.maximum(d, h)": lambda d, h: cp.maximum(d, h),
    "np.maximum(d, h)": lambda d, h: np.maximum(d, h),
    "cp.concatenate([d, h])": lambda d, h: cp.concatenate([d, h]),
    "cp.where(d > 0, h, d)": lambda d, h: cp.where(d > 0, h, d),
    "d.dot(h)": lambda d, h: d.dot(h),
    "d.clip(h, 1)": lambda d, h: d.clip(h, 1),
    "cp.copyto(d, h)": lambda d, h: cp.copyto(d, h),
    "d + list": lambda d, h: d + list(h),
    "cp.add(d, list)": lambda d, h: cp.add(d, list(h)),
}


@pytest.mark.parametrize("expr", sorted(HOST_OPERAND))
def test_a_host_array_in_device_arithmetic_raises(expr, d, h):
    # CuPy: TypeError: Unsupported type <class 'numpy.ndarray'> (copyto: ValueError, non-scalar)
    with pytest.raises((TypeError, ValueError), match="Unsupported type|non-scalar"):
        HOST_OPERAND[expr](d, h)


def test_scalars_host_indices_and_explicit_copies_stay_allowed(d, h):
    np.testing.assert_allclose((d * np.float32(2) + 1.5).get(), d.get() * 2 + 1.5)
    np.testing.assert_allclose((d + cp.asarray(h)).get(), d.get() + h)
    np.testing.assert_allclose(d[np.array([0, 2])].get(), d.get()[[0, 2]])
    np.testing.assert_allclose(d.take(np.array([1, 3])).get(), d.get()[[1, 3]])
    cp.copyto(d, np.array([4.0]))  # a one-element host array is a scalar to CuPy
    assert (d.get() == 4.0).all()


def test_writing_an_array_of_another_device_raises():
    # a fill or copy kernel launched on the current device (CuPy: peer access, or an error)
    with cp.cuda.Device(1):
        a = cp.zeros(3)
    with pytest.raises(ValueError, match=r"resides \(1\) is different .* device \(0\)"):
        a[...] = 0
    with pytest.raises(ValueError, match="different from the current device"):
        a += 1
    with cp.cuda.Device(1):
        a[...] = 1


# --- names and keywords: CuPy's, not NumPy's -----------------------------------------------------

@pytest.mark.parametrize("name", ["normal", "permutation", "shuffle", "choice", "bytes",
                                  "spawn", "bit_generator"])
def test_generator_has_only_cupys_draws(name):
    rng = cp.random.default_rng(0)
    with pytest.raises(AttributeError, match="no attribute"):
        getattr(rng, name)


def test_generator_draws_take_cupys_parameters():
    rng = cp.random.default_rng(0)
    assert rng.standard_normal((2, 3), dtype=np.float32).dtype == np.float32
    assert rng.uniform(0, 1, size=4, dtype=np.float32).dtype == np.float32  # NumPy's has no dtype
    assert rng.integers(0, 5, size=3).get().max() < 5
    out = cp.empty(3, np.float64)
    assert rng.random(3, out=out) is out
    with pytest.raises(TypeError, match="unexpected keyword"):
        rng.integers(0, 5, size=3, endpoint=True, extra=1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        rng.standard_normal(size=3, loc=1.0)


# NumPy's members that cupy.ndarray lacks
@pytest.mark.parametrize("name", ["resize", "ctypes", "getfield", "setfield", "setflags",
                                  "to_device"])
def test_ndarray_has_only_cupys_members(name, d):
    with pytest.raises(AttributeError):
        getattr(d, name)


@pytest.mark.parametrize("call", [
    lambda d: d.sum(where=d > 0), lambda d: d.max(initial=0.0), lambda d: d.mean(where=d > 0),
    lambda d: d.std(mean=d.mean()), lambda d: cp.sum(d, where=d > 0),
    lambda d: np.sum(d, initial=1.0), lambda d: cp.exp(d, where=d > 0)])
def test_reductions_and_ufuncs_take_only_cupys_keywords(call, d):
    with pytest.raises(TypeError):
        call(d)


def test_numpy_functions_cupy_lacks_are_refused(d):
    # CuPy's __array_function__ returns NotImplemented: NumPy then raises TypeError
    with pytest.raises(TypeError):
        np.busday_count(d, d)
    with pytest.raises(TypeError):
        np.ediff1d(d)  # CuPy has it; the stand-in does not, so it refuses (stricter)
    np.testing.assert_allclose(np.sum(d).get(), d.get().sum())  # cupy.sum, dispatched


# --- set, streams and devices --------------------------------------------------------------------

def test_set_takes_only_the_same_dtype_and_a_contiguous_target(d):
    with pytest.raises(TypeError, match="float32 array cannot be set to float64 array"):
        d.set(np.ones(6, np.float32))
    with pytest.raises(TypeError, match="Only numpy.ndarray"):
        d.set(cp.ones(6))
    m = cp.zeros((3, 4))
    with pytest.raises(RuntimeError, match="non-contiguous"):
        m[:, ::2].set(np.ones((3, 2)))
    d.set(np.full(6, 2.0))
    assert (d.get() == 2.0).all()


def test_a_stream_is_made_current_only_on_its_own_device():
    with cp.cuda.Device(1):
        s1 = cp.cuda.Stream()
    with pytest.raises(RuntimeError, match=r"created on \(1\) does not match .* device \(0\)"):
        with s1:
            pass
    with pytest.raises(RuntimeError, match="does not match"):
        s1.use()
    assert cp.cuda.get_current_stream().ptr == 0
    with cp.cuda.Device(1), s1:  # its own device: fine, and the null stream goes anywhere
        assert cp.cuda.get_current_stream() is s1
        with cp.cuda.Stream.null:
            assert cp.cuda.get_current_stream().ptr == 0
    assert cp.cuda.get_current_stream().ptr == 0


def test_an_event_is_recorded_only_on_a_stream_of_its_device():
    with cp.cuda.Device(1):
        s1 = cp.cuda.Stream()
    with pytest.raises(cp.runtime.CUDARuntimeError, match="InvalidResourceHandle"):
        cp.cuda.Event().record(s1)
    with pytest.raises(cp.runtime.CUDARuntimeError, match="InvalidResourceHandle"):
        s1.record()  # the new event is made on the current device, 0
    with cp.cuda.Device(1):
        s1.record().synchronize()


# --- stream ordering -----------------------------------------------------------------------------

def test_a_host_read_of_unsynchronised_work_on_a_non_blocking_stream_raises(d):
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        y = d * 2
    # get() copies on the current (legacy default) stream, which does not wait for s
    with pytest.raises(StreamOrderError, match="read by the host"):
        y.get()
    with pytest.raises(StreamOrderError):
        bool(y[0])  # __bool__, __float__, item(): host reads too
    with s:
        np.testing.assert_allclose(y.get(), d.get() * 2)  # s itself: ordered, then synced
    with s:
        z = y + 1
    s.record().synchronize()
    z.get()
    with s:
        w = z + 1
    cp.cuda.Device(0).synchronize()
    w.get()


def test_event_done_and_stream_synchronize_make_work_visible(d):
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        y = d + 1
    e = s.record()
    assert e.done  # polled True: the host now knows the work before it is over
    y.get()
    with s:
        z = d + 2
    s.synchronize()
    z.get()


def test_another_stream_uses_a_result_only_after_wait_event(d):
    a, b = cp.cuda.Stream(), cp.cuda.Stream()  # blocking streams are not ordered with each other
    with a:
        y = d * 3
    with b, pytest.raises(StreamOrderError, match="stream .* is used on the stream"):
        y + 1
    b.wait_event(a.record())
    with b:
        z = y + 1
    with a, pytest.raises(StreamOrderError):
        y[...] = z  # z is b's: a must wait for it too
    np.testing.assert_allclose(cp.asnumpy(z, stream=b), d.get() * 3 + 1)
    with a:
        u = d * 1
    with b, pytest.raises(StreamOrderError, match="overwritten"):
        u[...] = 0  # a write after a's write: b waited for a only before u was written


def test_synchronising_a_stream_completes_the_work_it_waited_for(d):
    a, b = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    with a:
        y = d * 2
    b.synchronize()
    with pytest.raises(StreamOrderError):
        y.get()  # b did not wait for a: its synchronize says nothing about y
    b.wait_event(a.record())
    with a:
        z = y * 2  # after the event: b's wait does not cover it
    b.synchronize()
    y.get()
    with pytest.raises(StreamOrderError):
        z.get()


def test_an_array_made_on_a_fresh_stream_is_visible_once_that_stream_is_synchronised(h):
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        y = cp.asarray(h)  # the upload is the stream's first operation
    with pytest.raises(StreamOrderError):
        y.get()
    s.synchronize()
    np.testing.assert_array_equal(y.get(), h)


def test_the_legacy_default_stream_orders_blocking_streams_only(d):
    blocking, non_blocking = cp.cuda.Stream(), cp.cuda.Stream(non_blocking=True)
    with blocking:
        y = d + 1
    np.testing.assert_allclose(y.get(), d.get() + 1)  # legacy stream waits for blocking ones
    with blocking:
        y2 = y + 1
    with non_blocking, pytest.raises(StreamOrderError):
        y2 * 2  # a non-blocking stream is not ordered after a blocking one
    with non_blocking:
        x = d - 1
    with blocking, pytest.raises(StreamOrderError):
        x * 2


def test_a_kernel_argument_is_ordered_after_its_last_write(d):
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        y = d * 2
    with pytest.raises(StreamOrderError, match="passed to a kernel"):
        _ = y._a  # what a simulated kernel launch reads, on the current (legacy) stream
    with s:
        assert y._a is y._buf


def test_a_host_write_to_pinned_memory_before_its_async_copy_is_done_raises(rng):
    pinned = cp.cupyx.empty_pinned((4, 3), np.float32)
    dev = cp.empty((4, 3), np.float32)
    s = cp.cuda.Stream()
    pinned[...] = rng.standard_normal((4, 3))
    dev.set(pinned, stream=s)
    done = s.record()
    for write in (lambda: np.copyto(pinned[:2], np.zeros((2, 3), np.float32)),
                  lambda: pinned.__setitem__(0, 1.0), lambda: pinned.fill(0),
                  lambda: np.multiply(pinned, 2, out=pinned)):
        with pytest.raises(StreamOrderError, match="pinned"):
            write()
    done.synchronize()
    np.copyto(pinned, np.zeros((4, 3), np.float32))
    pageable = np.ones((4, 3), np.float32)
    dev.set(pageable, stream=s)  # CUDA copies pageable memory before returning
    pageable[...] = 2


def test_elapsed_time_needs_both_events_complete():
    s = cp.cuda.Stream()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record(s)
    with s:
        cp.ones(3) * 2
    end.record(s)
    with pytest.raises(cp.runtime.CUDARuntimeError, match="NotReady"):
        cp.cuda.get_elapsed_time(start, end)
    end.synchronize()
    assert cp.cuda.get_elapsed_time(start, end) >= 0


# --- devnet's own synchronisation, with one step left out ----------------------------------------

@pytest.fixture
def on_standin(monkeypatch):
    monkeypatch.setattr(cuda_backend, "cupy", cp)
    monkeypatch.setattr(cuda_backend, "cupyx", cp.cupyx)


def test_the_upload_stager_waits_for_the_copy_out_of_pinned_memory(on_standin, rng):
    stream = cp.cuda.Stream()
    batches = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(4)]
    with stream:
        stager = cuda_backend._Stager((5, 3), np.float32)
        for b in batches:
            np.testing.assert_array_equal(cp.asnumpy(stager.put(b, stream)), b)
        # the same, without waiting for the copy two uploads ago: the host overwrites pinned
        # memory that copy may still be reading
        stager.put(batches[0], stream)
        stager.put(batches[1], stream)
        stager.put(batches[2], stream)  # waits for batches[0]'s copy, then reuses its buffer
        stager.done = [None, None]
        with pytest.raises(StreamOrderError, match="pinned"):
            stager.put(batches[3], stream)


def test_the_event_clock_synchronises_before_reading_the_time(on_standin):
    with cp.cuda.Device(0):
        be = types.SimpleNamespace(_device=cp.cuda.Device(0), stream=cp.cuda.Stream(),
                                   synchronize=lambda: None)
    clock = cuda_backend._EventClock(be, sync=False)
    with be.stream:
        cp.ones(4) + 1
    assert clock.elapsed() >= 0
    clock = cuda_backend._EventClock(be, sync=False)
    with be.stream:
        cp.ones(4) + 1
    clock.stop()
    with pytest.raises(cp.runtime.CUDARuntimeError, match="NotReady"):
        cp.cuda.get_elapsed_time(clock._start, clock._end)  # elapsed() without its wait
