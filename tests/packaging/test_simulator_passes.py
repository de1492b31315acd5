"""make test-source runs the simulator tests in passes chosen by markers, never by file lists:
every ``cudasim`` test is selected by exactly one simulator pass (``kernelsim`` ones by the
kernels-only pass, the others by the whole-backend pass) and no other test is, so a new
simulator test runs without joining any list."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# a test of each marker combination, and the ids pytest gives them
SAMPLE = """
import pytest

def test_plain(): pass

@pytest.mark.cudasim
def test_backend(): pass

@pytest.mark.cudasim
@pytest.mark.kernelsim
def test_kernels(): pass
"""


def _recipe(target: str) -> list[str]:
    """The command lines of a Makefile target's recipe (continuations joined)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", text, re.M)
    assert match, f"the Makefile has no recipe for {target}"
    return [line.strip() for line in match.group(1).splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _passes() -> list[tuple[dict, str, list[str]]]:
    """(environment, marker expression, positional arguments) of each pytest run of
    test-source."""
    runs = []
    for line in _recipe("test-source"):
        words = shlex.split(line)
        if "pytest" not in words:
            continue
        env = dict(w.split("=", 1) for w in words if re.fullmatch(r"[A-Z_]+=\S*", w))
        after = words[words.index("pytest") + 1:]
        expr = after[after.index("-m") + 1] if "-m" in after else ""
        args = [w for i, w in enumerate(after) if not w.startswith("-")
                and not (i and after[i - 1] == "-m")]
        runs.append((env, expr, args))
    return runs


def _selected(tmp_path: Path, expr: str) -> set[str]:
    """The SAMPLE tests pytest selects with ``-m expr`` (pytest's own expression rules)."""
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    cudasim\n    kernelsim\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "-m", expr, str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    return set(re.findall(r"::(test_\w+)", out.stdout))


def test_every_simulator_test_runs_in_exactly_one_pass(tmp_path):
    runs = _passes()
    assert len(runs) == 3, runs
    for _env, _expr, args in runs:
        assert not args, f"a pass names files or folders ({args}): a test outside them " \
                         "would never run"
    (plain_env, plain_expr, _), *sims = runs
    assert not plain_env and _selected(tmp_path, plain_expr) == {"test_plain"}
    chosen = {}
    for env, expr, _ in sims:
        for name in _selected(tmp_path, expr):
            assert name not in chosen, f"{name} runs in two simulator passes"
            chosen[name] = env
    assert set(chosen) == {"test_backend", "test_kernels"}, chosen
    assert chosen["test_kernels"] == {"NUMBA_ENABLE_CUDASIM": "1"}
    assert chosen["test_backend"] == {"DEVNET_CUDA_SIMULATOR": "1"}


def test_kernelsim_alone_is_refused(tmp_path):
    """kernelsim without cudasim would land in the plain pass and be skipped there."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_sample.py").write_text(SAMPLE + "\n@pytest.mark.kernelsim\n"
                                             "def test_stray(): pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    cudasim\n    kernelsim\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode != 0
    assert "test_stray: marked kernelsim but not cudasim" in out.stdout + out.stderr
