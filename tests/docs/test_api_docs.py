"""docs/api.md, the API reference generated from the docstrings, is current and complete."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import devnet as dn

ROOT = Path(__file__).resolve().parents[2]

# the reference documents devnet.sklearn too, which needs scikit-learn
pytest.importorskip("sklearn")


def _make_api():
    spec = importlib.util.spec_from_file_location("make_api", ROOT / "docs" / "make_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_api():
    return _make_api()


@pytest.fixture(scope="module")
def rendered(make_api):
    return make_api.render()


def test_api_md_is_current(rendered):
    current = (ROOT / "docs" / "api.md").read_text()
    assert current == rendered, "docs/api.md is stale: run python docs/make_api.py"


def test_every_public_name_has_an_entry(rendered):
    headings = set(re.findall(r"^### `([^`]+)`", rendered, re.M))
    modules = {"callbacks", "data", "distributed", "interop", "losses", "optim", "task"}
    missing = [f"dn.{n}" for n in dn.__all__ if n not in modules and f"dn.{n}" not in headings]
    assert not missing, f"docs/api.md has no entry for {missing}"
    sections = set(re.findall(r"^## `([^`]+)`", rendered, re.M))
    assert {f"dn.{m}" for m in modules} <= sections
    for name in ("dn.sklearn.MLPClassifier", "dn.sklearn.MLPRegressor", "dn.data.load_csv",
                 "dn.optim.schedules.warmup_cosine", "dn.io.read_metadata"):
        assert name in headings


def test_the_reference_does_not_depend_on_the_machine(rendered, make_api):
    assert not re.search(r"0x[0-9a-fA-F]{6,}", rendered), "a memory address in docs/api.md"
    assert str(ROOT) not in rendered and str(Path.home()) not in rendered
    assert make_api.render() == rendered  # and not on the order of earlier imports


def test_a_changed_docstring_makes_it_stale(make_api, monkeypatch, tmp_path, capsys):
    api_md = tmp_path / "api.md"
    monkeypatch.setattr(make_api, "API_MD", api_md)
    assert make_api.main([]) == 0
    assert make_api.main(["--check"]) == 0
    monkeypatch.setattr(dn.evaluate, "__doc__", dn.evaluate.__doc__ + "\n\nA new note.")
    assert make_api.main(["--check"]) == 1
    assert "docs/api.md is stale: run python docs/make_api.py" in capsys.readouterr().err
