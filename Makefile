# regx: `make train` and `make test` are the quickstart; both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check --progress-bar on
INSTALLED := $(VENV)/.regx-installed
DEV := $(VENV)/.regx-dev-installed
ARGS ?=

.PHONY: help install install-dev train smoke test test-all lint format docs bench bench-gpu gpu-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(INSTALLED) ## create .venv and install regx with what training needs

$(INSTALLED): pyproject.toml | $(BIN)/python
	@echo "regx: installing regx and what training needs into $(VENV) (torch is most of it; minutes the first time)"
	$(PIP) -e .
	@touch $@

install-dev: $(DEV) ## also what testing needs: pytest, ruff, import-linter and every optional extra the tests exercise

$(DEV): pyproject.toml $(INSTALLED)
	@echo "regx: installing what the tests need (regx[dev])"
	$(PIP) -e '.[dev]'
	@touch $@

train: install ## run the default experiment on the embedded data (ARGS="aug=flip_rotate wd=1e-4")
	$(BIN)/regx train $(ARGS)

smoke: install ## a seconds-long CPU run (the CI preset)
	REGX=$(BIN)/regx bash cli/smoke.sh $(ARGS)

test: install-dev ## the fast test suite (CPU, no network; one worker per core)
	$(BIN)/python -m pytest -q -m "not slow" -n auto --dist worksteal $(ARGS)

test-all: install-dev ## every test, slow ones included
	$(BIN)/python -m pytest -q -n auto $(ARGS)

lint: install-dev ## ruff format --check, ruff check, and the import layers (lint-imports)
	$(BIN)/ruff format --check regx tests benchmarks cli
	$(BIN)/ruff check regx tests benchmarks cli
	$(BIN)/lint-imports

format: install-dev ## ruff format and ruff check --fix
	$(BIN)/ruff format regx tests benchmarks cli
	$(BIN)/ruff check --fix regx tests benchmarks cli

docs: install ## regenerate docs/config.md from the schema (a test fails when it is stale)
	$(BIN)/python -m regx.reference > docs/config.md

bench: install-dev ## benchmarks (not tests): regx vs a hand-written loop and torchvision; writes BENCHMARKS.md
	$(BIN)/python -m benchmarks.bench

bench-gpu: install-dev ## the same on a CUDA GPU; fills BENCHMARKS.md's GPU section
	$(BIN)/python -m benchmarks.bench --device cuda

gpu-check: install-dev ## on a CUDA machine: tests/test_gpu.py and the GPU benchmark, into gpu-out/
	PATH=$(BIN):$$PATH OUT=gpu-out bash cli/gpu_check.sh

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf outputs/runs outputs/sweeps gpu-out .pytest_cache .ruff_cache
