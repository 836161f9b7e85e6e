# fda: set-up, demo and tests. Everything runs inside .venv/ at the repo root.
SHELL := /bin/bash
PYTHON ?= python3.11
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
STAMP := $(VENV)/.fda-setup-done
NP_DEMO ?= 4
TEST_TIMEOUT ?= 900

.PHONY: setup native cuda-check demo test test-unit test-mpi bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q "mpi4py>=4.0" mpich "numpy>=1.26" "h5py>=3.10" "pydantic>=2.6" "pyyaml>=6.0" \
		"tqdm>=4.66" "matplotlib>=3.8" "pytest>=8" "pytest-mpi>=0.6" cmake ninja
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(MAKE) native
	touch $(STAMP)

# The native drift-state op (C++, plus CUDA when torch has CUDA and nvcc is found).
native:
	@echo "native: (filled in by the kernel build)"

demo: setup
	$(PY) -m fda.data.ensure fashion-mnist
	$(MPIEXEC) -n $(NP_DEMO) $(PY) -m fda train --config configs/demo.yaml --out runs/demo --overwrite

test: setup
	timeout $(TEST_TIMEOUT) $(PY) -m pytest -q -p no:cacheprovider tests
	timeout $(TEST_TIMEOUT) $(MPIEXEC) -n 2 $(PY) -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests
	timeout $(TEST_TIMEOUT) $(MPIEXEC) -n 4 $(PY) -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests

clean:
	rm -rf build $(VENV) runs
