"""What users install: the wheel holds every module of the source tree and nothing else, its
command and extras are declared, and a bare checkout imports without an install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import devnet as dn

ROOT = Path(__file__).resolve().parents[2]
#: what the build reads (pyproject.toml's readme and license-files, setup.py's discovery)
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "devnet", "kernels")


def _tree_modules() -> set[str]:
    """Every module of devnet/ and kernels/ as the wheel names it (kernels/ is devnet/kernels/)."""
    names = set()
    for folder, prefix in (("devnet", "devnet/"), ("kernels", "devnet/kernels/")):
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                names.add(prefix + path.relative_to(ROOT / folder).as_posix())
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """make test's wheel (DEVNET_WHEEL), else one built here from a copy of the tree."""
    if os.environ.get("DEVNET_WHEEL"):
        return Path(os.environ["DEVNET_WHEEL"])
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    # the venv's setuptools, offline: pyproject needs >= 77 (PEP 639 license), checked here too
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(src)],
                   check=True, capture_output=True, timeout=300)
    (found,) = out.glob("devnet_mlp-*.whl")
    return found


def test_wheel_holds_every_module_of_the_tree_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n for n in names if n.endswith(".py")}
    assert _tree_modules() - modules == set(), "modules missing from the wheel"
    assert modules - _tree_modules() == set(), "modules in the wheel that the tree lacks"
    tops = {n.split("/")[0] for n in names}
    assert tops == {"devnet", f"{wheel.name.split('-')[0]}-{dn.__version__}.dist-info"}, tops


def test_wheel_declares_the_command_and_the_extras(wheel):
    with zipfile.ZipFile(wheel) as zf:
        info = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(info).decode()
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "devnet = devnet.cli:main" in entry_points
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines()
              if line.startswith("Provides-Extra:")}
    assert {"cuda12", "cuda13", "sklearn", "plot", "mpi", "test"} <= extras, extras
    assert f"Version: {dn.__version__}" in metadata


def test_tests_run_against_what_was_installed():
    """make test's wheel pass sets DEVNET_TEST_INSTALLED: devnet must come from site-packages."""
    if not os.environ.get("DEVNET_TEST_INSTALLED"):
        pytest.skip("the source-tree pass (make test's wheel pass checks the installed package)")
    where = Path(dn.__file__).resolve()
    assert where.is_relative_to(Path(sysconfig.get_paths()["purelib"]).resolve()), where
    assert not where.is_relative_to(ROOT / "devnet"), f"imported from the checkout: {where}"
    command = shutil.which("devnet", path=str(Path(sys.executable).parent))
    assert command, "the devnet command was not installed"
    out = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and dn.__version__ in out.stdout + out.stderr, out


def test_a_bare_checkout_imports_without_an_install(tmp_path):
    """make gpu-check runs from the source tree where setuptools cannot build the project:
    devnet finds kernels/ beside itself and imports it as devnet.kernels."""
    for name in ("devnet", "kernels"):
        shutil.copytree(ROOT / name, tmp_path / name)
    # -S with the dependencies on PYTHONPATH: no .pth runs, so no editable install is seen
    deps = os.pathsep.join(p for p in sys.path if p.endswith("site-packages"))
    code = ("import devnet, devnet.kernels.cpu as k, numpy as np; print(devnet.kernels.__file__);"
            "print(devnet.MLP([3, 4, 2], backend='cpu').predict(np.ones((2, 3), 'f4')).shape)")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=deps))
    assert out.returncode == 0, out.stderr
    kernels_file, shape = out.stdout.split()[:2]
    assert Path(kernels_file) == tmp_path / "kernels" / "__init__.py"
    assert shape == "(2,"
