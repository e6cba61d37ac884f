# The two set-up-and-go commands (see README): `make demo` and `make test`.
# Both create the CPU venv on first use (scripts/setup-env.sh, idempotent).
SHELL := /bin/bash
VENV := .venv
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export VLLM_CACHE_ROOT := $(CURDIR)/.cache/vllm
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/torchinductor
export VLLM_CPU_KVCACHE_SPACE ?= 2
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1
export RAY_USAGE_STATS_ENABLED := 0
export KUBERAY_CRD_DIR ?= $(abspath $(CURDIR)/../shared/kuberay-crds)

.PHONY: setup demo test lint format bench
setup:
	@bash scripts/setup-env.sh

demo: setup
	$(VENV)/bin/internvl-batch demo

# Lint and format are part of the test command, so CI enforces them.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Every figure of the README's "Measured" table, from the commands printed there (hours on
# 2 cores; never part of `make test`): writes benchmarks/results.{json,md} and regenerates
# that table. BENCH_ARGS="--only engine,peers" reruns some rows; "--list" names them.
bench: setup
	$(VENV)/bin/python benchmarks/suite.py $(BENCH_ARGS)
