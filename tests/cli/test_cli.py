"""The devnet command, run as a subprocess: exit codes, messages, files written, --help."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import devnet as dn
from devnet import cli

SUBCOMMANDS = ("info", "train", "eval", "predict", "bench", "profile")


def devnet(*args, cwd=None):
    """Run ``python -m devnet.cli ARGS``; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "devnet.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _toml(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


RUN = """
[data]
dataset = "{dataset}"
test_size = 0.25
[model]
hidden = [16]
[optimizer]
name = "adam"
lr = 0.01
[schedule]
name = "warmup_cosine"
warmup_steps = 5
[train]
epochs = 3
batch_size = 64
device = "cpu"
[output]
dir = "{out}"
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One digits run shared by the train / eval / predict tests."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = _toml(tmp / "run.toml", RUN.format(dataset="digits", out=tmp / "out"))
    proc = devnet("train", "--config", str(cfg))
    return tmp, proc


def test_info_reports_devices_and_versions():
    proc = devnet("info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert "cpu" in info["devices"]
    for key in ("devnet", "numpy", "numba", "numba-cuda", "cupy", "cuda_driver", "cuda"):
        assert key in info
    if info["devices"] == ["cpu"]:
        assert info["cuda"].startswith("unavailable: ")  # says why
    text = devnet("info")
    assert text.returncode == 0 and "numpy" in text.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_has_an_example(command):
    proc = devnet(command, "--help")
    if command == "bench" and importlib.util.find_spec("benchmarks") is None:
        # an installed devnet outside a checkout (make test's wheel pass): the benchmarks are
        # not shipped, and the command says where to run it
        assert proc.returncode == 1 and "source checkout" in proc.stderr, proc.stderr
        return
    assert proc.returncode == 0
    assert "example:" in proc.stdout and f"devnet {command}" in proc.stdout


def test_train_writes_checkpoint_history_and_plot(trained):
    tmp, proc = trained
    assert proc.returncode == 0, proc.stderr
    out = tmp / "out"
    assert "trained 3 epochs" in proc.stdout and "val_accuracy" in proc.stdout
    for name in ("model.safetensors", "history.json", "history.csv", "run.json"):
        assert (out / name).is_file(), name
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["history"]["loss"]) == 3 and hist["history"]["loss"][-1] < 2.3
    lines = (out / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,loss") and len(lines) == 4
    pytest.importorskip("matplotlib")
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_and_predict(trained, tmp_path):
    tmp, proc = trained
    assert proc.returncode == 0, proc.stderr
    ckpt = str(tmp / "out" / "model.safetensors")
    ev = devnet("eval", "--checkpoint", ckpt, "--json")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert set(result) >= {"loss", "accuracy"} and 0.5 < result["accuracy"] <= 1
    npy = tmp_path / "p.npy"
    pr = devnet("predict", "--checkpoint", ckpt, "--data", "digits", "--out", str(npy))
    assert pr.returncode == 0, pr.stderr
    labels = np.load(npy)
    assert labels.shape == (1797,) and labels.dtype.kind == "i" and labels.max() <= 9
    csv_out = tmp_path / "p.csv"
    pr = devnet("predict", "--checkpoint", ckpt, "--proba", "--split", "test", "--out",
                str(csv_out))
    assert pr.returncode == 0, pr.stderr
    assert csv_out.read_text().splitlines()[0] == ",".join(map(str, range(10)))  # the labels
    proba = np.loadtxt(csv_out, delimiter=",", skiprows=1)
    assert proba.shape == (round(1797 * 0.25), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)


def test_train_on_csv_regression(tmp_path):
    rng = np.random.default_rng()
    X = rng.normal(size=(200, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=200)
    data = tmp_path / "d.csv"
    np.savetxt(data, np.column_stack([X, y]), delimiter=",", header="a,b,c,target",
               comments="")
    cfg = _toml(tmp_path / "r.toml",
                RUN.format(dataset=data, out=tmp_path / "o").replace("epochs = 3", "epochs = 20"))
    proc = devnet("train", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    hist = json.loads((tmp_path / "o" / "history.json").read_text())["history"]
    assert "val_r2" in hist and hist["loss"][-1] < hist["loss"][0]


@pytest.mark.parametrize("body, needle", [
    ("[train]\nepoch = 3\n", "unknown key train.epoch; valid keys in [train]: loss, epochs"),
    ("[optimizer]\nname = \"adm\"\n", "optimizer.name: unknown optimizer 'adm'; valid "
                                      "optimizers: adam, adamw, rmsprop, sgd"),
    ("[optimizer]\nname = \"sgd\"\nbetas = [0.9, 0.99]\n", "unknown key optimizer.betas"),
    ("[model]\nactivation = \"relux\"\n", "model.activation"),
    ("[train]\nepochs = 0\n", "train.epochs must be a positive integer (>= 1), got 0"),
    ("[train]\ndevice = \"tpu\"\n", "valid devices: auto, cpu, cuda"),
    ("[data]\ndataset = \"mnist\"\n", "valid datasets: breast_cancer, diabetes, digits"),
    ("[schedule]\nname = \"linear\"\n", "valid choices: constant, step"),
    ("[extra]\n", "unknown section [extra]"),
    ("not toml = = 1\n", "invalid TOML"),
])
def test_bad_config_is_a_usage_error_naming_it(tmp_path, body, needle):
    cfg = _toml(tmp_path / "bad.toml", body)
    proc = devnet("train", "--config", str(cfg))
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_exit_codes_and_debug(tmp_path):
    assert devnet("train").returncode == 2  # --config is required
    assert devnet("frobnicate").returncode == 2
    assert devnet("train", "--config", str(tmp_path / "missing.toml")).returncode == 2
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    proc = devnet("eval", "--checkpoint", str(junk), "--data", "digits")
    assert proc.returncode == 1
    assert proc.stderr.startswith("devnet: error: ") and "Traceback" not in proc.stderr
    proc = devnet("--debug", "eval", "--checkpoint", str(junk), "--data", "digits")
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_cuda_request_without_gpu_is_a_runtime_error(tmp_path):
    from devnet.backend import cuda

    if cuda.unavailable_reason() is None:
        pytest.skip("a GPU is present")
    cfg = _toml(tmp_path / "c.toml", RUN.format(dataset="xor", out=tmp_path / "o")
                .replace('device = "cpu"', 'device = "cuda"'))
    proc = devnet("train", "--config", str(cfg))
    assert proc.returncode == 1 and "cuda:0 is unavailable" in proc.stderr


def test_main_returns_codes_in_process(capsys):
    from devnet.cli import main

    assert main(["info"]) == 0
    assert "devices" in capsys.readouterr().out
    assert main(["train", "--config", "/nonexistent/run.toml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def run_cli(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``devnet ARGV`` run in this process."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_version_flag(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip().startswith(f"devnet {dn.__version__}")


def test_bench_and_profile_take_their_own_options(monkeypatch, capsys):
    calls = []

    def fake_entry(module, what):
        return lambda argv: calls.append((module, argv)) or 3

    monkeypatch.setattr(cli, "_entry_point", fake_entry)
    assert cli.main(["bench", "step", "--sizes", "S", "--quick"]) == 3  # their exit code
    assert cli.main(["--debug", "profile", "--sizes", "8-4-2", "--batch-size", "4"]) == 3
    assert cli.main(["bench", "--", "--quick", "--no-torch"]) == 3  # the old spelling
    assert calls == [("benchmarks", ["step", "--sizes", "S", "--quick"]),
                     ("devnet.profile", ["--sizes", "8-4-2", "--batch-size", "4"]),
                     ("benchmarks", ["--quick", "--no-torch"])]


def test_profile_runs_with_options_directly(capsys):
    code = cli.main(["profile", "--sizes", "8-6-3", "--batch-size", "4", "--device", "cpu",
                     "--repeats", "2"])
    assert code == 0
    assert "python/glue" in capsys.readouterr().out


def test_history_plot_colours_ticks_and_labels():
    pytest.importorskip("matplotlib")
    hist = dn.History()
    hist.epoch = list(range(7))
    hist.history = {"loss": list(np.linspace(2, 1, 7)), "val_loss": list(np.linspace(2.1, 1.2, 7)),
                    "accuracy": list(np.linspace(0.3, 0.9, 7)),
                    "val_accuracy": list(np.linspace(0.2, 0.8, 7))}
    fig = cli.history_figure(hist)
    try:
        loss_ax, metric_ax = fig.axes
        colours = [[line.get_color() for line in ax.get_lines()] for ax in fig.axes]
        assert colours[0] == colours[1] and len(set(colours[0])) == 2
        for ax in fig.axes:
            assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
            ticks = [t for t in ax.get_xticks() if 1 <= t <= 7]
            assert ticks and all(float(t).is_integer() for t in ticks)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
