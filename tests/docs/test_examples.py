"""The examples run to the end: results saved, and no crash where matplotlib is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DEEP = Path(__file__).resolve().parents[2] / "examples" / "deep.py"

# runs a script as ``python SCRIPT ARGS...`` would, with matplotlib unimportable when asked
_RUN = """
import runpy, sys
hide, sys.argv = sys.argv[1], sys.argv[2:]
if hide == "hide":
    sys.modules["matplotlib"] = None
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _deep(tmp_path, *args, hide_matplotlib: bool) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", _RUN, "hide" if hide_matplotlib else "keep", str(DEEP), *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def _check_results(path: Path) -> None:
    record = json.loads(path.read_text())
    assert set(record["models"]) == {"plain", "residual + LayerNorm"}
    for model in record["models"].values():
        assert 0 <= model["test_accuracy"] <= 1 and model["epochs"] == 1
        # one norm per layer: 32 hidden layers and the output layer
        assert len(model["grad_norm"]) == len(model["update_ratio"]) == 33
        assert all(g >= 0 for g in model["grad_norm"])


def test_deep_without_matplotlib_saves_results_and_exits_cleanly(tmp_path):
    # it crashed with a traceback at the plot, after the whole training, and saved nothing
    proc = _deep(tmp_path, "--epochs", "1", "--device", "cpu", hide_matplotlib=True)
    assert proc.returncode == 0, proc.stderr
    _check_results(tmp_path / "gradient_flow.json")
    assert not (tmp_path / "gradient_flow.png").exists()
    skipped = [line for line in proc.stdout.splitlines() if "skipped" in line]
    assert len(skipped) == 1
    assert "matplotlib is not installed" in skipped[0] and "pip install '.[plot]'" in skipped[0]
    assert "Traceback" not in proc.stderr


def test_deep_with_matplotlib_writes_the_plot_too(tmp_path):
    pytest.importorskip("matplotlib")
    proc = _deep(tmp_path, "--epochs", "1", "--device", "cpu", "--plot", "flow.png",
                 "--results", "flow.json", hide_matplotlib=False)
    assert proc.returncode == 0, proc.stderr
    _check_results(tmp_path / "flow.json")
    assert (tmp_path / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "skipped" not in proc.stdout


@pytest.mark.parametrize("flag", ["--plot", "--results"])
def test_deep_refuses_an_unwritable_output_before_training(tmp_path, flag):
    proc = _deep(tmp_path, "--epochs", "1", "--device", "cpu", flag, "no/such/dir/out",
                 hide_matplotlib=False)
    assert proc.returncode == 2
    assert f"{flag}: cannot write" in proc.stderr and "does not exist" in proc.stderr
    assert "test accuracy" not in proc.stdout  # nothing was trained
