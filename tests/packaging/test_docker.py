"""Static checks of the Dockerfiles (no Docker engine needed): pinned base, non-root user that
does not collide with the base image's, devnet installed, `devnet` as entry point, `devnet info`
as health check, Numba's cache on a volume, and documented `docker run`s that mount what they
read and write."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

# keys name the image; not "gpu", which conftest treats as the GPU-test marker
DOCKER = Path(__file__).resolve().parents[2] / "docker"
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


def final_stage(instrs):
    """The instructions of the image's own stage (from its last FROM)."""
    last = max(i for i, (word, _) in enumerate(instrs) if word == "FROM")
    return instrs[last:]


def _one(instrs, word):
    found = [args for w, args in instrs if w == word]
    assert found, f"no {word} instruction"
    return found


@pytest.mark.parametrize("kind", FILES)
def test_base_image_is_pinned(kind):
    base = _one(final_stage(instructions(FILES[kind])), "FROM")[0]
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
def test_installs_the_wheel_built_from_the_tree_with_its_extras(kind):
    instrs = instructions(FILES[kind])
    image = final_stage(instrs)
    builder = instrs[:len(instrs) - len(image)]
    stage = re.fullmatch(r"\S+ AS (\w+)", _one(builder, "FROM")[0], re.IGNORECASE).group(1)
    copies = " ".join(_one(builder, "COPY"))
    for needed in ("pyproject.toml", "setup.py", "devnet", "kernels"):
        assert needed in copies
    build = " ".join(_one(builder, "RUN"))
    wheels = re.search(r"pip wheel .*--wheel-dir (\S+) \.", build).group(1)
    # the image copies the wheel, never the source tree, and installs it with its extras
    assert [a for w, a in image if w == "COPY"] == [f"--from={stage} {wheels} /tmp/wheels"]
    match = re.search(r"pip install \"\$\(ls /tmp/wheels/devnet_mlp-\*\.whl\)\[([^\]]*)\]\"",
                      " ".join(_one(image, "RUN")))
    assert match, "the image does not pip-install the wheel"
    extras = set(match.group(1).split(","))
    assert ("cuda12" in extras) == (kind == "cuda")


@pytest.mark.parametrize("kind", FILES)
def test_entrypoint_and_healthcheck(kind):
    instrs = instructions(FILES[kind])
    assert json.loads(_one(instrs, "ENTRYPOINT")[-1]) == ["devnet"]
    health = _one(instrs, "HEALTHCHECK")[-1]
    assert re.search(r'CMD \["devnet", "info"\]', health)


def test_readme_shows_a_gpu_training_run():
    text = (DOCKER / "README.md").read_text()
    assert any(re.search(r"docker run --gpus all .*devnet:gpu train --config", run)
               for run in docker_runs(text))
    for path in FILES.values():
        assert path.name in text


# --- the image's user, environment and layers -----------------------------------------------

ROOT = DOCKER.parent
#: base images that already have a user with uid 1000 ("ubuntu" since Ubuntu 23.04)
UID_1000_BASES = re.compile(r"(^ubuntu:(2[3-9]|[3-9]\d)\.)"
                            r"|(^nvidia/cuda:.*-ubuntu(2[3-9]|[3-9]\d))")


def _env(instrs) -> dict[str, str]:
    env = {}
    for word, args in instrs:
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                env[key] = value
    return env


@pytest.mark.parametrize("kind", FILES)
def test_uid_1000_user_does_not_collide_with_the_base_image(kind):
    instrs = final_stage(instructions(FILES[kind]))
    base = _one(instrs, "FROM")[0]
    for i, (word, args) in enumerate(instrs):
        if word != "RUN" or not re.search(r"useradd\b.*--uid[ =]1000\b", args):
            continue
        before = " ".join(a for w, a in instrs[:i + 1] if w == "RUN")
        before = before[:before.rindex("useradd")]
        frees_it = re.search(r"\b(userdel|usermod)\b", before)
        if UID_1000_BASES.search(base):
            assert frees_it, f"{base} already has uid 1000: useradd --uid 1000 fails"
        # the generic guard works on any base: it must look the uid up, not assume a name
        if frees_it:
            assert "getent passwd 1000" in before


def test_uid_1000_check_knows_the_ubuntu_24_04_bases():
    assert UID_1000_BASES.search("nvidia/cuda:12.6.3-runtime-ubuntu24.04")
    assert UID_1000_BASES.search("ubuntu:24.04")
    assert not UID_1000_BASES.search("nvidia/cuda:12.6.3-runtime-ubuntu22.04")
    assert not UID_1000_BASES.search("python:3.12.8-slim-bookworm")


@pytest.mark.parametrize("kind", FILES)
def test_numba_cache_dir_is_a_writable_volume(kind):
    instrs = instructions(FILES[kind])
    cache = _env(instrs).get("NUMBA_CACHE_DIR")
    assert cache and cache.startswith("/"), "NUMBA_CACHE_DIR is not set"
    volumes = [v for args in _one(instrs, "VOLUME") for v in json.loads(args)]
    assert any(cache == v or cache.startswith(v.rstrip("/") + "/") for v in volumes), volumes
    runs = " ".join(_one(instrs, "RUN"))
    assert re.search(rf"chown [^&]*{re.escape(cache)}", runs), "the cache is not the user's"


@pytest.mark.parametrize("kind", FILES)
def test_copies_every_file_pyproject_names(kind):
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = [project["readme"], *project.get("license-files", [])]
    copies = " ".join(_one(instructions(FILES[kind]), "COPY")).split()
    for name in needed:
        assert name in copies, f"pip install . needs {name}, which is not copied"


def docker_runs(text: str) -> list[str]:
    """Every ``docker run ...`` command in ``text`` (comment markers and continuations
    removed)."""
    text = re.sub(r"\\\n\s*#?\s*", " ", text)
    return [" ".join(m.group(0).split()) for m in re.finditer(r"docker run [^\n]*", text)]


def _mounted(command: str, path: str, workdir: str = "/work") -> bool:
    """Whether ``path`` (relative to the container's workdir) lies under a ``-v`` mount."""
    target = path if path.startswith("/") else f"{workdir}/{path}"
    mounts = re.findall(r"-v\s+\"?[^\s:\"]+:([^\s:\"]+)", command)
    return any(target == m or target.startswith(m.rstrip("/") + "/") for m in mounts)


def _documented_runs() -> list[str]:
    runs = []
    for path in (*FILES.values(), DOCKER / "README.md", ROOT / "README.md"):
        runs += docker_runs(path.read_text())
    return runs


def test_documented_runs_mount_what_they_read_and_write():
    runs = _documented_runs()
    assert any("train --config" in r for r in runs)
    for command in runs:
        for flag in ("--config", "--out", "--checkpoint", "--data"):
            for value in re.findall(rf"{flag}\s+(\S+)", command):
                if flag == "--data" and "." not in value:
                    continue  # a bundled dataset name
                assert _mounted(command, value), f"{value} is not in a mounted folder: {command}"


def test_mount_check_catches_the_old_header():
    old = 'docker run --gpus all --rm -v "$PWD/runs:/work/runs" devnet:gpu train --config run.toml'
    assert not _mounted(docker_runs(old)[0], "run.toml")
    assert _mounted(docker_runs(old)[0], "runs/digits")


def test_dockerignore_keeps_what_the_images_copy():
    """The context skips .venv and the rest (gigabytes) but not a file a COPY needs."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for path in FILES.values():
        for args in _one(instructions(path), "COPY"):
            if args.startswith("--from="):
                continue  # from a build stage, not the context
            for source in args.split()[:-1]:
                assert source.rstrip("/") in kept, f"{path.name}: COPY {source} is ignored"


def _engine_and_base() -> str | None:
    """Why the CPU image cannot be built here, or None."""
    import shutil
    import subprocess

    if not shutil.which("docker"):
        return "no docker command"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "no Docker engine running (the docker command is only a client)"
    base = _one(final_stage(instructions(FILES["cpu"])), "FROM")[0]
    if subprocess.run(["docker", "image", "inspect", base], capture_output=True,
                      timeout=60).returncode != 0:
        return f"the base image {base} is not present locally (and registries may be offline)"
    return None


@pytest.mark.slow
def test_cpu_image_builds_and_trains():
    """make docker-check: the CPU image builds from the wheel, `devnet info` runs, a 2-epoch
    training run writes its checkpoint on the mount and `devnet eval` reads it back."""
    import subprocess

    reason = _engine_and_base()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(["make", "-s", "docker-check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "devices      cpu" in proc.stdout
    assert "trained 2 epochs" in proc.stdout and "accuracy" in proc.stdout
