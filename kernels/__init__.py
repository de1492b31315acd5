"""devnet's compute kernels (installed as ``devnet.kernels``).

- ``scalar``:    the plain-Python scalar math of every fused op, written once;
- ``reference``: xp-generic (NumPy / CuPy) versions, the test oracle;
- ``cpu``:       Numba kernels built from ``scalar``;
- ``cuda``:      Numba-CUDA kernels built from ``scalar``.

Every kernel table exposes the names in ``reference.KERNEL_NAMES`` with the signatures
documented in ``reference``.
"""
