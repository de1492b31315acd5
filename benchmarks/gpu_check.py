"""``make gpu-check``: verify devnet on a real NVIDIA GPU with one command.

Runs, each in its own process so one failure does not hide the rest:

1. the ``gpu``-marked tests (``pytest -m gpu``: the CUDA backend on the device);
2. the GPU benchmark suites: kernels, fusion, step (vs PyTorch CUDA when installed), launch;

and writes ONE JSON, ``<out>/gpu-check-<device name>-<date>.json``, with the environment, the
test counts (and failures by name) and each suite's results. Exits 1 when a test failed or a
suite crashed, 2 when there is no usable GPU (nothing is written then: the reason is printed).

    python -m benchmarks.gpu_check --out benchmarks/results [--quick]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

SUITES = ("kernels", "fusion", "step", "launch")
ROOT = Path(__file__).resolve().parents[1]


def _environment() -> dict:
    from devnet.backend import cuda as cuda_backend

    env = {"python": sys.version.split()[0], "reason": cuda_backend.unavailable_reason(0)}
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
    return env


def _run_tests(timeout_s: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", f"--junitxml={xml}",
               "-p", "no:cacheprovider"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        out = {"command": " ".join(cmd[1:]), "returncode": proc.returncode,
               "tail": proc.stdout[-3000:]}
        if xml.exists():
            suite = ET.parse(xml).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            out.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors",
                                                          "skipped")})
            out["failed"] = [f"{case.get('classname')}::{case.get('name')}"
                             for case in suite.iter("testcase")
                             if case.find("failure") is not None
                             or case.find("error") is not None]
    return out


def _run_suite(name: str, quick: bool, timeout_s: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.json"
        cmd = [sys.executable, "-m", "benchmarks", name, "--device", "cuda", "--json", str(path),
               "--no-plots", "-q"] + (["--quick"] if quick else [])
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not path.exists():
            return {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-3000:]}
        results = json.loads(path.read_text())
        return results.get(name, results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--quick", action="store_true", help="tiny benchmark sizes")
    p.add_argument("--suites", default=",".join(SUITES))
    p.add_argument("--timeout", type=int, default=1800, help="seconds per step")
    args = p.parse_args(argv)

    env = _environment()
    if env["reason"] is not None:
        print(f"gpu-check: no usable GPU here: {env['reason']}", file=sys.stderr)
        return 2
    now = _dt.datetime.now(_dt.timezone.utc)
    report = {"schema": "devnet-gpu-check/1", "time_utc": now.isoformat(timespec="seconds"),
              "environment": env}
    print(f"gpu-check on {env['device_name']}: gpu-marked tests", file=sys.stderr)
    report["tests"] = _run_tests(args.timeout)
    report["suites"] = {}
    for name in args.suites.split(","):
        print(f"gpu-check: {name} suite", file=sys.stderr)
        report["suites"][name] = _run_suite(name, args.quick, args.timeout)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device_name"]).strip("-")
    path = args.out / f"gpu-check-{slug}-{now:%Y-%m-%d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    bad = report["tests"].get("failures", 0) + report["tests"].get("errors", 0) + \
        sum("error" in s for s in report["suites"].values())
    print(f"wrote {path}" + (f" ({bad} problems)" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
