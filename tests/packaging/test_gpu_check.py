"""``make gpu-check`` reports what happened: every way its steps can go wrong is a problem in
its JSON and its exit code, a step past the timeout keeps what finished, and the gpu-marked
tests collect where optional packages are missing.

No GPU needed: gpu_check runs in a small stand-in checkout (one gpu-marked test, a benchmarks
package whose suites answer at once) with the environment probe stubbed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a top-level folder of the repository
    sys.path.insert(0, str(ROOT))

from benchmarks import gpu_check  # noqa: E402

GPU_ENV = {"python": "3", "reason": None, "cuda_devices": 1, "device_name": "Test GPU 80GB"}

# the stand-in checkout's ``python -m benchmarks <suite> ... --json PATH``: "hang" never ends
# and leaves a grandchild behind (its pid in hang.pid), every other suite writes its results
SUITES_MAIN = """
import json, subprocess, sys, time
name, path = sys.argv[1], sys.argv[sys.argv.index("--json") + 1]
if name == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open("hang.pid", "w").write(str(child.pid))
    time.sleep(600)
json.dump({name: [{"suite": name}]}, open(path, "w"))
"""

GPU_TEST = """
import pytest

@pytest.mark.gpu
def test_runs_on_the_gpu():
    pass
"""


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A stand-in source tree for gpu_check to run in, and a GPU that the probe reports."""
    root = tmp_path / "checkout"
    (root / "tests").mkdir(parents=True)
    (root / "benchmarks").mkdir()
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    (root / "tests" / "test_on_gpu.py").write_text(GPU_TEST)
    (root / "benchmarks" / "__init__.py").write_text("")
    (root / "benchmarks" / "__main__.py").write_text(SUITES_MAIN)
    monkeypatch.setattr(gpu_check, "ROOT", root)
    monkeypatch.setattr(gpu_check, "_environment", lambda: dict(GPU_ENV))
    return root


def _check(out: Path, *args: str) -> tuple[int, dict]:
    """Run gpu_check into ``out``; its exit code and the one JSON it wrote."""
    rc = gpu_check.main(["--out", str(out), *args])
    written = list(out.glob("gpu-check-*.json"))
    assert len(written) == 1, written
    return rc, json.loads(written[0].read_text())


def test_a_clean_run_reports_no_problem(checkout, tmp_path):
    rc, report = _check(tmp_path / "out", "--suites", "kernels,fusion", "--timeout", "120")
    assert rc == 0, report
    assert report["problems"] == [] and report["finished"] is True
    assert report["tests"]["tests"] == 1 and report["tests"]["returncode"] == 0
    assert report["suites"] == {"kernels": [{"suite": "kernels"}], "fusion": [{"suite": "fusion"}]}


def _python_without_pytest(tmp_path: Path) -> str:
    env = tmp_path / "bare-venv"
    venv.create(env, with_pip=False, symlinks=os.name != "nt")
    python = env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    probe = subprocess.run([str(python), "-c", "import pytest"], capture_output=True)
    assert probe.returncode != 0, "the bare venv sees pytest"
    return str(python)


SKIP_EVERY_TEST = """
import pytest

def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.skip(reason="no GPU"))
"""


def _no_pytest(root, tmp, monkeypatch):
    monkeypatch.setattr(sys, "executable", _python_without_pytest(tmp))


def _conftest_that_raises(root, tmp, monkeypatch):
    (root / "conftest.py").write_text('raise ImportError("broken")\n')


def _no_gpu_test(root, tmp, monkeypatch):
    (root / "tests" / "test_on_gpu.py").unlink()


def _every_test_skipped(root, tmp, monkeypatch):
    (root / "conftest.py").write_text(SKIP_EVERY_TEST)


# what the machine has wrong: (how the stand-in gets it, words the problem must hold)
BROKEN_PYTEST = {
    "no pytest": (_no_pytest, "exited 1"),
    "a conftest that does not import": (_conftest_that_raises, "exited 4"),
    "no gpu-marked test": (_no_gpu_test, "exited 5 (no tests collected)"),
    "every gpu-marked test skipped": (_every_test_skipped, "every one skipped"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_PYTEST))
def test_a_pytest_run_that_tested_nothing_is_a_problem(broken, checkout, tmp_path, monkeypatch):
    """Its exit code counts, and so does a missing JUnit report: none of these is 0 problems."""
    setup, words = BROKEN_PYTEST[broken]
    setup(checkout, tmp_path, monkeypatch)
    rc, report = _check(tmp_path / "out", "--suites", "kernels", "--timeout", "120")
    assert rc == 1, report
    assert any(words in p for p in report["problems"]), report["problems"]
    assert all(p.startswith("gpu-marked tests") for p in report["problems"]), report["problems"]
    assert report["suites"] == {"kernels": [{"suite": "kernels"}]}  # the suites still ran


def test_a_module_that_does_not_import_hides_no_other_gpu_test(checkout, tmp_path):
    (checkout / "tests" / "test_broken.py").write_text("import not_a_module_anywhere\n")
    rc, report = _check(tmp_path / "out", "--suites", "", "--timeout", "120")
    assert rc == 1
    tests = report["tests"]
    assert tests["errors"] == 1 and tests["failures"] == 0 and tests["tests"] == 2, tests
    assert any("test_broken" in p for p in report["problems"]), report["problems"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # killed but not yet reaped by init: a zombie
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
@pytest.mark.parametrize("hangs", ("tests", "suite"))
def test_a_step_past_the_timeout_keeps_what_finished(hangs, checkout, tmp_path):
    """The timeout is a problem in the JSON, the other steps' results are all there, and what
    the hung step started is killed with it (it would hold the GPU)."""
    if hangs == "tests":
        (checkout / "tests" / "test_on_gpu.py").write_text(
            GPU_TEST + "\n\n@pytest.mark.gpu\ndef test_hangs():\n"
                       "    __import__('time').sleep(600)\n")
    timeout = 10  # long enough for the stand-in's pytest to start on a loaded machine
    suites = "kernels,hang,fusion" if hangs == "suite" else "kernels,fusion"
    start = time.monotonic()
    rc, report = _check(tmp_path / "out", "--suites", suites, "--timeout", str(timeout))
    assert time.monotonic() - start < 6 * timeout
    assert rc == 1 and report["finished"] is True
    assert report["suites"]["kernels"] == [{"suite": "kernels"}]
    assert report["suites"]["fusion"] == [{"suite": "fusion"}]
    if hangs == "suite":
        assert report["tests"]["tests"] == 1 and report["tests"]["problems"] == []
        assert report["problems"] == [f"hang suite: timed out after {timeout} s"]
        pid = int((checkout / "hang.pid").read_text())
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the hung suite's child outlived the timeout"
    else:
        assert report["tests"]["returncode"] is None
        assert report["problems"] == [f"gpu-marked tests: timed out after {timeout} s"]


def test_a_gpu_devnet_cannot_use_is_a_problem_not_no_gpu(tmp_path, monkeypatch, capsys):
    """numba-cuda without its NVVM compiler: CuPy sees the GPU, no kernel compiles. That is a
    failed check with a JSON saying why, not "no usable GPU here" (exit 2, nothing written)."""
    from devnet.backend import cuda as cuda_backend

    reason = ("numba-cuda cannot compile a kernel for cuda:0 (NvvmSupportError: "
              "libNVVM cannot be found)")
    runtime = type("runtime", (), {"getDeviceProperties": staticmethod(
        lambda i: {"name": b"NVIDIA H100 80GB HBM3"})})
    fake_cupy = type("cupy", (), {"cuda": type("cuda", (), {"runtime": runtime})})
    monkeypatch.setattr(cuda_backend, "unavailable_reason", lambda index=0: reason)
    monkeypatch.setattr(cuda_backend, "device_count", lambda: 1)
    monkeypatch.setattr(cuda_backend, "cupy", fake_cupy)
    rc, report = _check(tmp_path / "out")
    assert rc == 1
    assert report["problems"] == [f"devnet cannot use NVIDIA H100 80GB HBM3: {reason}"]
    assert "tests" not in report and "suites" not in report  # nothing could run
    err = capsys.readouterr().err
    assert "NVVM" in err and "no usable GPU" not in err


def test_no_gpu_at_all_writes_nothing_and_exits_2(tmp_path, capsys):
    from devnet.backend import cuda as cuda_backend

    if cuda_backend.device_count():
        pytest.skip("this machine has a GPU")
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    assert "no usable GPU here" in capsys.readouterr().err


# Hides optional packages as if they were not installed: ``import`` raises
# ModuleNotFoundError and ``importlib.util.find_spec`` returns None.
HIDE = """
import sys
from importlib.machinery import PathFinder

HIDDEN = {hidden!r}


class _PathFinderWithout(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [_PathFinderWithout if f is PathFinder else f for f in sys.meta_path]
"""
OPTIONAL = ("hypothesis", "scipy", "sklearn", "torch", "jax", "jaxlib", "matplotlib", "mpi4py",
            "threadpoolctl")


def test_gpu_tests_collect_without_the_optional_packages(tmp_path):
    """One missing optional package must not stop ``pytest -m gpu`` (collection errors
    interrupt the whole run): only the tests that need it skip."""
    (tmp_path / "sitecustomize.py").write_text(HIDE.format(hidden=set(OPTIONAL)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    env.pop("DEVNET_CUDA_SIMULATOR", None)
    # pytest would load the hidden packages' own plugins (hypothesis has one) and mark their
    # modules for assertion rewriting, whose import hook bypasses the hiding
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs", "-m", "gpu",
           "-p", "no:cacheprovider", "tests"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert "No module named 'sklearn'" in out, out[-3000:]  # the packages were hidden
    assert proc.returncode == 0 and "during collection" not in out, out[-5000:]
