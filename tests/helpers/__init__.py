"""Helpers shared by the test files (tests/ is on sys.path: pyproject's ``pythonpath``).

A test file imports them by module, e.g. ``from helpers.cli import run_cli``:

- ``optional``: devnet.sklearn, or a skip naming what to install;
- ``cli``: the devnet command run in-process, and its one-line error convention;
- ``datafiles``: a user's CSV files and run configs for the data loaders and the command;
- ``training``: a small model, data and a user's schedule for the optimizer and fit tests;
- ``mpi``: MPI's availability and a worker script run on N ranks;
- ``launch_fakes``, ``ptx_targets``: the CUDA launch stand-ins and the PTX targets;
- ``distributed_worker.py``, ``per_rank_settings_worker.py``: scripts run by path.

Fixtures (``backend``, ``rng``) are in tests/conftest.py.
"""
