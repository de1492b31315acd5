"""devnet.distributed refuses bad arguments, and ranks given different settings, by name.

Single-process tests use MPI's one-rank world; multi-rank tests run
``tests/helpers/per_rank_settings_worker.py`` under devnet's launcher in a subprocess bounded by a
timeout (a hang fails the test), with collectives timing out after 8 s inside the job.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.mpi import PER_RANK_WORKER as WORKER
from helpers.mpi import mpiexec_reason
from helpers.mpi import run as run_worker

from devnet import distributed
from devnet.distributed import DistributedError
from devnet.distributed import communicator as dist_comm
from devnet.distributed import launcher as dist_launcher
from devnet.distributed import parallel as dist_parallel

needs_mpi = pytest.mark.skipif(mpiexec_reason() is not None,
                               reason=f"no MPI: {mpiexec_reason()}")


@pytest.fixture
def fresh(monkeypatch):
    """init() as if never called in this process (the one-rank world, no excepthook left)."""
    monkeypatch.setattr(dist_comm, "_COMM", None)
    monkeypatch.setattr(dist_comm, "_install_excepthook", lambda comm: None)
    monkeypatch.delenv("DEVNET_DIST_TIMEOUT", raising=False)
    for var in dist_launcher._MPI_JOB_ENV:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


# --- init: timeout, environment, flags ----------------------------------------------------------

@needs_mpi
@pytest.mark.parametrize("timeout", [0, -1, math.nan, -math.inf, "10", True])
def test_init_bad_timeout_is_a_distributed_error_not_a_type_error(fresh, timeout):
    with pytest.raises(DistributedError, match="timeout must be a number of seconds > 0"):
        distributed.init(timeout=timeout)


@needs_mpi
@pytest.mark.parametrize("text", ["abc", "", "-5", "nan", "0"])
def test_env_timeout_not_a_positive_number_names_the_variable(fresh, text):
    fresh.setenv("DEVNET_DIST_TIMEOUT", text)
    with pytest.raises(DistributedError, match=f"DEVNET_DIST_TIMEOUT={text!r} must be"):
        distributed.init()


@needs_mpi
def test_env_timeout_inf_and_padded_numbers_are_accepted(fresh):
    fresh.setenv("DEVNET_DIST_TIMEOUT", " 7.5 ")
    assert distributed.init().timeout == 7.5
    fresh.setattr(dist_comm, "_COMM", None)
    fresh.setenv("DEVNET_DIST_TIMEOUT", "inf")
    assert distributed.init().timeout == math.inf


@needs_mpi
def test_init_later_explicit_timeout_is_not_silently_ignored(fresh):
    first = distributed.init(timeout=30)
    assert distributed.init(timeout=5) is first
    assert first.timeout == 5.0
    assert distributed.init().timeout == 5.0  # no argument: unchanged


@needs_mpi
def test_init_limit_threads_must_be_a_bool(fresh):
    with pytest.raises(DistributedError, match="limit_threads must be True or False"):
        distributed.init(limit_threads="no")


# --- the launcher's arguments ---------------------------------------------------------------

@needs_mpi
def test_mpiexec_command_nproc_numpy_integer_accepted(rng):
    n = int(rng.integers(2, 9))
    assert distributed.mpiexec_command(np.int64(n))[1:] == ["-n", str(n)]


@needs_mpi
@pytest.mark.parametrize("nproc", [0, -1, True, 2.5, "2", None])
def test_mpiexec_command_bad_nproc_names_type(nproc):
    with pytest.raises(DistributedError, match="nproc must be a positive integer"):
        distributed.mpiexec_command(nproc)


@needs_mpi
@pytest.mark.parametrize("hosts, match", [
    (" , ,", "hosts is empty"), (["", " "], "hosts is empty"),
    (["a", ""], "'' is not a host name"), (["a,b"], "'a,b' is not a host name"),
    (["a b"], "'a b' is not a host name"), ("a,,b", "'' is not a host name"),
    (["a", 3], "3 is not a host name"), (123, "hosts must be host names"),
    ("./missing_hostfile.txt", "is a missing hostfile"),
    (Path("/nonexistent/hostfile"), "hostfile '/nonexistent/hostfile' does not exist"),
])
def test_hosts_with_empty_blank_or_comma_names_are_rejected(hosts, match):
    with pytest.raises(DistributedError, match=match):
        distributed.mpiexec_command(2, hosts=hosts)


@needs_mpi
def test_hosts_good_forms(tmp_path):
    assert distributed.mpiexec_command(2, hosts=" a, b ")[-2:] == ["-hosts", "a,b"]
    assert distributed.mpiexec_command(2, hosts=("n1", "10.0.0.2"))[-2:] == \
        ["-hosts", "n1,10.0.0.2"]
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost:2\n")
    for given in (hostfile, str(hostfile)):
        assert distributed.mpiexec_command(2, hosts=given)[-2:] == ["-f", str(hostfile)]


@needs_mpi
@pytest.mark.parametrize("argv", ["python train.py", [], None, [sys.executable, 3]])
def test_launch_string_argv_is_rejected_not_split_into_characters(argv):
    with pytest.raises(DistributedError, match="argv must be a non-empty list of strings"):
        distributed.launch(argv, 2)


@needs_mpi
def test_launch_inside_an_mpi_job_is_refused_not_nested(fresh):
    fresh.setenv("PMI_RANK", "1")
    with pytest.raises(DistributedError, match="inside a running MPI job .*rank 1"):
        distributed.launch([sys.executable, "-c", "pass"], 2)


def test_launched_flag_leaked_without_an_mpi_job_is_not_launched(fresh):
    fresh.setenv(distributed.LAUNCHED_ENV, "1")
    assert not distributed.launched()
    fresh.setenv("PMI_RANK", "0")
    assert distributed.launched()


def test_main_double_dash_before_the_program_is_dropped(monkeypatch):
    seen = []
    monkeypatch.setattr(dist_launcher, "launch", lambda argv, nproc, hosts: seen.append(
        (argv, nproc, hosts)) or 0)
    assert distributed.main(["-n", "3", "--", "prog", "--flag"]) == 0
    assert seen == [(["prog", "--flag"], 3, None)]
    with pytest.raises(SystemExit):
        distributed.main(["-n", "2", "--"])


def test_main_bad_nproc_exits_2_with_the_reason(capsys):
    assert distributed.main(["-n", "0", "prog"]) == 2
    assert "nproc must be a positive integer" in capsys.readouterr().err


# --- collectives: checked on every world size ---------------------------------------------------

@needs_mpi
def test_collectives_bad_buffers_fail_on_one_rank_as_on_n(fresh, rng):
    comm = distributed.init()
    good = rng.normal(size=4)
    ro = good.copy()
    ro.flags.writeable = False
    for buf, match in [(good.tolist(), "needs a NumPy array"),
                       (rng.normal(size=(4, 4))[:, 0], "must be C-contiguous"),
                       (ro, "read-only"), (np.array(["a"]), "valid kinds")]:
        with pytest.raises(DistributedError, match=match):
            comm.allreduce_sum_(buf)
        with pytest.raises(DistributedError, match=match):
            comm.bcast_(buf)
    for root in (1, -1, True, 0.0):
        with pytest.raises(DistributedError, match="root must be a rank 0..0"):
            comm.bcast_(good, root=root)
    comm.allreduce_sum_(good)  # the good ones pass
    comm.bcast_(good, root=np.int64(0))


@needs_mpi
def test_allgather_json_non_json_is_a_distributed_error_and_size_is_unlimited(fresh, rng):
    comm = distributed.init()
    with pytest.raises(DistributedError, match="not JSON-serialisable"):
        comm.allgather_json(np.float32(1.0))
    big = {"v": rng.normal(size=800).tolist()}  # ~15 KiB of JSON
    assert comm.allgather_json(big) == [big]


def test_digest_sees_a_difference_in_any_row(rng):
    # the old digest hashed 64 sampled rows: a change in another row passed the start check
    X = rng.normal(size=(1000, 3))
    Y = X.copy()
    Y[int(rng.integers(1, 15)) + 15 * int(rng.integers(0, 60))] += 1e-3  # between samples
    assert dist_parallel._digest(X) != dist_parallel._digest(Y)


# --- two ranks, given different settings ----------------------------------------------------

def run(tmp_path, name, nproc=2, **opts):
    """The worker on ``nproc`` ranks (0: one plain process): (rank 0's npz or None, the ranks'
    JSON records, the process, its seconds)."""
    result, proc, secs = run_worker(tmp_path, name, nproc, worker=WORKER, **opts)
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob(f"{name}.npz.rank*"))]
    return result, records, proc, secs


def ok(result, records, proc, secs):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return result, records


def failed(proc, secs, *phrases):
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert secs < 20, (secs, text)  # an error before any collective waits out its timeout
    assert "DistributedError" in text, text
    for phrase in phrases:
        assert phrase in text, text


@needs_mpi
def test_validation_data_differing_per_rank_is_an_error_not_silent(tmp_path):
    # before: each rank logged its own val_loss; EarlyStopping and restore_best could then
    # stop or restore differently per rank (a hang, or different final models)
    _, _, proc, secs = run(tmp_path, "val", early_stop=1, epochs=4, rank1={"val_shift": 3.0})
    failed(proc, secs, "ranks disagree on 'val_loss' after epoch 0",
           "every rank must pass the same validation_data")


@needs_mpi
def test_callback_stopping_one_rank_only_stops_every_rank_without_waiting(tmp_path):
    # before: rank 0 went on to epoch 1 and waited in the all-reduce until the timeout
    _, records, proc, secs = run(tmp_path, "stop", epochs=4, rank1={"stop_epoch": 0})
    ok(None, records, proc, secs)
    assert secs < 8  # the collectives' timeout: nobody waited it out
    assert [r["epochs"] for r in records] == [[0], [0]]
    assert records[0]["param_sum"] == records[1]["param_sum"]
    assert "rank 1 stopped training after epoch 0; every rank stops" in proc.stderr


@needs_mpi
def test_lr_differing_per_rank_fails_before_the_first_step(tmp_path):
    # before: caught only by the parameter check after a whole epoch
    _, records, proc, secs = run(tmp_path, "lr", rank1={"lr": 0.1})
    failed(proc, secs, "ranks disagree on 'optimizer_settings' before the first step")
    assert records == []


@needs_mpi
def test_input_scaling_differing_per_rank_is_an_error_not_silent(tmp_path):
    # before: the scaling is not a parameter, so it was neither broadcast nor checked: rank 1
    # trained on differently scaled inputs and the all-reduce mixed the two
    _, _, proc, secs = run(tmp_path, "scaling", scaling=1.0, rank1={"scaling": 2.0})
    failed(proc, secs, "ranks disagree on 'input_scaling' before the first step")


@needs_mpi
def test_different_model_seeds_with_dropout_train_rank0s_model(tmp_path):
    # before: MLP(seed=None or per-rank seeds, dropout>0) failed with "ranks disagree on
    # 'model'" (the dropout seed follows the seed); now rank 0's dropout seed is broadcast
    # like its parameters, and the run equals one process with rank 0's seed
    opts = dict(dropout=0.3, epochs=3, n=30, batch_size=8)
    single, _ = ok(*run(tmp_path, "single", nproc=0, single=True, model_seed=3, **opts))
    multi, records = ok(*run(tmp_path, "multi", model_seed=3, rank1={"model_seed": 11},
                             **opts))
    rel = np.abs(multi["params"] - single["params"]).max() / np.abs(single["params"]).max()
    assert rel < 1e-12, rel
    assert records[0]["val_loss"] == records[1]["val_loss"]


@needs_mpi
def test_more_ranks_than_samples_and_zero_weight_shards_equal_single_process(tmp_path):
    # n=2 on 3 ranks (one rank never has a row); then a global batch whose second half weighs
    # 0 (rank 1's share of every batch has weight 0)
    for name, opts in [("tiny", dict(n=2, batch_size=4, sizes=[4, 5, 2], epochs=4)),
                       ("zero", dict(n=16, batch_size=8, weights=[1, 2, 1, 3, 0, 0, 0, 0]))]:
        single, _ = ok(*run(tmp_path, name + "1", nproc=0, single=True, **opts))
        multi, records = ok(*run(tmp_path, name + "N", nproc=3 if name == "tiny" else 2,
                                 **opts))
        scale = np.abs(single["params"]).max()
        assert np.abs(multi["params"] - single["params"]).max() / scale < 1e-12, name
        np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-12)
        assert len({r["param_sum"] for r in records}) == 1


@needs_mpi
def test_progress_only_on_rank0_and_unequal_json_sizes_gather(tmp_path):
    # allgather_json used a fixed 4 KiB slot per rank: a larger object raised on that rank
    # only, and the others waited out the timeout; now the lengths are gathered first
    result, records, proc, secs = run(tmp_path, "progress", progress=True, epochs=2,
                                      gather=True)
    ok(result, records, proc, secs)
    assert [r["gathered"] for r in records] == [[10, 6010], [10, 6010]]
    text = proc.stdout + proc.stderr
    assert text.count("epoch 1/2") == 1 and text.count("epoch 2/2") == 1, text


def test_launcher_module_runs_without_runpy_warning():
    # devnet imported devnet.distributed eagerly, so ``python -m devnet.distributed`` found
    # itself in sys.modules before running and printed a RuntimeWarning on every launch
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m",
                           "devnet.distributed", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr and "usage:" in proc.stdout
