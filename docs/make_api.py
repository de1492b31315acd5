"""Write docs/api.md, the reference of devnet's public API, from its docstrings.

    python docs/make_api.py            # rewrites docs/api.md
    python docs/make_api.py --check    # exit 1 if docs/api.md is stale

The output depends only on the source: names in a fixed order, signatures from ``inspect``,
memory addresses and absolute paths scrubbed. ``tests/docs/test_api_docs.py`` regenerates it in
memory and fails when the file differs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_MD = ROOT / "docs" / "api.md"

#: the public modules, in the order a reader meets them; their names come from ``__all__``
#: where the module has one, else the functions and classes defined in it (no leading ``_``)
#: (or the names given here, for a module whose other functions are its own helpers)
MODULES = (
    ("devnet.data", "datasets, CSV / NPZ loading, splitting, standardization", None),
    ("devnet.losses", "the loss table", None),
    ("devnet.optim", "optimizers over the flat parameter buffer", None),
    ("devnet.optim.schedules", "learning-rate schedules", None),
    ("devnet.callbacks", "callbacks for fit", None),
    ("devnet.io", "checkpoints",
     ("Checkpoint", "load", "load_checkpoint", "read_metadata", "save")),
    ("devnet.task", "classification or regression, and the default loss", None),
    ("devnet.metrics", "accuracy, R2, MAE", None),
    ("devnet.interop", "PyTorch / JAX / CuPy exchange", None),
    ("devnet.distributed", "data-parallel training", None),
    ("devnet.sklearn", "scikit-learn estimators (needs the sklearn extra)", None),
)

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _clean(text: str) -> str:
    """Text that does not depend on the machine: no addresses, no checkout path."""
    text = _ADDRESS.sub("", text)
    return text.replace(str(ROOT) + "/", "").replace(str(ROOT), ".")


def _doc(obj) -> str:
    """The docstring: its summary as a paragraph, the rest as written (a ``text`` block, so
    argument lists and examples keep their layout)."""
    doc = _clean(inspect.getdoc(obj) or "(no docstring)")
    summary, _, rest = doc.partition("\n\n")
    summary = " ".join(summary.replace("``", "`").split())
    rest = rest.strip("\n")
    return summary + (f"\n\n```text\n{rest}\n```" if rest else "")


class _Raw(str):
    """An annotation written as source (``from __future__ import annotations``): shown
    as written, not quoted."""

    def __repr__(self) -> str:
        return str(self)


def _unquoted(sig: inspect.Signature) -> inspect.Signature:
    def raw(a):
        return _Raw(a) if isinstance(a, str) else a
    params = [p.replace(annotation=raw(p.annotation)) for p in sig.parameters.values()]
    return sig.replace(parameters=params, return_annotation=raw(sig.return_annotation))


def _signature(name: str, obj) -> str:
    try:
        sig = _unquoted(inspect.signature(obj))
    except (TypeError, ValueError):
        return f"{name}(...)"
    text = _clean(f"{name}{sig}")
    if len(text) <= 99:
        return text
    params = [_clean(str(p)) for p in sig.parameters.values()]
    # keyword-only and positional-only markers, as str(sig) writes them
    out, kinds = [], [p.kind for p in sig.parameters.values()]
    for i, (p, kind) in enumerate(zip(params, kinds)):
        if kind is inspect.Parameter.KEYWORD_ONLY and (
                i == 0 or kinds[i - 1] not in (inspect.Parameter.KEYWORD_ONLY,
                                               inspect.Parameter.VAR_POSITIONAL)):
            out.append("*")
        out.append(p)
        if kind is inspect.Parameter.POSITIONAL_ONLY and (
                i + 1 == len(kinds) or kinds[i + 1] is not inspect.Parameter.POSITIONAL_ONLY):
            out.append("/")
    ret = ""
    if sig.return_annotation is not inspect.Signature.empty:
        ret = _clean(f" -> {inspect.formatannotation(sig.return_annotation)}")
    return f"{name}(\n" + "".join(f"    {p},\n" for p in out) + f"){ret}"


def _is_devnet(obj) -> bool:
    return (getattr(obj, "__module__", None) or "").startswith("devnet")


def _members(cls, public: set) -> list[tuple[str, object]]:
    """Public methods and properties that devnet defines on ``cls`` or on its private devnet
    bases (a public base's members are listed under that base)."""
    seen: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if (not _is_devnet(klass) or issubclass(cls, BaseException)
                or (klass is not cls and klass in public)):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value) or isinstance(value, property):
                seen[name] = value
            else:
                seen.pop(name, None)
    return sorted(seen.items())


def _value(name: str, obj) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(f"`{k}`" for k in sorted(map(str, obj)))
        return f"A table (dict) keyed by name: {keys}." if keys else "An empty dict."
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(map(str, obj)) if isinstance(obj, (set, frozenset)) else list(map(str, obj))
        body = ", ".join(f"`{i}`" for i in items)
        return f"A {type(obj).__name__}: {body}." if body else f"An empty {type(obj).__name__}."
    return f"`{_clean(repr(obj))}`"


def _entry(qualname: str, obj, level: str, public: set) -> list[str]:
    short = qualname.rsplit(".", 1)[-1]
    if inspect.isclass(obj):
        bases = [b.__name__ for b in obj.__bases__ if b is not object]
        kind = "exception" if issubclass(obj, BaseException) else "class"
        head = f"{level} `{qualname}` ({kind}{': ' + ', '.join(bases) if bases else ''})"
        lines = [head, ""]
        if kind == "class":
            lines += ["```python", _signature(short, obj), "```", ""]
        lines += [_doc(obj), ""]
        inherited = [b.__name__ for b in obj.__mro__[1:] if b in public and _is_devnet(b)]
        if inherited and kind == "class":
            lines += ["Also the methods of " + ", ".join(f"`{b}`" for b in inherited) + ".",
                      ""]
        for name, member in _members(obj, public):
            if isinstance(member, property):
                lines += [f"- `{short}.{name}` (property): " + _doc(member).split("\n\n")[0],
                          ""]
                continue
            lines += [f"- `{short}.{name}`", "",
                      "  ```python", *("  " + s for s in _signature(name, member).splitlines()),
                      "  ```", "", *("  " + s if s else "" for s in _doc(member).splitlines()),
                      ""]
        return lines
    if callable(obj):
        return [f"{level} `{qualname}`", "", "```python", _signature(short, obj), "```", "",
                _doc(obj), ""]
    return [f"{level} `{qualname}`", "", _value(short, obj), ""]


def _public(module, names=None) -> list[str]:
    names = names or getattr(module, "__all__", None)
    if names is None:
        def defined_here(v) -> bool:  # in the module, or in a submodule of a package
            where = getattr(v, "__module__", None) or ""
            return where == module.__name__ or where.startswith(module.__name__ + ".")
        names = [n for n, v in vars(module).items()
                 if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
                 and defined_here(v)]
    return sorted(n for n in names if not inspect.ismodule(getattr(module, n, None)))


def render() -> str:
    """docs/api.md's text."""
    import devnet

    out = ["# devnet API reference", "",
           "<!-- generated by `python docs/make_api.py` from the docstrings; do not edit by "
           "hand (tests/docs/test_api_docs.py fails when it is stale) -->", "",
           f"devnet {devnet.__version__}. `import devnet as dn`. Every name below is public: "
           "scripts may rely on it. Guides: the README and `docs/guide.md`.", "",
           "## `devnet`", "", _doc(devnet), ""]
    modules = [(importlib.import_module(m), what, names) for m, what, names in MODULES]
    public = {getattr(m, n) for m, _, names in [(devnet, "", None), *modules]
              for n in _public(m, names) if inspect.isclass(getattr(m, n))}
    documented: dict[int, str] = {}
    for name in _public(devnet):
        obj = getattr(devnet, name)
        documented[id(obj)] = f"dn.{name}"
        out += _entry(f"dn.{name}", obj, "###", public)
    for module, what, names in modules:
        modname = module.__name__
        short = modname.replace("devnet.", "dn.", 1)
        out += [f"## `{short}`: {what}", "", _doc(module), ""]
        for name in _public(module, names):
            obj = getattr(module, name)
            if id(obj) in documented and (inspect.isclass(obj) or callable(obj)):
                same = documented[id(obj)]
                out += [f"### `{short}.{name}`", "", f"The same object as `{same}`.", ""]
                continue
            if inspect.isclass(obj) or callable(obj):
                documented[id(obj)] = f"{short}.{name}"
            out += _entry(f"{short}.{name}", obj, "###", public)
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not API_MD.is_file() or API_MD.read_text() != text:
            print("docs/api.md is stale: run python docs/make_api.py", file=sys.stderr)
            return 1
        return 0
    API_MD.write_text(text)
    where = API_MD.relative_to(ROOT) if API_MD.is_relative_to(ROOT) else API_MD
    print(f"wrote {where} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # document this checkout, not some other installed devnet
    sys.exit(main())
