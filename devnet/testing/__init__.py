"""Testing aids, not devices: ``cupy_sim``, a NumPy-backed stand-in for CuPy.

``DEVNET_CUDA_SIMULATOR=1`` makes the CUDA backend run on it (with Numba's CUDA simulator), so
the test suite and CI exercise the whole GPU path without a GPU. It ships in the wheel because
the installed package honours that variable too. ``cupy_sim_cuda`` is its ``cupy.cuda``
(devices, streams, events, the ordering checks), ``cupy_graph`` its stream capture, CUDA graphs
and low-level cuBLAS GEMMs, and ``cupy_surface`` the installed CuPy's names and keywords, the
only ones the stand-in accepts.
"""
