# Two entry points for a fresh machine with only Python >= 3.10 and make:
#   make demo   trains an MLP on scikit-learn's digits on the best available device
#   make test   runs the whole suite (CPU, CUDA simulator, PTX checks; GPU tests where one exists)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-main test-cudasim lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[sklearn]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test,dev]"
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/python examples/digits.py

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q -m "not cudasim"
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -q -m cudasim tests/test_kernels_cudasim.py

lint: $(VENV)/.test-installed
	$(BIN)/ruff check devnet kernels tests benchmarks examples

bench: $(VENV)/.test-installed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
