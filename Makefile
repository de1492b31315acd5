# Two entry points for a fresh machine with only Python >= 3.10 and make:
#   make demo   trains an MLP on scikit-learn's digits on the best available device
#   make test   runs the whole suite (CPU, CUDA simulator, PTX checks; GPU tests where one exists)
# and one for a machine with an NVIDIA GPU:
#   make gpu-check  the gpu-marked tests and the GPU benchmark suites, one JSON under
#                   benchmarks/results/ (installs the cuda12 / cuda13 extra when missing)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-main test-cudasim lint bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[sklearn]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test,dev,mpi]"
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/python examples/digits.py

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q -m "not cudasim"
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -q -m cudasim tests/test_kernels_cudasim.py
	# the whole CUDA backend (CuPy stand-in + simulated kernels) end to end; bounded
	DEVNET_CUDA_SIMULATOR=1 timeout 1200 $(BIN)/python -m pytest -q -m cudasim \
		tests/test_cuda_sim_e2e.py tests/test_cuda_launch_bench.py tests/test_train_feed_cudasim.py \
		tests/test_l2_clip_cudasim.py tests/test_distributed_cudasim.py \
		tests/test_adversarial_cuda_sim.py

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
