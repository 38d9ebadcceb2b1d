# fusedrnn: every command sets itself up (virtual environment, torch, build).
#   make bench      the main job: benchmark harness, default preset (fusedrnn vs torch.nn)
#   make test       the test suite, then the CUDA kernels' SIMT tests under ASan+UBSan and TSan
#   make demo       train a small fusedrnn.LSTM next to torch.nn.LSTM
#   make wheel      sdist and a wheel built from it, in dist/ (same CUDA settings as build)
#   make gpu-check OUT=dir [STAGES="build test sanitize bench"]   on a GPU machine
#                   with torch installed (no network): gpu_check/run.sh

SHELL    := /bin/bash
VENV     ?= .venv
PY       := $(VENV)/bin/python
# CUDA_HOME is found by setup.py; the arch list defaults to sm_90 without a GPU.
BUILD_ENV := MAX_JOBS=$${MAX_JOBS:-2}
PYTEST_ARGS ?=
OUT      ?= gpu-report

.PHONY: setup build simt test bench demo wheel gpu-check clean

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.deps: $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch numpy pybind11 ninja setuptools wheel pytest pytest-benchmark expecttest matplotlib \
		onnx onnxscript onnxruntime build
	touch $@

setup: $(VENV)/.deps

# The build log keeps ptxas's report, which gpu_check/check_ptxas.py checks
# against sm_90's limits (spills, registers, shared memory).
build: setup
	mkdir -p build
	set -o pipefail; FUSEDRNN_PTXAS_VERBOSE=1 $(BUILD_ENV) $(PY) setup.py -q build_ext --inplace \
		2>&1 | tee build/build.log | { grep -v -E "^ptxas info|bytes stack frame" || true; }
	$(PY) gpu_check/check_ptxas.py build/build.log

# The CUDA kernel sources built to run on the CPU (csrc/simt/): plain, ASan+UBSan, TSan.
simt: setup
	$(BUILD_ENV) $(PY) csrc/simt/build.py plain asan tsan

test: build simt
	FUSEDRNN_REQUIRE_SIMT=1 $(PY) -m pytest -q tests $(PYTEST_ARGS)
	bash tests/run_sanitized.sh asan $(PY)
	bash tests/run_sanitized.sh tsan $(PY)

bench: build
	$(PY) -m fusedrnn.bench --preset default --out bench-out

demo: build
	$(PY) -m fusedrnn.demo

wheel: setup
	$(BUILD_ENV) $(PY) -m build --no-isolation --outdir dist .

gpu-check:
	bash gpu_check/run.sh $(OUT) $(STAGES)

clean:
	rm -rf build dist fusedrnn/_C*.so fusedrnn/_simt*.so *.egg-info
