"""The READMEs' and docs/' fenced ```sh and ```python blocks, run.

Cheap blocks run for real: Python blocks in a subprocess, each as written (no names defined for
it; only the edits below that make them quick) and with every warning an error, so a block that
warns fails; `devnet ...` commands in-process in a temporary folder holding README's first
run.toml, warnings errors too.
Expensive or GPU-only commands have their arguments parsed by the real parser and stop there;
commands that need a network, a Docker engine or a fresh virtualenv are skipped, each for the
reason given in the tables below.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from devnet import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", ROOT / "docs" / "guide.md", ROOT / "docs" / "architecture.md",
        ROOT / "docker" / "README.md", ROOT / "benchmarks" / "README.md")

#: sh commands not run here, by their first word, and why
SKIPPED = {
    "make": "builds a virtualenv and runs the whole suite or the 40-epoch demo (CI runs "
            "`make test` itself)",
    "pip": "installs packages from the network",
    "docker": "needs a Docker engine; tests/packaging/test_docker.py checks these commands "
              "statically and runs make docker-check where an engine exists",
}

#: commands run only up to their argument parsing (the parse must succeed), and why
PARSE_ONLY = (
    ("python -m benchmarks", "every suite takes minutes; tests/test_benchmarks.py runs --quick"),
    ("devnet bench", "a benchmark run takes minutes"),
    ("--device cuda", "needs a GPU"),
    ("devnet profile --sizes 784-", "profiling a 784-1024-1024-10 step 20 times takes tens of "
                                    "seconds on a 2-core CPU"),
)

#: edits that keep the Python blocks quick: (old, new); the blocks derive everything else
#: (schedule lengths included) from these, so an edited block is as consistent as the original
PYTHON_EDITS = (
    ("epochs, batch_size = 40, 32", "epochs, batch_size = 2, 32"),
    ("epochs=20", "epochs=2"), ("epochs=30", "epochs=3"),
)


def fenced_blocks(path: Path) -> list[tuple[str, str, int]]:
    """(language, text, line number) of every fenced block in a Markdown file."""
    text = path.read_text()
    out = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        out.append((match.group(1), match.group(2), text[:match.start()].count("\n") + 1))
    return out


def sh_commands(block: str) -> list[str]:
    """The commands of a sh block: continuations joined, comments dropped."""
    block = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(shlex.join(words))
    return commands


def _cases(lang: str):
    for path in DOCS:
        for block_lang, text, line in fenced_blocks(path):
            if block_lang != lang:
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            if lang == "python":
                yield pytest.param(text, id=where)
            else:
                for command in sh_commands(text):
                    yield pytest.param(command, id=f"{where}:{command[:40]}")


def test_every_readme_block_is_run_or_checked():
    """A README block in another language (or none) would escape every test here."""
    for path in (ROOT / "README.md", ROOT / "docs" / "guide.md"):
        langs = {lang for lang, _, _ in fenced_blocks(path)}
        assert langs <= {"sh", "python", "toml"}, f"{path.name}: unchecked blocks {langs}"
    text = (ROOT / "README.md").read_text()
    assert not re.search(r"^[ \t]+```", text, re.M), "an indented block is not run: unindent it"


def test_the_docs_have_runnable_blocks():
    assert len(list(_cases("python"))) >= 3 and len(list(_cases("sh"))) >= 10


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory):
    """A folder holding README's run.toml (2 epochs) and the run its train command writes."""
    folder = tmp_path_factory.mktemp("readme")
    toml = [text for lang, text, _ in fenced_blocks(ROOT / "README.md") if lang == "toml"]
    assert toml, "README shows no run.toml"
    (folder / "run.toml").write_text(toml[0].replace("epochs = 20", "epochs = 2"))
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert cli.main(shlex.split(first_train_command())[1:]) == 0
    finally:
        os.chdir(cwd)
    return folder


def first_train_command() -> str:
    """README's first `devnet train`: the readme_folder fixture runs it (once: a second run
    into the same folder is refused)."""
    train = [c for c in sh_commands_of_readme() if c.startswith("devnet train ")]
    assert train, "README shows no devnet train command"
    return train[0]


def sh_commands_of_readme() -> list[str]:
    return [c for lang, text, _ in fenced_blocks(ROOT / "README.md") if lang == "sh"
            for c in sh_commands(text)]


class _Parsed(BaseException):
    """Raised right after a forwarded command's arguments parsed (not an Exception, so the
    CLI's error handling lets it through)."""


def _parse_only(monkeypatch):
    real_parse = argparse.ArgumentParser.parse_args
    real_entry = cli._entry_point

    def stop_after_parse(self, args=None, namespace=None):
        raise _Parsed(real_parse(self, args, namespace))

    def entry(module, what):
        main = real_entry(module, what)

        def run(argv):
            monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after_parse)
            try:
                return main(argv)
            finally:
                monkeypatch.setattr(argparse.ArgumentParser, "parse_args", real_parse)
        return run

    monkeypatch.setattr(cli, "_entry_point", entry)


def _run_sh(command: str, monkeypatch, capsys) -> None:
    words = shlex.split(command)
    if words[0] in SKIPPED:
        pytest.skip(SKIPPED[words[0]])
    if words[0] == "python" and words[1:3] == ["-m", "benchmarks"]:
        words = ["devnet", "bench", *words[3:]]  # the same main(argv), through the CLI
    assert words[0] == "devnet", f"no rule for running {command!r}: add one to the tables"
    why = next((why for prefix, why in PARSE_ONLY if prefix in command), None)
    if why is not None:
        _parse_only(monkeypatch)
        with pytest.raises(_Parsed):
            cli.main(words[1:])
        capsys.readouterr()
        return
    code = cli.main(words[1:])
    out, err = capsys.readouterr()
    assert code == 0, f"{command}: exit {code}\n{out}\n{err}"


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("command", list(_cases("sh")))
def test_sh_command(command, readme_folder, monkeypatch, capsys):
    if command == first_train_command():
        return  # the readme_folder fixture ran it, and checked it
    monkeypatch.chdir(readme_folder)
    monkeypatch.setenv("DEVNET_DEVICE", "cpu")
    _run_sh(command, monkeypatch, capsys)


def run_python_block(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """A block as a user runs it, in a fresh interpreter, every warning an error."""
    env = dict(os.environ, DEVNET_DEVICE="cpu", PYTHONPATH=str(ROOT))
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("code", list(_cases("python")))
def test_python_block(code, tmp_path):
    for old, new in PYTHON_EDITS:
        code = code.replace(old, new)
    proc = run_python_block(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_block_that_warns_fails(tmp_path):
    """The check the blocks run under: a warning is a failure, not a line on stderr."""
    warns = "import warnings\nwarnings.warn('schedule too short', UserWarning)\n"
    assert run_python_block(warns, tmp_path).returncode != 0
    assert run_python_block("print('quiet')\n", tmp_path).returncode == 0


def test_python_blocks_define_what_they_use():
    """No block leans on names from another block or the prose: each imports what it uses."""
    for code in _cases("python"):
        text = code.values[0]
        if "dn." in text:
            assert "import devnet as dn" in text, f"a block uses dn without importing it:\n{text}"


@pytest.mark.parametrize("path", [p for p in DOCS if any(
    lang == "toml" for lang, _, _ in fenced_blocks(p))], ids=lambda p: p.name)
def test_toml_blocks_are_valid_configs(path):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    for lang, text, _ in fenced_blocks(path):
        if lang == "toml":
            cli.validate_config(tomllib.loads(text))  # raises naming a bad key or value


def test_readme_config_reference_lists_every_key_with_its_default():
    """README's run.toml reference is the schema's: every section and key, every default."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    blocks = [tomllib.loads(text) for lang, text, _ in fenced_blocks(ROOT / "README.md")
              if lang == "toml"]
    reference = max(blocks, key=lambda b: sum(map(len, b.values())))
    assert set(reference) == set(cli.CONFIG_SCHEMA)
    for section, keys in cli.CONFIG_SCHEMA.items():
        assert set(reference[section]) == set(keys), section
        for key, (default, _check) in keys.items():
            assert reference[section][key] == default, f"{section}.{key}"


def test_layout_lists_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    layout = doc[doc.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    package = ROOT / "devnet"
    names = {p.name for p in package.glob("*.py")}
    names |= {p.name + "/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    missing = sorted(n for n in names if not re.search(rf"(^|\s){re.escape(n)}(\s|$)", layout,
                                                       re.M))
    assert not missing, f"docs/architecture.md's layout does not list {missing}"


def test_readme_keeps_the_benchmark_markers():
    """`python -m benchmarks report --readme` rewrites the block between the markers; they sit
    in the speed section, beside the prose that says what was measured."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Speed"):]
    section = section[:section.index("\n## ")]
    start, end = section.find("<!-- bench:start -->"), section.find("<!-- bench:end -->")
    assert 0 <= start < end


def test_eval_and_predict_help_show_the_defaults():
    subs = cli.build_parser().subcommand_parsers
    for name, split in (("eval", "test"), ("predict", "all")):
        text = " ".join(subs[name].format_help().split())
        assert f"(default: {split})" in text
        assert "default: the run's dataset" in text and "(default: auto)" in text


def test_no_install_hint_names_the_wrong_distribution():
    """`pip install devnet` installs an unrelated PyPI project: hints say devnet-mlp."""
    files = [*DOCS, *(ROOT / "devnet").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
             *(ROOT / "docker").glob("Dockerfile*")]
    bad = []
    for path in files:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pip install[^\n]*['\"\s]devnet(\[|['\"\s]|$)", line):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)
