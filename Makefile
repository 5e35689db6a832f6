# regx: `make train` and `make test` are the quickstart; both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.regx-installed
ARGS ?=

.PHONY: help install train smoke test test-all lint bench bench-gpu gpu-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install regx with its dev extras

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

train: install ## run the default experiment on the embedded data (ARGS="aug=flip_rotate wd=1e-4")
	$(BIN)/regx train $(ARGS)

smoke: install ## a seconds-long CPU run (the CI preset)
	REGX=$(BIN)/regx bash cli/smoke.sh $(ARGS)

test: install ## the fast test suite (CPU, no network; one worker per core)
	$(BIN)/python -m pytest -q -m "not slow" -n auto $(ARGS)

test-all: install ## every test, slow ones included
	$(BIN)/python -m pytest -q -n auto $(ARGS)

lint: install ## ruff and the import layers (lint-imports)
	$(BIN)/ruff check regx tests benchmarks
	$(BIN)/lint-imports

bench: install ## benchmarks (not tests): regx vs a hand-written loop and torchvision; writes BENCHMARKS.md
	$(BIN)/python -m benchmarks.bench

bench-gpu: install ## the same on a CUDA GPU; fills BENCHMARKS.md's GPU section
	$(BIN)/python -m benchmarks.bench --device cuda

gpu-check: install ## on a CUDA machine: tests/test_gpu.py and the GPU benchmark, into gpu-out/
	PATH=$(BIN):$$PATH OUT=gpu-out bash cli/gpu_check.sh

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf outputs/runs outputs/sweeps gpu-out .pytest_cache .ruff_cache
