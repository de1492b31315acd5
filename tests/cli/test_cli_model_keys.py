"""The CLI's [model] block / norm / dropout keys, the gradient-flow plot and --nproc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import devnet as dn
from devnet import cli

CONFIG = """
[data]
dataset = "{data}"
test_size = 0.25
[model]
hidden = [12, 12, 12]
{model}
[train]
epochs = 2
batch_size = 16
device = "cpu"
progress = false
{train}
[output]
dir = "{out}"
"""


def _data(tmp_path, rng):
    X = rng.standard_normal((64, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + 2 * (X[:, 1] > 0)
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=y)
    return path


def test_model_keys_build_the_deep_model_and_write_the_gradient_flow_plot(tmp_path, rng):
    pytest.importorskip("matplotlib")
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG.format(data=_data(tmp_path, rng), out=tmp_path / "out",
                                 model='block = "residual"\nnorm = "layernorm"\ndropout = 0.1',
                                 train="gradient_flow = true"))
    assert cli.main(["train", "--config", str(cfg)]) == 0
    model, _ = dn.load(tmp_path / "out" / "model.safetensors", backend="cpu")
    assert (model.block, model.norm, model.dropout) == ("residual", "layernorm", 0.1)
    assert (tmp_path / "out" / "gradient_flow.png").stat().st_size > 0
    history = json.loads((tmp_path / "out" / "history.json").read_text())["history"]
    assert "grad_norm/layers.0" in history


@pytest.mark.parametrize("key, value, needle", [
    ("block", '"dense"', "plain, residual"), ("norm", '"batchnorm"', "none, layernorm"),
    ("dropout", "1.5", "[0, 1)")])
def test_bad_model_keys_are_config_errors(tmp_path, rng, capsys, key, value, needle):
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG.format(data=_data(tmp_path, rng), out=tmp_path / "out",
                                 model=f"{key} = {value}", train=""))
    assert cli.main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"model.{key}" in err and needle in err


def test_nproc_trains_under_mpiexec_like_one_process(tmp_path, rng):
    """`--nproc 2` launches two ranks; with the same seed and global batch the checkpoint
    equals the one-process run up to the all-reduce's rounding."""
    pytest.importorskip("mpi4py")
    if not (os.path.exists(os.path.join(os.path.dirname(sys.executable), "mpiexec"))
            or shutil.which("mpiexec")):
        pytest.skip("no mpiexec (pip install 'devnet-mlp[mpi]')")
    data = _data(tmp_path, rng)
    params = {}
    for nproc in (1, 2):
        cfg = tmp_path / f"run{nproc}.toml"
        cfg.write_text(CONFIG.format(data=data, out=tmp_path / f"out{nproc}", model="",
                                     train='loss = "cross_entropy"'))
        proc = subprocess.run([sys.executable, "-m", "devnet.cli", "train", "--config",
                               str(cfg), "--nproc", str(nproc)], capture_output=True,
                              text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]
        model, _ = dn.load(tmp_path / f"out{nproc}" / "model.safetensors", backend="cpu")
        params[nproc] = model.backend.to_numpy(model.params)
    np.testing.assert_allclose(params[2], params[1], rtol=1e-5, atol=1e-6)


def test_devnet_train_under_a_plain_mpiexec_checks_nproc_against_the_job(tmp_path, rng):
    """`mpiexec -n 2 devnet train` without --nproc trained two separate models into one folder;
    with --nproc 2 the ranks are mpiexec's own (no nested launch) and train one model."""
    pytest.importorskip("mpi4py")
    from devnet import distributed

    data = _data(tmp_path, rng)
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG.format(data=data, out=tmp_path / "out", model="",
                                 train='loss = "cross_entropy"'))
    mpiexec = distributed.mpiexec_command(2)
    train = [sys.executable, "-m", "devnet.cli", "train", "--config", str(cfg)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(distributed.LAUNCHED_ENV, None)
    proc = subprocess.run(mpiexec + train, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode != 0
    assert "train.nproc = 1 but this MPI job has 2 ranks" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out" / "model.safetensors").exists()
    proc = subprocess.run(mpiexec + train + ["--nproc", "2"], capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").exists()
