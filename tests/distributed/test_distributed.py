"""Data-parallel fit on 2 MPI ranks (CPU): equality with one process, reruns, faults, resume.

Each test runs ``tests/helpers/distributed_worker.py`` under mpiexec in a subprocess bounded by a
timeout; the worker trains on fixed random data (the data are the same on every rank by design).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers.mpi import LIMIT, WORKER, mpi_env, mpiexec_reason, ok, run

from devnet import distributed
from devnet.distributed import communicator as dist_comm
from devnet.distributed import launcher as dist_launcher
from devnet.distributed import parallel as dist_parallel
from devnet.errors import DevnetError

pytestmark = pytest.mark.skipif(mpiexec_reason() is not None,
                                reason=f"no MPI: {mpiexec_reason()}")


def test_two_ranks_equal_single_process_after_200_adam_steps(tmp_path):
    # n=97, batch 32: 4 steps per epoch, the last batch has ONE row, so rank 1's share of it is
    # empty (it adds a zero gradient); 50 epochs = 200 Adam steps, float64
    opts = dict(n=97, batch_size=32, epochs=50)
    single = ok(*run(tmp_path, "single", nproc=0, single=True, **opts)[:2])
    multi = ok(*run(tmp_path, "multi", **opts)[:2])
    assert int(multi["size"]) == 2
    rel = np.abs(multi["params"] - single["params"]).max() / np.abs(single["params"]).max()
    assert rel < 1e-10, rel
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-10)
    np.testing.assert_array_equal(multi["val_accuracy"], single["val_accuracy"])


def _two_gpus_reason():
    import devnet as dn
    from devnet.backend import cuda as cuda_backend

    reason = cuda_backend.unavailable_reason()
    if reason is not None:
        return reason
    gpus = [b for b in dn.available_backends() if b.startswith("cuda")]
    if len(gpus) < 2:
        return f"NCCL needs a GPU per rank; this machine has {len(gpus)}"
    try:
        dist_comm._nccl_module()
    except DevnetError as exc:
        return str(exc)
    return None


@pytest.mark.gpu
def test_two_ranks_on_gpus_equal_single_process(tmp_path):
    # the real NCCL path (the simulator CI runs it with the NCCL calls done by MPI:
    # test_distributed_cudasim.py); float64 so that only the summation order differs
    reason = _two_gpus_reason()
    if reason is not None:
        pytest.skip(reason)
    opts = dict(n=97, batch_size=32, epochs=50, dropout=0.3, device="cuda")
    single = ok(*run(tmp_path, "single", nproc=0, single=True, **opts)[:2])
    multi = ok(*run(tmp_path, "multi", **opts)[:2])
    assert multi["devices"].tolist() == ["cuda:0", "cuda:1"]
    rel = np.abs(multi["params"] - single["params"]).max() / np.abs(single["params"]).max()
    assert rel < 1e-10, rel
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-10)


@pytest.mark.parametrize("deep", [False, True])
def test_dropout_two_ranks_equal_single_process(tmp_path, deep):
    # each rank's shard is keyed by its global first row, so the ranks' masks are the
    # one-process masks; the last batch of n=97 has one row (rank 1's share is empty)
    opts = dict(n=97, batch_size=32, epochs=5, dropout=0.4, sizes=[6, 16, 16, 4], deep=deep)
    single = ok(*run(tmp_path, "single", nproc=0, single=True, **opts)[:2])
    multi = ok(*run(tmp_path, "multi", **opts)[:2])
    rel = np.abs(multi["params"] - single["params"]).max() / np.abs(single["params"]).max()
    assert rel < 1e-10, rel
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-10)


def test_uneven_shards_with_sample_weights_equal_single_process(tmp_path):
    # weights: each rank's share of a batch is its share of the batch's weight, not of its rows
    opts = dict(n=45, batch_size=16, epochs=5, sample_weight=True, sizes=[5, 7, 3])
    single = ok(*run(tmp_path, "single", nproc=0, single=True, **opts)[:2])
    multi = ok(*run(tmp_path, "multi", **opts)[:2])
    rel = np.abs(multi["params"] - single["params"]).max() / np.abs(single["params"]).max()
    assert rel < 1e-12, rel
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-12)


def test_same_run_twice_is_bit_identical(tmp_path):
    first = ok(*run(tmp_path, "a", epochs=3)[:2])
    second = ok(*run(tmp_path, "b", epochs=3)[:2])
    assert first["params"].tobytes() == second["params"].tobytes()
    assert first["loss"].tobytes() == second["loss"].tobytes()


def test_rank_raising_mid_epoch_aborts_every_rank_naming_it(tmp_path):
    _, proc, secs = run(tmp_path, "raise", epochs=50, steps_before_fault=6, scenario="raise")
    assert proc.returncode != 0
    assert secs < 30
    text = proc.stdout + proc.stderr
    assert "injected failure on rank 1" in text
    assert "rank 1 of 2" in text and "aborting every rank" in text


def test_rank_sigkilled_mid_epoch_is_named_and_checkpoint_resumes_exactly(tmp_path):
    ck = str(tmp_path / "ck.safetensors")
    # 4 steps per epoch: killed at global step 10 (epoch 2), after the epoch-1 checkpoint
    _, proc, secs = run(tmp_path, "killed", epochs=6, steps_before_fault=10,
                        scenario="sigkill", checkpoint=ck)
    assert proc.returncode != 0
    assert secs < 30
    text = proc.stdout + proc.stderr
    # named by the launcher (from the pid) or, if it got there first, by rank 0
    assert re.search(r"rank 1 \(pid \d+ on \S+\) (failed|exited)", text), text
    assert os.path.exists(ck)
    resumed = ok(*run(tmp_path, "resumed", epochs=6, resume_from=ck)[:2])
    straight = ok(*run(tmp_path, "straight", epochs=6)[:2])
    assert resumed["params"].tobytes() == straight["params"].tobytes()
    np.testing.assert_array_equal(resumed["loss"], straight["loss"])
    # another world size continues the same run (same global batches): equal to rounding
    alone = ok(*run(tmp_path, "alone", nproc=0, single=True, epochs=6, resume_from=ck)[:2])
    rel = np.abs(alone["params"] - straight["params"]).max() / np.abs(straight["params"]).max()
    assert rel < 1e-12, rel


@pytest.mark.parametrize("scenario, key", [("bad_data", "n_samples"),
                                           ("bad_model", "model")])
def test_ranks_disagreeing_fail_before_the_first_step(tmp_path, scenario, key):
    _, proc, secs = run(tmp_path, scenario, epochs=2, scenario=scenario)
    assert proc.returncode != 0
    assert secs < 30
    text = proc.stdout + proc.stderr
    assert "DistributedError" in text
    assert f"ranks disagree on {key!r} before the first step" in text, text


def test_launch_runs_the_command_on_n_ranks(tmp_path):
    code = ("from mpi4py import MPI; import os; c = MPI.COMM_WORLD; "
            f"open(os.path.join({str(tmp_path)!r}, f'r{{c.rank}}of{{c.size}}'), 'w').close()")
    rc = distributed.launch([sys.executable, "-c", code], nproc=2, env=mpi_env())
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0of2", "r1of2"]


RANK_FILES = """
import os, sys
from mpi4py import MPI
c = MPI.COMM_WORLD
open(os.path.join(sys.argv[1], f"r{c.rank}of{c.size}-{sys.argv[2]}"), "w").close()
"""


def test_launcher_runs_a_script_path_with_this_python(tmp_path):
    # README's form, "python -m devnet.distributed -n 2 train.py": mpiexec looked train.py up
    # on PATH and failed with "execvp error on file train.py"
    (tmp_path / "train.py").write_text(RANK_FILES)
    tag = f"t{os.getpid()}"
    proc = subprocess.run([sys.executable, "-m", "devnet.distributed", "-n", "2", "train.py",
                           str(tmp_path), tag], cwd=tmp_path, capture_output=True, text=True,
                          timeout=LIMIT, env=mpi_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r")) == \
        [f"r0of2-{tag}", f"r1of2-{tag}"]


def _argv_to_launch(monkeypatch, tmp_path, program, hosts=None):
    """The argv ``main`` hands ``launch`` (and so mpiexec) for ``program``, run in tmp_path."""
    seen = []
    monkeypatch.setattr(dist_launcher, "launch", lambda argv, nproc, hosts=None: seen.append(
        (argv, nproc, hosts)) or 0)
    monkeypatch.chdir(tmp_path)
    extra = [] if hosts is None else ["--hosts", hosts]
    assert distributed.main(["-n", "3", *extra, *program]) == 0
    (call,) = seen
    assert call[1] == 3 and call[2] == hosts
    return call[0]


def test_launcher_argv_for_scripts_and_programs(monkeypatch, tmp_path):
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "job").write_text("print(2)\n")  # a script without .py or execute permission
    run_sh = tmp_path / "run.sh"
    run_sh.write_text("#!/bin/sh\necho 3\n")
    run_sh.chmod(0o755)
    py = sys.executable
    assert _argv_to_launch(monkeypatch, tmp_path, ["train.py", "--lr", "0.1"]) == \
        [py, "train.py", "--lr", "0.1"]
    assert _argv_to_launch(monkeypatch, tmp_path, ["--", "train.py"]) == [py, "train.py"]
    assert _argv_to_launch(monkeypatch, tmp_path, [str(tmp_path / "job")]) == \
        [py, str(tmp_path / "job")]
    # programs pass as they are: the interpreter named, an executable, a module run
    assert _argv_to_launch(monkeypatch, tmp_path, ["python", "train.py"]) == ["python",
                                                                              "train.py"]
    assert _argv_to_launch(monkeypatch, tmp_path, [py, "-m", "x.py"]) == [py, "-m", "x.py"]
    assert _argv_to_launch(monkeypatch, tmp_path, ["./run.sh"]) == ["./run.sh"]
    # on other hosts the script need not exist here
    assert _argv_to_launch(monkeypatch, tmp_path, ["remote.py"], hosts="a,b") == \
        [py, "remote.py"]


def test_launcher_refuses_a_missing_script_before_starting_ranks(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(dist_launcher, "launch", lambda *a, **k: pytest.fail("launched"))
    monkeypatch.chdir(tmp_path)
    assert distributed.main(["-n", "2", "trian.py"]) == 2
    err = capsys.readouterr().err
    assert "no such script 'trian.py'" in err and str(tmp_path) in err


def test_mpiexec_command_rejects_bad_nproc_and_empty_hosts():
    with pytest.raises(distributed.DistributedError, match="nproc must be a positive integer"):
        distributed.mpiexec_command(0)
    with pytest.raises(distributed.DistributedError, match="hosts is empty"):
        distributed.mpiexec_command(2, hosts=[])
    assert distributed.mpiexec_command(2, hosts="a,b")[-2:] == ["-hosts", "a,b"]


def test_data_check_fingerprints_every_row_of_an_array_over_256_mib():
    # 65,537 rows of 1,024 float32 each (256 MiB) as a view of one 256 KiB column (stride 0
    # along the row): nothing big is allocated. Rows 4,999..5,001 change by (-1, 2, -1): no
    # row a sample of 64 would take, and neither the rows' sum nor their row-weighted sum
    # changes; a rank holding these rows must not pass as holding the same data
    from numpy.lib.stride_tricks import as_strided

    n, width = 65_537, 1_024
    column = np.random.default_rng(0).integers(-8, 8, n).astype(np.float32)
    changed = column.copy()
    changed[4_999:5_002] += np.array([-1, 2, -1], np.float32)
    a, b = (as_strided(c, shape=(n, width), strides=(4, 0), writeable=False)
            for c in (column, changed))
    assert a.nbytes > 256 << 20
    assert dist_parallel._digest(a) != dist_parallel._digest(b)
    # the fingerprint depends on the values and their order, not on the memory layout
    small = np.random.default_rng(1).standard_normal((300, 7))
    assert dist_parallel._digest(small) == dist_parallel._digest(np.asfortranarray(small))
    assert dist_parallel._digest(small[::2]) == dist_parallel._digest(small[::2].copy())
    assert dist_parallel._digest(small) != dist_parallel._digest(small[::-1])


# --- stopping a job: a signal to the launcher ----------------------------------------------------

def _started_by(marker: str) -> list[int]:
    """The pids of the processes whose command line holds ``marker`` (a test's own path)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read() and int(entry) != os.getpid():
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


def _gone_within(marker: str, seconds: float) -> list[int]:
    """Wait until no process holds ``marker``; the pids left after ``seconds`` (killed)."""
    end = time.monotonic() + seconds
    while (left := _started_by(marker)) and time.monotonic() < end:
        time.sleep(0.1)
    for pid in left:  # the job this test started, if the launcher left it running
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def _stop_job(tmp_path, command, ready, sig):
    """Run ``command``; once ``ready(output so far)`` holds, send ``sig`` to it. Returns
    (proc, its output, seconds from the signal to its exit, pids still running 10 s later).
    """
    marker = str(tmp_path)
    log = tmp_path / "job.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=mpi_env())
    try:
        end = time.monotonic() + LIMIT
        while not ready(log.read_text()) and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert ready(log.read_text()), log.read_text()
        assert len(_started_by(marker)) >= 3  # launcher, mpiexec, ranks
        sent = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=LIMIT)
        secs = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, log.read_text(), secs, _gone_within(marker, 10)


LAUNCHER = [sys.executable, "-m", "devnet.distributed", "-n", "2"]


@pytest.mark.skipif(not os.path.exists("/proc/self/cmdline"), reason="finds the ranks in /proc")
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_to_the_launcher_stops_every_rank_through_fits_interrupt(tmp_path, sig, code):
    ck = tmp_path / "ck.safetensors"
    opts = dict(epochs=10**6, checkpoint=str(ck))
    program = [sys.executable, WORKER, str(tmp_path / "out.npz"), json.dumps(opts)]
    proc, text, secs, left = _stop_job(tmp_path, LAUNCHER + program, lambda _: ck.exists(), sig)
    assert proc.returncode == code, text
    assert left == [], text
    assert secs < 30, text  # 10 s for the ranks, generous for a loaded machine
    assert f"{signal.Signals(sig).name}: stopping the 2 ranks" in text
    assert re.search(r"rank \d of 2 \(pid \d+ on \S+\) was interrupted \(KeyboardInterrupt\)",
                     text), text
    dn_model, _ = __import__("devnet").load(ck, backend="cpu")  # a whole checkpoint
    assert dn_model.n_params > 0


@pytest.mark.skipif(not os.path.exists("/proc/self/cmdline"), reason="finds the ranks in /proc")
def test_sigterm_to_devnet_train_nproc_stops_every_rank(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('[data]\ndataset = "digits"\n[model]\nhidden = [16]\n'
                      '[train]\nepochs = 1000000\nprogress = false\n'
                      f'[output]\ndir = {str(tmp_path / "run")!r}\n')
    command = [sys.executable, "-m", "devnet.cli", "train", "--config", str(config),
               "--nproc", "2"]
    # once an epoch is on disk, both ranks are training (their Ctrl-C handling installed):
    # a signal while a rank still starts up reaches it before devnet's handler
    last = tmp_path / "run" / "last.safetensors"
    proc, text, secs, left = _stop_job(tmp_path, command, lambda _: last.exists(),
                                       signal.SIGTERM)
    assert proc.returncode == 143, text
    assert left == [], text
    assert secs < 30, text
    assert text.count("devnet: interrupted") == 2, text  # each rank left by the CLI's path


IGNORES_INTERRUPTS = """
import signal, sys, time
from mpi4py import MPI
signal.signal(signal.SIGINT, signal.SIG_IGN)
if MPI.COMM_WORLD.rank == 1:
    open(sys.argv[1], "w").close()
while True:
    time.sleep(0.1)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/cmdline"), reason="finds the ranks in /proc")
def test_ranks_ignoring_the_interrupt_are_killed_after_the_grace_period(tmp_path):
    ready = tmp_path / "ready"
    launcher = [sys.executable, "-c", "import sys; from devnet.distributed import launcher as d; "
                "d.STOP_GRACE = 1.0; sys.exit(d.main(sys.argv[1:]))", "-n", "2"]
    program = [sys.executable, "-c", IGNORES_INTERRUPTS, str(ready)]
    proc, text, secs, left = _stop_job(tmp_path, launcher + program, lambda _: ready.exists(),
                                       signal.SIGTERM)
    assert proc.returncode == 143, text
    assert left == [], text
    assert secs < 20, text
    assert "did not stop within 1 s: killing them" in text
