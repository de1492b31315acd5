"""Import devnet from a source checkout that is not installed.

A wheel or an editable install puts ``kernels/`` at ``devnet.kernels``. A bare checkout on
``sys.path`` (``make gpu-check`` on a machine whose setuptools cannot build this project) has it
beside ``devnet/``: load it from there under its installed name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def import_kernels_beside() -> None:
    """Register ``<checkout>/kernels`` as ``devnet.kernels`` when no installed copy is found."""
    if "devnet.kernels" in sys.modules or importlib.util.find_spec("devnet.kernels"):
        return
    folder = Path(__file__).resolve().parents[1] / "kernels"
    if not (folder / "__init__.py").is_file():
        return  # an install without its kernels: the import that needs them says so
    spec = importlib.util.spec_from_file_location(
        "devnet.kernels", folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["devnet.kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["devnet.kernels"]
        raise
    sys.modules["devnet"].kernels = module


import_kernels_beside()
