"""Numba's on-disk cache for the cloned CUDA kernels: a new key when scalar.py changes, the same
key otherwise.

Numba's cache watches only the file a kernel's code comes from (kernels/cuda/*.py, the
templates'); the scalar functions inlined into every kernel live in scalar.py.
``registry.pyfunc`` puts ``scalar.SOURCE_TAG`` (a hash of scalar.py) and the dtype in each
clone's qualified name, which names the cache index. These tests build numba-cuda's own
``CUDACache`` for the clones (no GPU needed) and read the index file name it would use.
"""

from __future__ import annotations

import hashlib
import inspect
import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the simulator compiles nothing to cache", allow_module_level=True)

try:
    from numba.cuda.dispatcher import CUDACache
except Exception as exc:  # numba-cuda missing or broken
    pytest.skip(f"numba-cuda is not importable ({type(exc).__name__}: {exc})",
                allow_module_level=True)

from devnet.kernels import scalar  # noqa: E402
from devnet.kernels.cuda import elementwise, registry  # noqa: E402


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    from numba.cuda.core import config

    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))


def _index_name(name, dtype):
    return CUDACache(registry.pyfunc(name, dtype))._cache_file._index_name


def test_source_tag_is_the_hash_of_scalar_py():
    with open(inspect.getsourcefile(scalar), "rb") as f:
        text = f.read().decode()
    assert scalar.SOURCE_TAG == hashlib.sha1(text.encode()).hexdigest()[:12]
    edited = text.replace("def sigmoid", "def  sigmoid", 1)
    assert hashlib.sha1(edited.encode()).hexdigest()[:12] != scalar.SOURCE_TAG


@pytest.mark.parametrize("name", ["adam_step", "act_bwd_gelu", "softmax_xent_label_i64"])
def test_same_source_same_key(name):
    """A second process (a fresh clone) finds the same index: a cache hit."""
    first = _index_name(name, np.float32)
    assert first == _index_name(name, np.float32)
    assert scalar.SOURCE_TAG in first and "float32" in first
    assert first != _index_name(name, np.float64)


def test_scalar_py_change_changes_the_key(monkeypatch):
    before = _index_name("act_bwd_tanh", np.float32)
    monkeypatch.setattr(scalar, "SOURCE_TAG", "0123456789ab")
    after = _index_name("act_bwd_tanh", np.float32)
    assert after != before and "0123456789ab" in after


def test_clones_are_sourced_from_kernels_cuda():
    """The index is also stamped with the templates' file: editing the module that defines a
    kernel's template (kernels/cuda/elementwise.py here) recompiles it."""
    fn = registry.pyfunc("bias_act_fwd_relu", np.float32)
    assert os.path.samefile(fn.__code__.co_filename, elementwise.__file__)
