# Two entry points for a fresh machine with only Python >= 3.10 and make:
#   make demo   trains an MLP on scikit-learn's digits on the best available device
#   make test   runs the whole suite (CPU, CUDA simulator, PTX checks; GPU tests where one exists),
#               then builds the wheel and runs the user-facing tests against it, installed
# and two more:
#   make gpu-check     on a machine with an NVIDIA GPU: the gpu-marked tests and the GPU
#                      benchmark suites, one JSON under benchmarks/results/ (from the source tree)
#   make docker-check  where a Docker engine runs: builds the CPU image, runs devnet inside it
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-source test-wheel wheel lint bench gpu-check docker-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[sklearn]"
	touch $@

$(VENV)/.test-installed: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test,dev,mpi]"
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/python examples/digits.py

test: test-source test-wheel

# The simulator tests are found by their markers, never by a list of files: a cudasim test runs
# in exactly one of the two simulator passes (tests/packaging/test_simulator_passes.py checks
# the recipe): the kernels alone on Numba's simulator (also marked kernelsim), or the whole CUDA
# backend over the CuPy stand-in and the simulated kernels (bounded).
test-source: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q -m "not cudasim"
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -q -m "cudasim and kernelsim"
	DEVNET_CUDA_SIMULATOR=1 timeout 1200 $(BIN)/python -m pytest -q -m "cudasim and not kernelsim"

# What users install: the wheel, built from this tree (offline, with the venv's setuptools)
wheel: $(VENV)/.test-installed
	rm -rf build dist
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist .

# The wheel in a fresh venv with the extras a user would take, and the user-facing tests run
# against it from a folder where the checkout is not importable (a missing module, data file or
# entry point fails here). Bounded. WHEEL_TESTS are paths under tests/, without ".py"; the tests'
# own helpers (tests/helpers/) come from pyproject's pythonpath, which names tests/ alone.
WHEEL_VENV := .venv-wheel
WHEEL_TESTS := packaging/test_packaging train/test_train sklearn/test_sklearn cli/test_cli \
	cli/test_cli_run io/test_resume io/test_io distributed/test_distributed
test-wheel: wheel
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q --upgrade pip
	$(WHEEL_VENV)/bin/python -m pip install -q "$(abspath $(wildcard dist/devnet_mlp-*.whl))[sklearn,mpi]" \
		pytest hypothesis threadpoolctl
	cd "$$(mktemp -d)" && DEVNET_WHEEL="$(abspath $(wildcard dist/devnet_mlp-*.whl))" \
		DEVNET_TEST_INSTALLED=1 timeout 900 $(abspath $(WHEEL_VENV))/bin/python -m pytest -q \
		-p no:cacheprovider -c "$(CURDIR)/pyproject.toml" --rootdir "$(CURDIR)" \
		$(patsubst %,"$(CURDIR)/tests/%.py",$(WHEEL_TESTS))

lint: $(VENV)/.test-installed
	$(BIN)/ruff check devnet kernels tests benchmarks examples

bench: $(VENV)/.test-installed
	$(BIN)/python -m benchmarks

# The GPU machine has CuPy, numba-cuda and PyTorch but maybe no network and a setuptools too old
# to build this project: run from the source tree, no install (devnet finds kernels/ beside
# itself), with the first Python that has CuPy and numba-cuda (the venv only if it has them).
# Where none has, the extra matching the driver's CUDA major goes into the venv (needs network).
CUDA_MAJOR = $(shell nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9]*' | grep -o '[0-9]*$$')
CUDA_EXTRA ?= $(if $(filter 13,$(CUDA_MAJOR)),cuda13,cuda12)

gpu-check:
	@py=""; for p in $(or $(GPU_PYTHON),$(wildcard $(BIN)/python) python3); do \
		if $$p -c "import cupy, numba_cuda" 2>/dev/null; then py=$$p; break; fi; done; \
	if [ -z "$$py" ]; then \
		echo "gpu-check: no Python here has CuPy and numba-cuda: installing .[$(CUDA_EXTRA)]"; \
		$(MAKE) -s $(BIN)/python && $(BIN)/python -m pip install -q ".[$(CUDA_EXTRA)]" pytest \
			&& py=$(BIN)/python \
			|| { echo "gpu-check: could not install .[$(CUDA_EXTRA)] (offline?)"; py=python3; }; \
	fi; \
	echo "gpu-check: $$py, devnet from $(CURDIR)"; \
	PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $$py -m benchmarks.gpu_check \
		--out benchmarks/results

# The CPU image built and run where a Docker engine exists: `devnet info`, a 2-epoch training
# run on a mounted folder, and `devnet eval` of its checkpoint. The base image must be pullable
# (or present locally).
DOCKER_TAG ?= devnet:cpu-check
docker-check:
	docker build -f docker/Dockerfile.cpu -t $(DOCKER_TAG) .
	docker run --rm $(DOCKER_TAG) info
	work=$$(mktemp -d) && chmod 777 "$$work" \
	&& printf '[data]\ndataset = "digits"\n[model]\nhidden = [32]\n[train]\nepochs = 2\n' \
		> "$$work/run.toml" \
	&& docker run --rm -v "$$work:/work" $(DOCKER_TAG) train --config run.toml --out runs/check \
	&& docker run --rm -v "$$work:/work" $(DOCKER_TAG) eval --checkpoint runs/check/model.safetensors \
	&& test -s "$$work/runs/check/model.safetensors"
	docker image ls $(DOCKER_TAG)

clean:
	rm -rf $(VENV) $(WHEEL_VENV) build dist *.egg-info
