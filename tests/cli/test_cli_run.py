"""``devnet train``'s run folder: resumable state every epoch, Ctrl-C and --resume, run folders
that are never silently replaced, and regression targets standardized with the inputs.

The user-level test drives the command as a user would, in subprocesses: train, Ctrl-C,
``--resume`` with the command the interruption printed, then eval and predict on the CSV it
trained on. The other tests run the command in this process (``devnet.cli.main``).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import devnet as dn
from devnet import cli
from devnet.cli.train import EpochCheckpoint

LIMIT = 300  # seconds any one command may take: a hang fails, it does not block the suite


def devnet(*args, cwd=None):
    """``python -m devnet.cli ARGS`` in a subprocess; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "devnet.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=LIMIT)


def run_cli(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``devnet ARGV`` run in this process."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def errors(err: str) -> list[str]:
    return [ln for ln in err.strip().splitlines() if not ln.startswith("devnet: using ")]


CONFIG = """
[data]
dataset = "{data}"
target_column = "{target}"
test_size = 0.25
standardize = {standardize}
[model]
hidden = {hidden}
{model}
[optimizer]
name = "adam"
lr = {lr}
[schedule]
{schedule}
[train]
epochs = {epochs}
batch_size = {batch_size}
device = "cpu"
progress = false
{train}
[output]
dir = "{out}"
"""


def write_config(path: Path, data: Path, out: Path | str = "out", target="y", epochs=5,
                 batch_size=32, lr=0.01, standardize=True, hidden=(16,), model="",
                 train="", schedule='name = "warmup_cosine"\nwarmup_steps = 3') -> Path:
    path.write_text(CONFIG.format(data=data, target=target, epochs=epochs, out=out, lr=lr,
                                  schedule=schedule,
                                  batch_size=batch_size, model=model, train=train,
                                  hidden=list(hidden),
                                  standardize=str(standardize).lower()))
    return path


def regression_csv(rng, path: Path, n=200, offset=100.0, spread=5.0):
    """Targets around ``offset``: a linear function of 3 features, a little noise.

    The coefficients are a random direction of unit length, so the noise is always 5 % of
    the signal (a short random draw made it a third, and the best R2 about 0.91)."""
    X = rng.normal(size=(n, 3))
    w = rng.normal(size=3)
    y = offset + spread * (X @ (w / np.linalg.norm(w)) + 0.05 * rng.normal(size=n))
    table = np.column_stack([X, y])
    np.savetxt(path, table, delimiter=",", header="a,b,c,y", comments="", fmt="%.10g")
    return np.loadtxt(path, delimiter=",", skiprows=1)  # as written: what the command reads


def classification_csv(rng, path: Path, n=200):
    """Three classes labelled 3, 5, 7, separable by two of four features."""
    X = rng.normal(size=(n, 4))
    y = np.where(X[:, 0] > 0.4, 7, np.where(X[:, 1] > 0, 5, 3))
    table = np.column_stack([X, y])
    np.savetxt(path, table, delimiter=",", header="a,b,c,d,y", comments="", fmt="%.10g")
    return np.loadtxt(path, delimiter=",", skiprows=1)


def params(path: Path) -> np.ndarray:
    model, _ = dn.load(path, backend="cpu")
    return np.asarray(model.params)


def r2(y, pred) -> float:
    return 1 - float(np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


# --- the user-level run: train -> Ctrl-C -> --resume -> eval -> predict ----------------------

@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                    reason="needs POSIX signals")
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_ctrl_c_then_resume_is_the_uninterrupted_run_then_eval_and_predict(rng, tmp_path, task):
    data = tmp_path / "data.csv"
    table = (regression_csv if task == "regression" else classification_csv)(rng, data)
    X, y = table[:, :-1], table[:, -1]
    # the interrupted run is planned far longer than it runs (Ctrl-C always lands before its
    # end, whatever the machine's load), and resumed to a length decided once it stopped; with
    # a constant lr the planned length changes nothing, so the reference run of that length is
    # the run that was never interrupted
    cfg = write_config(tmp_path / "run.toml", data, out="unused", epochs=100_000,
                       batch_size=16, lr=0.01, schedule='name = "constant"')
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "devnet.cli", "train", "--config", "run.toml",
                             "--out", "run"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + LIMIT
        while not (run / "last.safetensors").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no epoch was saved"
            time.sleep(0.01)  # polling the file, not timing the run
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    lines = errors(err)
    assert len(lines) == 1 and lines[0].startswith("devnet: interrupted after epoch "), err
    done = int(lines[0].split("after epoch ")[1].split()[0])
    assert 1 <= done and "of 100000;" in lines[0]
    assert not (run / "model.safetensors").exists()  # the run did not finish
    state = dn.io.read_metadata(run / "last.safetensors")["train_state"]
    assert state["epoch"] == done  # the message says what is on disk: whole epochs only
    assert json.loads((run / "run.json").read_text())["config"]["train"]["epochs"] == 100_000

    # the command the message gives, as given, with the length to end at
    epochs = done + 50
    resume = shlex.split(lines[0].split("resume with: ")[1])
    assert resume[:2] == ["devnet", "train"] and resume[-1] == "--resume"
    again = devnet(*resume[1:], "--epochs", epochs, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"trained {epochs} epochs, resumed after epoch {done}" in again.stdout

    ref = devnet("train", "--config", cfg, "--out", tmp_path / "ref", "--epochs", epochs,
                 cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    # bit-identical to the run that was never interrupted, in the final model and its state
    for name in ("model.safetensors", "last.safetensors"):
        np.testing.assert_array_equal(params(run / name), params(tmp_path / "ref" / name))
    hist = json.loads((run / "history.json").read_text())
    hist_ref = json.loads((tmp_path / "ref" / "history.json").read_text())
    assert hist["epoch"] == hist_ref["epoch"] == list(range(epochs))
    assert hist["history"]["loss"] == hist_ref["history"]["loss"]
    # the series in the order the uninterrupted run records them (the checkpoint sorts them)
    assert list(hist["history"]) == list(hist_ref["history"])
    header = (run / "history.csv").read_text().splitlines()[0]
    assert header == (tmp_path / "ref" / "history.csv").read_text().splitlines()[0]

    ckpt = run / "model.safetensors"
    ev = devnet("eval", "--checkpoint", ckpt, "--json", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    score = json.loads(ev.stdout)
    preds = tmp_path / "preds.csv"
    pr = devnet("predict", "--checkpoint", ckpt, "--data", data, "--out", preds, cwd=tmp_path)
    assert pr.returncode == 0, pr.stderr
    pred = np.genfromtxt(preds, delimiter=",", names=None, skip_header=_header_rows(preds))
    pred = pred.reshape(len(X), -1)[:, -1]
    if task == "regression":
        assert score["r2"] > 0.9, score
        assert r2(y, pred) > 0.9  # in the data's own units (around 100)
    else:
        assert score["accuracy"] > 0.8, score
        assert set(np.unique(pred)) <= {3, 5, 7} and np.mean(pred == y) > 0.8


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                    reason="needs POSIX signals")
def test_ctrl_c_mid_run_resumes_exactly_on_a_decaying_schedule(rng, tmp_path, capsys,
                                                                monkeypatch):
    """Ctrl-C arriving mid-run (here: right after epoch 2's save, sent by the process to
    itself) stops at a clean point; the printed command, as given, finishes the run exactly
    as an uninterrupted one, warm-up and cosine decay included."""
    data = tmp_path / "d.csv"
    regression_csv(rng, data)
    write_config(tmp_path / "run.toml", data, out="unused", epochs=6, batch_size=32)
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "train", "--config", "run.toml", "--out", "ref")[0] == 0

    save = EpochCheckpoint.on_epoch_end

    def save_then_ctrl_c(self, epoch, logs):
        save(self, epoch, logs)
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(EpochCheckpoint, "on_epoch_end", save_then_ctrl_c)
        code, out, err = run_cli(capsys, "train", "--config", "run.toml", "--out", "run")
    assert code == 130 and "trained" not in out
    lines = errors(err)
    assert lines == ["devnet: interrupted after epoch 2 of 6; resume with: devnet train "
                     "--config run.toml --out run --resume"], err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    code, out, err = run_cli(capsys, *shlex.split(lines[0].split("resume with: ")[1])[1:])
    assert code == 0, err
    assert "trained 6 epochs, resumed after epoch 2" in out
    np.testing.assert_array_equal(params(tmp_path / "run" / "model.safetensors"),
                                  params(tmp_path / "ref" / "model.safetensors"))


def engine_of(path: Path) -> tuple[str, str]:
    """The engine a checkpoint's run trained with, and why (its History's params)."""
    hist = dn.io.read_metadata(path)["history"]["params"]
    return hist["engine"], hist["engine_reason"]


def test_the_run_saver_needs_no_step_of_python_and_gradient_flow_says_it_does(tmp_path):
    """What decides the engine: EpochCheckpoint runs nothing per step; GradientFlow (the
    gradient_flow option) does, and fit's reason names it."""
    from devnet.train.loop import _per_step_callbacks

    saver = EpochCheckpoint(tmp_path / "last.safetensors", {}, None)
    assert _per_step_callbacks([saver]) is None
    assert _per_step_callbacks([dn.GradientFlow(), saver]) == \
        "the callback GradientFlow runs on_batch_end after every step"


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                    reason="needs POSIX signals")
def test_ctrl_c_mid_epoch_stops_the_compiled_epoch_and_resumes_exactly(rng, tmp_path, capsys,
                                                                       monkeypatch):
    """devnet train runs the compiled epoch (its Ctrl-C needs no Python after every step); a
    Ctrl-C in the middle of an epoch stops it at the next block of steps, the last finished
    epoch is what is on disk, and --resume finishes the run exactly as an uninterrupted one."""
    from devnet.train import compiled, engine, loop

    if compiled.unavailable(dn.get_backend("cpu")) is not None:
        pytest.skip(compiled.unavailable(dn.get_backend("cpu")))
    data = tmp_path / "d.csv"
    regression_csv(rng, data)  # 150 training rows: 19 steps of 8 per epoch
    write_config(tmp_path / "run.toml", data, out="unused", epochs=6, batch_size=8)
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "train", "--config", "run.toml", "--out", "ref")[0] == 0
    assert engine_of(tmp_path / "ref" / "model.safetensors")[0] == "compiled"

    monkeypatch.setattr(loop, "BLOCK_STEPS", 4)  # 5 blocks per epoch
    run, blocks = engine.CompiledEpoch.run, []
    at_epoch = int(rng.integers(1, 5))  # Ctrl-C after a block inside this epoch
    at_block = int(rng.integers(1, 4))

    def run_then_ctrl_c(self, order, first, count, index=0):
        run(self, order, first, count, index)
        blocks.append((first, count))
        epoch = sum(f == 0 for f, _ in blocks) - 1
        if epoch == at_epoch and first == 4 * (at_block - 1):
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(engine.CompiledEpoch, "run", run_then_ctrl_c)
        code, out, err = run_cli(capsys, "train", "--config", "run.toml", "--out", "run")
    assert code == 130 and "trained" not in out, err
    # the epoch it stopped in ran only its first at_block blocks, none after the Ctrl-C
    starts = [i for i, (f, _) in enumerate(blocks) if f == 0]
    assert len(starts) == at_epoch + 1 and len(blocks) - starts[-1] == at_block
    assert all(c <= 4 for _, c in blocks)
    lines = errors(err)
    assert lines == [f"devnet: interrupted after epoch {at_epoch} of 6; resume with: devnet "
                     "train --config run.toml --out run --resume"], err
    last = tmp_path / "run" / "last.safetensors"
    assert dn.io.read_metadata(last)["train_state"]["epoch"] == at_epoch
    assert engine_of(last) == ("compiled", "every op of the step is in the compiled plan")
    assert not (tmp_path / "run" / "model.safetensors").exists()
    code, out, err = run_cli(capsys, *shlex.split(lines[0].split("resume with: ")[1])[1:])
    assert code == 0, err
    assert f"trained 6 epochs, resumed after epoch {at_epoch}" in out
    for name in ("model.safetensors", "last.safetensors"):
        np.testing.assert_array_equal(params(tmp_path / "run" / name),
                                      params(tmp_path / "ref" / name))
    assert engine_of(tmp_path / "run" / "model.safetensors")[0] == "compiled"


def _header_rows(path: Path) -> int:
    """1 if the predictions CSV starts with a header line, else 0."""
    first = path.read_text().splitlines()[0].split(",")[0]
    try:
        float(first)
    except ValueError:
        return 1
    return 0


# --- run folders are not overwritten ---------------------------------------------------------

def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(rng, tmp_path, capsys):
    data = tmp_path / "d.csv"
    regression_csv(rng, data, offset=0.0, spread=1.0)
    cfg = write_config(tmp_path / "run.toml", data, out=tmp_path / "out", epochs=2)
    out = tmp_path / "out"
    assert run_cli(capsys, "train", "--config", cfg)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"last.safetensors", "model.safetensors", "run.json"} <= set(before)

    code, stdout, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2 and "trained" not in stdout
    lines = errors(err)
    assert len(lines) == 1 and "already holds a run" in lines[0]
    assert "--resume" in lines[0] and "--overwrite" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched

    # both flags: a usage error before anything happens
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--resume", "--overwrite")
    assert code == 2 and "not allowed with" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # --overwrite removes the previous run's files (also under names this config does not
    # use), and nothing else in the folder
    (out / "notes.txt").write_text("mine")
    cfg2 = write_config(tmp_path / "run2.toml", data, out=out, epochs=3)
    text = cfg2.read_text() + 'checkpoint = "other.safetensors"\n'
    cfg2.write_text(text)
    code, stdout, err = run_cli(capsys, "train", "--config", cfg2, "--overwrite")
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" not in names and "other.safetensors" in names
    assert (out / "notes.txt").read_text() == "mine"
    assert len(json.loads((out / "history.json").read_text())["history"]["loss"]) == 3


def test_a_failed_run_leaves_no_folder_it_created(rng, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,y\n1,2,3\n4,oops,6\n")
    nested = tmp_path / "new" / "deeper" / "out"
    cfg = write_config(tmp_path / "run.toml", bad, out=nested)
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 2 and len(errors(err)) == 1, err
    assert not (tmp_path / "new").exists()
    # a folder the user made stays, even empty
    mine = tmp_path / "mine"
    mine.mkdir()
    cfg = write_config(tmp_path / "run.toml", bad, out=mine)
    assert run_cli(capsys, "train", "--config", cfg)[0] == 2
    assert mine.is_dir() and not any(mine.iterdir())


def test_ctrl_c_before_the_first_epoch_says_nothing_can_be_resumed(rng, tmp_path, capsys,
                                                                   monkeypatch):
    data = tmp_path / "d.csv"
    regression_csv(rng, data, offset=0.0, spread=1.0)
    cfg = write_config(tmp_path / "run.toml", data, out=tmp_path / "a" / "out")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(dn, "fit", interrupted)
        code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 130
    assert errors(err) == ["devnet: interrupted before the first epoch finished: nothing to "
                           "resume"]
    assert not (tmp_path / "a").exists()

    # --overwrite: interrupted before the previous run's files went, they stay as they were
    assert run_cli(capsys, "train", "--config", cfg)[0] == 0
    out = tmp_path / "a" / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with monkeypatch.context() as patch:
        patch.setattr(dn, "MLP", interrupted)
        code, _, err = run_cli(capsys, "train", "--config", cfg, "--overwrite")
    assert code == 130 and "was left as it was" in err and "resume with" not in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # ... and after they went, nothing is left to resume (the folder was there before: kept)
    with monkeypatch.context() as patch:
        patch.setattr(dn, "fit", interrupted)
        code, _, err = run_cli(capsys, "train", "--config", cfg, "--overwrite")
    assert code == 130 and "nothing to resume" in err, err
    assert out.is_dir() and not any(out.iterdir())


# --- --resume --------------------------------------------------------------------------------

def test_resume_refuses_what_it_cannot_continue(rng, tmp_path, capsys):
    data = tmp_path / "d.csv"
    regression_csv(rng, data, offset=0.0, spread=1.0)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.toml", data, out=out, epochs=2)

    code, _, err = run_cli(capsys, "train", "--config", cfg, "--resume")
    assert code == 2 and "nothing to resume" in err and len(errors(err)) == 1
    assert not out.exists()

    assert run_cli(capsys, "train", "--config", cfg)[0] == 0
    # a finished run: only more epochs continue it
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--resume")
    assert code == 2 and "has trained 2 epochs" in err and "--epochs" in err
    # another config: named key by key
    cfg2 = write_config(tmp_path / "changed.toml", data, out=out, epochs=2, lr=0.02,
                        hidden=(8,))
    code, _, err = run_cli(capsys, "train", "--config", cfg2, "--resume", "--epochs", 4)
    lines = errors(err)
    assert code == 2 and len(lines) == 1
    assert "optimizer.lr" in lines[0] and "model.hidden" in lines[0], lines[0]
    # a changed data file
    saved = data.read_bytes()
    data.write_bytes(saved + saved.splitlines(keepends=True)[-1])  # one row more
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--resume", "--epochs", 4)
    assert code == 2 and "changed since the run" in err, err
    data.write_bytes(saved)

    # more epochs extend the run: epochs 3 and 4 are trained on top of the first two
    first = json.loads((out / "history.json").read_text())["history"]["loss"]
    code, stdout, err = run_cli(capsys, "train", "--config", cfg, "--resume", "--epochs", 4)
    assert code == 0, err
    assert "trained 4 epochs, resumed after epoch 2" in stdout
    hist = json.loads((out / "history.json").read_text())
    assert hist["epoch"] == [0, 1, 2, 3] and hist["history"]["loss"][:2] == first
    assert dn.io.read_metadata(out / "last.safetensors")["train_state"]["epoch"] == 4
    assert json.loads((out / "run.json").read_text())["config"]["train"]["epochs"] == 4


# --- regression targets ----------------------------------------------------------------------

@pytest.mark.parametrize("hidden, model", [((16,), ""),
                                           ((16, 16), 'block = "residual"\nnorm = "layernorm"')],
                         ids=["plain", "residual-layernorm"])
def test_standardized_regression_targets_come_back_in_their_units(rng, tmp_path, capsys,
                                                                  hidden, model):
    data = tmp_path / "d.csv"
    table = regression_csv(rng, data, offset=100.0, spread=5.0)
    X, y = table[:, :-1], table[:, -1]
    on = write_config(tmp_path / "on.toml", data, out=tmp_path / "on", epochs=60,
                      hidden=hidden, model=model)
    off = write_config(tmp_path / "off.toml", data, out=tmp_path / "off", epochs=60,
                       standardize=False, hidden=hidden, model=model)

    code, _, err = run_cli(capsys, "train", "--config", on)
    assert code == 0, err
    assert "warning" not in err
    code, _, err_off = run_cli(capsys, "train", "--config", off)
    assert code == 0, err_off
    warning = [ln for ln in errors(err_off) if ln.startswith("devnet: warning: ")]
    assert len(warning) == 1 and "set data.standardize = true" in warning[0]
    # it names the target and gives its mean and std (of the training split)
    Xtr, _, ytr, _ = dn.data.train_test_split(X, y, 0.25, seed=0)
    said = warning[0].split(" has mean ")[1].split()
    assert "'y'" in warning[0]
    assert float(said[0]) == pytest.approx(ytr.mean(), rel=1e-3)
    assert float(said[3].rstrip(":")) == pytest.approx(ytr.std(), rel=1e-3)

    # the statistics of the training split, in the checkpoints and run.json
    for source in (dn.io.read_metadata(tmp_path / "on" / "model.safetensors")["extra"],
                   dn.io.read_metadata(tmp_path / "on" / "last.safetensors")["extra"],
                   json.loads((tmp_path / "on" / "run.json").read_text())):
        scaling = source["target_scaling"]
        np.testing.assert_allclose(scaling["mean"], [ytr.mean()], rtol=1e-6)
        np.testing.assert_allclose(scaling["scale"], [ytr.std()], rtol=1e-5)
    assert json.loads((tmp_path / "off" / "run.json").read_text())["target_scaling"] is None

    results = {}
    for name in ("on", "off"):
        ckpt = tmp_path / name / "model.safetensors"
        code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--split", "all",
                                 "--json")
        assert code == 0, err
        code, _, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--data", data,
                               "--out", tmp_path / f"{name}.npy")
        assert code == 0, err
        pred = np.load(tmp_path / f"{name}.npy").reshape(len(y))
        results[name] = (json.loads(out), pred)
    score, pred = results["on"]
    assert r2(y, pred) > 0.9 and score["r2"] > 0.9, score
    assert r2(y, results["off"][1]) < 0.5  # the same data, targets left at 100: hopeless
    # eval's loss is in the data's units: the mse of predict's output, computed by hand
    np.testing.assert_allclose(score["loss"], np.mean((pred - y) ** 2), rtol=1e-4)
    # dn.load gives the folded model: it predicts in the data's units too
    model_on, _ = dn.load(tmp_path / "on" / "model.safetensors", backend="cpu")
    np.testing.assert_allclose(model_on.predict(X.astype(np.float32))[:, 0], pred, rtol=1e-6)
    # the resumable state trains on standardized targets: its outputs are near 0, not 100
    state, _ = dn.load(tmp_path / "on" / "last.safetensors", backend="cpu")
    assert abs(float(state.predict(X.astype(np.float32)).mean())) < 1
    # ... which predict and eval read in the data's units all the same
    code, _, err = run_cli(capsys, "predict", "--checkpoint", tmp_path / "on" / "last.safetensors",
                           "--data", data, "--out", tmp_path / "last.npy")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "last.npy").reshape(len(y)), pred, rtol=1e-5)


def test_poisson_targets_are_not_standardized(rng, tmp_path, capsys):
    X = rng.normal(size=(120, 3))
    counts = rng.poisson(np.exp(1 + 0.5 * X[:, 0]))
    data = tmp_path / "p.csv"
    np.savetxt(data, np.column_stack([X, counts]), delimiter=",", header="a,b,c,y",
               comments="", fmt="%.10g")
    cfg = write_config(tmp_path / "run.toml", data, out=tmp_path / "out", epochs=2,
                       train='loss = "poisson"')
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    notes = [ln for ln in errors(err) if ln.startswith("devnet: note: ")]
    assert len(notes) == 1 and "'poisson'" in notes[0] and "inputs only" in notes[0]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["target_scaling"] is None


def test_train_help_describes_the_run_folder(capsys):
    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--resume", "--overwrite", "last.safetensors", "model.safetensors",
                   "standardized units", "Ctrl-C"):
        assert needle in text, needle
