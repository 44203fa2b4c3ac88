# The README's two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.l0-installed

TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.l0-installed

.PHONY: install model demo test test-fast kernels-check services triton triton-torch bench gpu-check clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,test]'
	# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm`
	# next to torch+cpu; vLLM runs without them.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

install: $(STAMP)

# A real tritonserver for the Triton tests: the binary, Python backend and
# stubs bundled in nvidia-pytriton (installed without its numpy<2 pin, which
# vLLM's environment can't meet), and the Python environment Triton's stub runs
# L0's models in: numpy<2, because the bundled stubs are built against numpy 1
# (with numpy 2 they exchange corrupted tensors). L0 itself goes in editable.
$(TRITON_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q --no-deps 'nvidia-pytriton==0.7.0'
	python3 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q 'numpy<2' pyyaml
	$(TRITON_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

triton: $(TRITON_STAMP)

# For bench/bench_triton.py only: a stub environment that also sees the main
# environment's torch (after its own numpy<2), so L0 runs its fused C kernel
# inside Triton as it would in a Triton image that ships torch.
triton-torch: $(TRITON_STAMP)
	python3 -m venv .venv-triton-torch
	.venv-triton-torch/bin/python -m pip install -q 'numpy<2' pyyaml
	.venv-triton-torch/bin/python -m pip install -q --no-deps -e .
	echo "$(abspath $(VENV))/lib/python3.11/site-packages" > .venv-triton-torch/lib/python3.11/site-packages/zz-l0-main-venv.pth

model: install
	$(PY) -m l0.engine.models

kernels-check:
	@if command -v nvcc >/dev/null; then bash bench/check_kernels.sh; \
	 else echo "nvcc not found: CUDA build check skipped"; fi

# Debian's redis-server for the checkpoint-store tests (started by the tests
# themselves on loopback). Installed when missing and we may (root, apt-get).
services:
	@if ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server missing: install it (Debian: apt-get install redis-server)"; fi; fi

# Two workers, a whole module each, the modules that start fleets one after
# another on one worker (tests/conftest.py groups and orders them): most
# end-to-end modules decode on one core, so two side by side use both.
# TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: install model kernels-check services triton
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

# The inner loop: every test but the *_e2e.py files (those start real vLLM
# engines, tritonservers and fleets); ~2 minutes on the 2-core CI VM, ~710
# tests. `make test` (what CI runs) is the whole suite.
test-fast: install model
	$(PY) -m pytest -q --ignore-glob='*_e2e.py'

# On a machine with an NVIDIA GPU, with that machine's own python3 (torch+CUDA,
# CuPy, pytest, hypothesis, nvidia-ml-py; no venv, no vLLM): proves the device
# path in a few minutes and writes bench/results/gpu_check_<device>.json.
# Without a CUDA device it says so and fails.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) bench/gpu_check.py

demo: install
	$(VENV)/bin/l0 demo

bench: install model
	$(PY) bench/bench_detect.py
	$(PY) bench/bench_workload.py

clean:
	rm -rf $(VENV) $(TRITON_VENV) .venv-triton-torch build dist
