"""Exact resume across processes, SIGKILL mid-epoch, and atomic saves under SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import devnet as dn

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

# One training run, shared by the parent (uninterrupted reference) and the child processes.
TRAIN = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import devnet as dn

    def run(data, epochs, checkpoint=None, resume=False, kill_at_step=None):
        d = np.load(data)
        model = dn.MLP([8, 16, 12, 3], activation="tanh", backend="cpu", seed=int(d["seed"]))
        sched = dn.optim.schedules.warmup_cosine(5e-3, 7, 90)
        callbacks = []
        if kill_at_step is not None:
            class Kill(dn.Callback):
                def on_batch_end(self, step, logs):
                    if step == kill_at_step:
                        os.kill(os.getpid(), signal.SIGKILL)
            callbacks.append(Kill())
        resume_from = checkpoint if resume and os.path.exists(checkpoint) else None
        dn.fit(model, d["X"], d["y"], loss="cross_entropy", optimizer="adamw", lr=sched,
               epochs=epochs, batch_size=16, validation_split=0.2, seed=int(d["seed"]),
               checkpoint=checkpoint, resume_from=resume_from, callbacks=callbacks,
               progress=False)
        return model

    if __name__ == "__main__":
        data, epochs, ck, resume, kill, out = sys.argv[1:]
        m = run(data, int(epochs), ck, resume == "1", None if kill == "-" else int(kill))
        np.save(out, m.params)
""")


@pytest.fixture
def job(tmp_path, rng):
    """Fresh random data saved for the children; returns (run_child, run_here, paths)."""
    X = rng.standard_normal((100, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    data = tmp_path / "data.npz"
    np.savez(data, X=X, y=y, seed=int(rng.integers(1 << 30)))
    script = tmp_path / "train_job.py"
    script.write_text(TRAIN)
    ns: dict = {}
    exec(compile(TRAIN, str(script), "exec"), ns)
    env = {**os.environ, "PYTHONHASHSEED": "0"}

    def child(epochs, ck, resume=False, kill=None):
        out = tmp_path / "out.npy"
        if out.exists():
            out.unlink()
        proc = subprocess.run(
            [sys.executable, str(script), str(data), str(epochs), str(ck), "1" if resume else "0",
             "-" if kill is None else str(kill), str(out)],
            env=env, capture_output=True, text=True, timeout=120)
        return proc, (np.load(out) if out.exists() else None)

    def here(epochs, ck=None):
        return ns["run"](str(data), epochs, None if ck is None else str(ck)).params

    return child, here, tmp_path


def test_resume_in_new_process_is_bit_identical(job):
    child, here, tmp = job
    ck = tmp / "ck.safetensors"
    proc, _ = child(3, ck)
    assert proc.returncode == 0, proc.stderr
    proc, resumed = child(5, ck, resume=True)
    assert proc.returncode == 0, proc.stderr
    assert dn.io.read_metadata(ck)["train_state"]["epoch"] == 5
    # the reference runs in a fresh process too, so both use the same code and thread setup
    proc, reference = child(5, tmp / "ref.safetensors")
    assert proc.returncode == 0, proc.stderr
    assert resumed.dtype == reference.dtype
    np.testing.assert_array_equal(resumed, reference)
    np.testing.assert_array_equal(here(5), reference)  # and in this process
    # and the continuation really trained: it differs from the 3-epoch state
    assert not np.array_equal(here(3), reference)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(job):
    child, here, tmp = job
    ck = tmp / "ck.safetensors"
    steps_per_epoch = 5  # 80 training samples / batch 16
    kill_step = 2 * steps_per_epoch + 3  # in the middle of epoch 2 (0-based)
    proc, out = child(4, ck, resume=True, kill=kill_step)
    assert proc.returncode == -signal.SIGKILL and out is None
    assert dn.io.read_metadata(ck)["train_state"]["epoch"] == 2  # last completed epoch
    proc, resumed = child(4, ck, resume=True)
    assert proc.returncode == 0, proc.stderr
    proc, reference = child(4, tmp / "ref.safetensors")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(resumed, reference)


SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    import devnet as dn
    from devnet.io import files as io

    path, mode = sys.argv[1], sys.argv[2]
    model = dn.MLP([512, 1024, 256], backend="cpu", seed=0)   # ~2 MB of parameters
    if mode != "loop":  # a fault injected at one point of the save: the process dies there
        import os, signal

        def die(*args):
            os.kill(os.getpid(), signal.SIGKILL)

        if mode == "kill-before-rename":
            io._replace = die
        elif mode == "kill-before-fsync":
            os.fsync = die
        elif mode == "kill-mid-write":
            real_fdopen = os.fdopen

            class HalfWriter:
                def __init__(self, f):
                    self.f = f
                def __enter__(self):
                    return self
                def __exit__(self, *exc):
                    return False
                def write(self, data):
                    self.f.write(data[:len(data) // 2])
                    self.f.flush()
                    die()

            os.fdopen = lambda fd, mode: HalfWriter(real_fdopen(fd, mode))
        model.params[...] = -1.0
        dn.save(model, path)
        sys.exit(3)  # not reached
    k = 0
    while True:
        k += 1
        model.params[...] = k
        dn.save(model, path)
        print(k, flush=True)
""")


@pytest.fixture
def saver(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    path = tmp_path / "m.safetensors"
    old = dn.MLP([512, 1024, 256], backend="cpu", seed=0)
    dn.save(old, path)
    return script, path, old


@pytest.mark.parametrize("mode", ["kill-mid-write", "kill-before-fsync", "kill-before-rename"])
def test_sigkill_inside_save_keeps_old_checkpoint(saver, mode):
    script, path, old = saver
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, str(script), str(path), mode],
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert path.read_bytes() == before
    strays = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(strays) == 1  # the dead saver's partial temp file; the target is untouched
    model, _ = dn.load(path, backend="cpu")
    np.testing.assert_array_equal(model.params, old.params)


def test_sigkill_while_saving_leaves_a_whole_checkpoint(saver, rng):
    script, path, old = saver
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(path), "loop"],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "1"  # at least one save completed
            time.sleep(float(rng.uniform(0.05, 0.4)))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        model, _ = dn.load(path, backend="cpu")  # never a broken file
        k = model.params[0]
        assert k >= 1 and np.all(model.params == k)  # one whole save, not a mix


@pytest.mark.parametrize("resumed_with, refused", [
    (dict(loss="huber"), "delta: checkpoint 0.5, fit 1.0"),
    (dict(loss=dn.losses.get("huber", delta=2.0)), "delta: checkpoint 0.5, fit 2.0"),
    (dict(loss="mse"), "trained with loss 'huber', but fit got loss 'mse'"),
])
def test_resume_refuses_another_loss_or_loss_parameter(tmp_path, rng, resumed_with, refused):
    X = rng.standard_normal((32, 3)).astype(np.float32)
    y = X[:, :1] * 3
    path = tmp_path / "ck.safetensors"
    dn.fit(dn.MLP([3, 1], backend="cpu"), X, y, loss=dn.losses.get("huber", delta=0.5),
           epochs=1, checkpoint=path, progress=False)
    with pytest.raises(dn.CheckpointError, match=refused):
        dn.fit(dn.MLP([3, 1], backend="cpu"), X, y, epochs=2, resume_from=path,
               progress=False, **resumed_with)
    # the checkpoint's own loss resumes
    dn.fit(dn.MLP([3, 1], backend="cpu"), X, y, loss=dn.losses.get("huber", delta=0.5),
           epochs=2, resume_from=path, progress=False)
