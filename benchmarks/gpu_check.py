"""``make gpu-check``: verify devnet on a real NVIDIA GPU with one command.

Runs, each in its own process so one failure does not hide the rest:

1. the ``gpu``-marked tests (``pytest -m gpu``: the CUDA backend on the device);
2. the GPU benchmark suites: kernels, fusion, step (vs PyTorch CUDA when installed), launch;

and writes ONE JSON, ``<out>/gpu-check-<device name>-<date>.json``, with the environment, the
test counts (and failures by name), each suite's results and ``problems``: one line for each
thing that went wrong. The JSON is rewritten after every step, so a step that times out or an
interrupted check keeps what finished (``finished`` says whether every step ran).

A problem is: a failed or erroring test; pytest exiting non-zero for any reason (no pytest,
a conftest that does not import, collection errors, nothing collected) or writing no report;
every gpu-marked test skipped; a suite that crashed or wrote no results; a step past
``--timeout``; and a GPU that CuPy sees but devnet's CUDA backend cannot use (numba-cuda
without its NVVM compiler, for instance), which is recorded and no step runs.

Exits 0 when there is no problem, 1 when there is one, 2 when there is no GPU at all (nothing
is written then: the reason is printed).

    python -m benchmarks.gpu_check --out benchmarks/results [--quick]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

SUITES = ("kernels", "fusion", "step", "launch")
ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "devnet-gpu-check/2"

# pytest's non-zero exit codes (pytest.ExitCode) as problems: "no tests collected" is one too,
# a GPU check that ran nothing verified nothing; 1 without a failed test means pytest never ran
PYTEST_EXIT = {1: "yet no test failed: did pytest start?", 2: "interrupted",
               3: "internal error", 4: "usage error, or a conftest / plugin that does not import",
               5: "no tests collected"}


def _environment() -> dict:
    from devnet.backend import cuda as cuda_backend

    env = {"python": sys.version.split()[0], "reason": cuda_backend.unavailable_reason(0),
           "cuda_devices": cuda_backend.device_count()}
    for module in ("cupy", "numba", "numba_cuda", "torch"):
        try:
            env[module] = __import__(module).__version__
        except Exception as exc:  # not installed, or broken
            env[module] = f"unavailable ({type(exc).__name__})"
    if env["reason"] is None:
        import devnet as dn

        be = dn.get_backend("cuda")
        env["device"] = be.device
        env["device_name"] = be.device_name
        env["driver"] = be.xp.cuda.runtime.driverGetVersion()
        env["numba_cache_dir"] = os.environ.get("NUMBA_CACHE_DIR", "(numba's default)")
    elif env["cuda_devices"]:  # a GPU devnet cannot use: name it from CuPy alone
        try:
            name = cuda_backend.cupy.cuda.runtime.getDeviceProperties(0)["name"]
            env["device_name"] = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:
            env["device_name"] = "cuda:0"
    return env


def _run(cmd: list[str], timeout_s: float) -> dict:
    """Run ``cmd`` from ROOT; past ``timeout_s`` kill it and everything it started.

    Returns ``returncode`` (None when it timed out), ``timed_out``, ``stdout``, ``stderr``.
    The child gets its own process group so that a timeout also ends what it spawned (MPI
    ranks, compile workers), which would otherwise hold the GPU during the next step.
    """
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return {"returncode": proc.returncode, "timed_out": False, "stdout": out,
                "stderr": err}
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a grandchild left its own group with the pipes
            out, err = "", ""
        return {"returncode": None, "timed_out": True, "stdout": out or "",
                "stderr": err or ""}
    except BaseException:  # Ctrl-C reaches only this process: the child has its own session
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
    proc.wait()


def _run_tests(timeout_s: float) -> dict:
    """The gpu-marked tests; ``problems`` lists what went wrong (empty when all is well)."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        # one module that fails to import must not hide the GPU tests of the others
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu",
               "--continue-on-collection-errors", f"--junitxml={xml}", "-p", "no:cacheprovider"]
        run = _run(cmd, timeout_s)
        out = {"command": " ".join(cmd[1:]), "returncode": run["returncode"],
               "tail": run["stdout"][-3000:], "stderr": run["stderr"][-3000:]}
        if xml.exists():
            try:
                out.update(_junit(xml))
            except (ET.ParseError, ValueError) as exc:
                out["junit_error"] = str(exc)
    problems, failed = [], out.get("failed", [])
    if run["timed_out"]:
        problems.append(f"gpu-marked tests: timed out after {timeout_s:g} s")
    if failed:
        problems.append(f"gpu-marked tests: {len(failed)} failed or errored: "
                        + ", ".join(failed[:10]) + (", ..." if len(failed) > 10 else ""))
    rc, reported = run["returncode"], "tests" in out
    if rc is not None and not (rc == 0 and reported or rc == 1 and failed):
        last = run["stderr"].strip().splitlines()[-1:] or run["stdout"].strip().splitlines()[-1:]
        what = f"pytest exited {rc}" + (f" ({PYTEST_EXIT.get(rc, 'killed or crashed')})"
                                        if rc else "")
        problems.append(f"gpu-marked tests: {what}" + ("" if reported else "; no JUnit report")
                        + (f": {last[0][:300]}" if last else ""))
    if rc == 0 and reported and out["tests"] == out["skipped"]:
        problems.append("gpu-marked tests: every one skipped, nothing ran on the GPU")
    out["problems"] = problems
    return out


def _junit(path: Path) -> dict:
    """Counts and failed test names from pytest's JUnit XML."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        raise ValueError("no <testsuite> element")
    out = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    # a module that does not import is a case with no classname
    out["failed"] = ["::".join(filter(None, (case.get("classname"), case.get("name"))))
                     for case in suite.iter("testcase")
                     if case.find("failure") is not None or case.find("error") is not None]
    return out


def _run_suite(name: str, quick: bool, timeout_s: float) -> dict:
    """One benchmark suite's results, or ``{"error": ..., "stderr": ...}``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.json"
        cmd = [sys.executable, "-m", "benchmarks", name, "--device", "cuda", "--json", str(path),
               "--no-plots", "-q"] + (["--quick"] if quick else [])
        run = _run(cmd, timeout_s)
        if run["timed_out"]:
            return {"error": f"timed out after {timeout_s:g} s", "stderr": run["stderr"][-3000:]}
        if run["returncode"] != 0 or not path.exists():
            what = (f"exit {run['returncode']}" if run["returncode"]
                    else "exit 0 but no results written")
            return {"error": what, "stderr": run["stderr"][-3000:]}
        try:
            results = json.loads(path.read_text())
        except ValueError as exc:
            return {"error": f"unreadable results ({exc})", "stderr": run["stderr"][-3000:]}
        return results.get(name, results) if isinstance(results, dict) else results


def _problems(report: dict) -> list[str]:
    """One line for each thing that went wrong, from what ``report`` holds."""
    env, problems = report["environment"], []
    if env["reason"] is not None:
        problems.append(f"devnet cannot use {env['device_name']}: {env['reason']}")
    problems += report.get("tests", {}).get("problems", [])
    problems += [f"{name} suite: {s['error']}" for name, s in report.get("suites", {}).items()
                 if isinstance(s, dict) and "error" in s]
    if report.get("interrupted"):
        problems.append("interrupted before every step ran")
    return problems


def _write(path: Path, report: dict) -> None:
    report["problems"] = _problems(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--quick", action="store_true", help="tiny benchmark sizes")
    p.add_argument("--suites", default=",".join(SUITES))
    p.add_argument("--timeout", type=float, default=1800,
                   help="seconds per step; a step past it is killed and counted as a problem")
    args = p.parse_args(argv)

    try:
        env = _environment()
    except ImportError as exc:  # devnet itself: neither installed nor importable from here
        print(f"gpu-check: devnet does not import ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return 1
    if env["reason"] is not None and not env["cuda_devices"]:
        print(f"gpu-check: no usable GPU here: {env['reason']}", file=sys.stderr)
        return 2
    now = _dt.datetime.now(_dt.timezone.utc)
    report = {"schema": SCHEMA, "time_utc": now.isoformat(timespec="seconds"),
              "environment": env, "finished": False}
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device_name"]).strip("-")
    path = args.out / f"gpu-check-{slug}-{now:%Y-%m-%d}.json"
    try:
        _check(report, args, path)
    except KeyboardInterrupt:
        report["interrupted"] = True
        _write(path, report)
        print(f"gpu-check: interrupted; wrote what finished to {path}", file=sys.stderr)
        return 130
    problems = report["problems"]
    for line in problems:
        print(f"gpu-check: problem: {line}", file=sys.stderr)
    n = len(problems)
    print(f"wrote {path}" + (f" ({n} problem{'s' * (n > 1)})" if n else ""))
    return 1 if problems else 0


def _check(report: dict, args: argparse.Namespace, path: Path) -> None:
    """Run every step into ``report``, rewriting ``path`` after each."""
    env = report["environment"]
    if env["reason"] is not None:  # CuPy sees a GPU, devnet's CUDA backend cannot use it
        print(f"gpu-check: {env['device_name']} is here but devnet cannot use it: "
              f"{env['reason']}", file=sys.stderr)
        report["finished"] = True
        _write(path, report)
        return
    print(f"gpu-check on {env['device_name']}: gpu-marked tests", file=sys.stderr)
    report["tests"] = _run_tests(args.timeout)
    report["suites"] = {}
    _write(path, report)
    for name in filter(None, args.suites.split(",")):
        print(f"gpu-check: {name} suite", file=sys.stderr)
        report["suites"][name] = _run_suite(name, args.quick, args.timeout)
        _write(path, report)
    report["finished"] = True
    _write(path, report)


if __name__ == "__main__":
    sys.exit(main())
