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

test-source: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q -m "not cudasim"
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -q -m cudasim tests/test_kernels_cudasim.py
	# the whole CUDA backend (CuPy stand-in + simulated kernels) end to end; bounded
	DEVNET_CUDA_SIMULATOR=1 timeout 1200 $(BIN)/python -m pytest -q -m cudasim \
		tests/test_cuda_sim_e2e.py tests/test_cuda_launch_bench.py tests/test_train_feed_cudasim.py \
		tests/test_l2_clip_cudasim.py tests/test_distributed_cudasim.py \
		tests/test_adversarial_cuda_sim.py

# What users install: the wheel, built from this tree (offline, with the venv's setuptools)
wheel: $(VENV)/.test-installed
	rm -rf build dist
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist .

# The wheel in a fresh venv with the extras a user would take, and the user-facing tests run
# against it from a folder where the checkout is not importable (a missing module, data file or
# entry point fails here). Bounded.
WHEEL_VENV := .venv-wheel
WHEEL_TESTS := test_packaging test_train test_sklearn test_cli test_resume test_io \
	test_distributed
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

# The GPU machine has CuPy, numba-cuda and PyTorch but maybe no network: use its Python and
# what is present; the extra matching the driver's CUDA major is installed only when missing.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
CUDA_MAJOR := $(shell nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9]*' | grep -o '[0-9]*$$')
CUDA_EXTRA ?= $(if $(filter 13,$(CUDA_MAJOR)),cuda13,cuda12)

gpu-check:
	@$(GPU_PYTHON) -c "import devnet" 2>/dev/null || \
		$(GPU_PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	@$(GPU_PYTHON) -c "import cupy, numba_cuda" 2>/dev/null || \
		$(GPU_PYTHON) -m pip install -q -e ".[$(CUDA_EXTRA)]" || \
		echo "gpu-check: could not install .[$(CUDA_EXTRA)] (offline?): using what is present"
	$(GPU_PYTHON) -m benchmarks.gpu_check --out benchmarks/results

clean:
	rm -rf $(VENV) build *.egg-info
