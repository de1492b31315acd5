"""The CuPy stand-in (``devnet.testing.cupy_sim``) against the installed ``cupy`` package.

The stand-in lets the CUDA backend run in CI without a GPU; it is only worth it while it says
what CuPy says. CuPy imports without a GPU, so this runs in the ordinary pytest process: every
name the stand-in offers must exist in CuPy, with the same parameters wherever Python can read
both signatures, and every ``xp.<name>`` devnet calls must exist in the stand-in.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from devnet.testing import cupy_sim as sim

cupy = pytest.importorskip(
    "cupy", reason="the drift check needs the cupy package (pip install cupy-cuda12x; it "
                   "imports without a GPU)")
cupyx = pytest.importorskip("cupyx")

ROOT = Path(__file__).resolve().parents[2]
# names the stand-in defines itself (not NumPy's functions passed through)
OWN_FUNCTIONS = ("asarray", "array", "ascontiguousarray", "asnumpy", "get_array_module",
                 "from_dlpack")
CUDA_NAMES = ("Device", "Stream", "Event", "get_current_stream", "get_elapsed_time", "runtime",
              "MemoryPointer")
RUNTIME_NAMES = ("getDeviceCount", "getDevice", "setDevice", "getDeviceProperties",
                 "driverGetVersion", "runtimeGetVersion", "CUDARuntimeError")
NDARRAY_OWN = ("get", "set", "copy", "data", "device", "T", "__cuda_array_interface__",
               "__float__", "__int__", "__bool__", "__len__", "__iter__", "__getitem__",
               "__setitem__", "__array_ufunc__", "__array_function__", "__array__")
# (instance attributes such as Stream.ptr or Device.id cannot be read without a GPU)
CLASS_MEMBERS = {"Stream": ("synchronize", "record", "wait_event", "use", "null", "__enter__",
                            "__exit__"),
                 "Event": ("record", "synchronize", "done"),
                 "Device": ("use", "synchronize", "__enter__", "__exit__")}


def _signature(obj):
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # a Cython builtin without one
        return None


def _params(sig):
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()
            if p.name != "self"]


@pytest.mark.parametrize("name", sorted({*sim.NUMPY_FUNCTIONS, *OWN_FUNCTIONS, "ndarray",
                                         "cuda", "random", "float32", "float64", "int64"}))
def test_module_name_exists_in_cupy(name):
    assert hasattr(cupy, name), f"cupy has no {name}: drop it from the stand-in"


@pytest.mark.parametrize("name", OWN_FUNCTIONS)
def test_own_function_signatures_match(name):
    theirs = _signature(getattr(cupy, name))
    if theirs is None:
        pytest.skip(f"cupy.{name} has no Python-readable signature")
    assert _params(inspect.signature(getattr(sim, name))) == _params(theirs)


def test_cuda_and_runtime_names():
    for name in CUDA_NAMES:
        assert hasattr(cupy.cuda, name), name
        assert hasattr(sim.cuda, name), name
    for name in RUNTIME_NAMES:
        assert hasattr(cupy.cuda.runtime, name), name
        assert hasattr(sim.cuda.runtime, name), name
    assert hasattr(cupy.random, "default_rng") and hasattr(cupy.random, "Generator")
    assert _params(inspect.signature(sim.random.default_rng)) == \
        _params(inspect.signature(cupy.random.default_rng))


@pytest.mark.parametrize("cls", sorted(CLASS_MEMBERS))
def test_classes_members_and_constructors(cls):
    theirs, ours = getattr(cupy.cuda, cls), getattr(sim.cuda, cls)
    for member in CLASS_MEMBERS[cls]:
        assert hasattr(theirs, member), f"cupy.cuda.{cls} has no {member}"
        assert hasattr(ours, member), member
    sig = _signature(theirs)
    if sig is not None:
        assert _params(inspect.signature(ours)) == _params(sig)


def test_ndarray_members():
    for name in NDARRAY_OWN:
        assert hasattr(cupy.ndarray, name), f"cupy.ndarray has no {name}"
        assert name in vars(sim.ndarray) or name == "T", name


def test_cupyx_pinned():
    for name in ("empty_pinned", "zeros_pinned"):
        assert _params(inspect.signature(getattr(sim.cupyx, name))) == \
            _params(inspect.signature(getattr(cupyx, name)))


def test_devnet_uses_only_what_the_standin_offers():
    """Every ``xp.<name>`` in devnet's and the kernels' source is in the stand-in."""
    used = set()
    for path in [*ROOT.joinpath("devnet").rglob("*.py"), *ROOT.joinpath("kernels").glob("*.py")]:
        used |= set(re.findall(r"\bxp\.([A-Za-z_][\w.]*\w)", path.read_text()))

    def has(module, dotted):
        for part in dotted.split("."):
            module = getattr(module, part, None)
        return module is not None

    missing = sorted(n for n in used if not has(sim, n))
    assert not missing, f"devnet calls xp.{missing} that cupy_sim lacks: add them"
    assert all(has(cupy, n) for n in used)


def test_standin_surface_is_the_installed_cupys():
    """The stand-in's ndarray members, Generator draws and module functions, with their
    parameters, are read again from the installed cupy: any difference fails (regenerate with
    ``python -m devnet.testing.cupy_surface``)."""
    from devnet.testing import cupy_surface as surface

    ours = (surface.NDARRAY, surface.GENERATOR, surface.FUNCTIONS)
    theirs = surface.read_installed(cupy, *ours)
    for title, mine, installed in zip(("ndarray", "Generator", "functions"), ours, theirs):
        assert mine == installed, f"cupy_surface's {title} table differs from the installed cupy"


def test_standin_generator_offers_every_cupy_draw_numpy_has():
    import numpy as np

    from devnet.testing import cupy_surface as surface

    cupys = {n for n in dir(cupy.random.Generator) if not n.startswith("_")}
    assert set(surface.GENERATOR) == {n for n in cupys if hasattr(np.random.Generator, n)}
