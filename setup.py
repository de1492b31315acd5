"""Package discovery for setuptools: everything under devnet/, and kernels/ as devnet.kernels.

The rest of the build configuration is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["devnet", "devnet.*"])
    + ["devnet." + name for name in find_packages(include=["kernels", "kernels.*"])],
)
