"""Static checks of the Dockerfiles (no Docker engine here): pinned base, non-root user,
devnet installed, `devnet` as entry point, `devnet info` as health check."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

# keys name the image; not "gpu", which conftest treats as the GPU-test marker
DOCKER = Path(__file__).resolve().parents[1] / "docker"
FILES = {"cuda": DOCKER / "Dockerfile.gpu", "cpu": DOCKER / "Dockerfile.cpu"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _one(instrs, word):
    found = [args for w, args in instrs if w == word]
    assert found, f"no {word} instruction"
    return found


@pytest.mark.parametrize("kind", FILES)
def test_base_image_is_pinned(kind):
    base = _one(instructions(FILES[kind]), "FROM")[0]
    image, _, tag = base.partition(":")
    assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), base
    if kind == "cuda":
        assert image == "nvidia/cuda" and tag.startswith("12.") and "runtime" in tag


@pytest.mark.parametrize("kind", FILES)
def test_runs_as_non_root_user(kind):
    instrs = instructions(FILES[kind])
    user = _one(instrs, "USER")[-1]
    assert user not in ("root", "0") and not user.startswith("0:")
    # the last USER comes after every RUN that installs things
    last_user = max(i for i, (w, _) in enumerate(instrs) if w == "USER")
    last_install = max(i for i, (w, a) in enumerate(instrs) if w == "RUN" and "install" in a)
    assert last_install < last_user


@pytest.mark.parametrize("kind", FILES)
def test_installs_devnet_with_its_extras(kind):
    runs = " ".join(_one(instructions(FILES[kind]), "RUN"))
    match = re.search(r"pip install \"?\.\[([^\]]*)\]", runs)
    assert match, "devnet itself is not pip-installed from the source tree"
    extras = set(match.group(1).split(","))
    assert ("cuda12" in extras) == (kind == "cuda")
    copies = " ".join(_one(instructions(FILES[kind]), "COPY"))
    for needed in ("pyproject.toml", "devnet", "kernels"):
        assert needed in copies


@pytest.mark.parametrize("kind", FILES)
def test_entrypoint_and_healthcheck(kind):
    instrs = instructions(FILES[kind])
    assert json.loads(_one(instrs, "ENTRYPOINT")[-1]) == ["devnet"]
    health = _one(instrs, "HEALTHCHECK")[-1]
    assert re.search(r'CMD \["devnet", "info"\]', health)


def test_readme_shows_a_gpu_training_run():
    text = (DOCKER / "README.md").read_text()
    assert re.search(r"docker run --gpus all .*devnet:gpu train --config", text)
    for path in FILES.values():
        assert path.name in text
