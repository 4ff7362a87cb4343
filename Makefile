# tokenbook — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create the venv and install tokenbook with its dev dependencies

system-deps: ## apt packages the tests need (redis-server, promtool); run as root
	@command -v redis-server >/dev/null && command -v promtool >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server prometheus >/dev/null; }

protos: $(STAMP) ## compile protos/tokenbook/v1/*.proto into src/tokenbook/v1 (committed)
	$(PY) -m grpc_tools.protoc -I protos --python_out=src --pyi_out=src --grpc_python_out=src protos/tokenbook/v1/*.proto

envoy-configs: $(STAMP) ## re-render the Envoy configs in envoy/ from `tokenbook envoy-config`
	$(PY) -m tokenbook.envoyconfig.regen

lint: $(STAMP) ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

fmt: $(STAMP) ## format the code
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

test: $(STAMP) system-deps ## the whole test suite: unit, in-process gRPC, e2e (real Envoy + Redis + SDKs)
	$(BIN)/pytest -q -p no:cacheprovider --timeout=300 tests

test-unit: $(STAMP) ## only the fast unit tests
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

check: lint test ## lint + test, and fail on a dirty tree (generated files stale)
	$(PY) -m tokenbook.envoyconfig.regen --check
	@git diff --exit-code --stat || { echo "the tree changed while checking: commit or regenerate"; exit 1; }

demo: $(STAMP) system-deps ## run the demo: Redis + tokenbook + Envoy + a fake provider + SDK traffic
	$(PY) -m tokenbook.demo $(if $(DURATION),--duration $(DURATION),)

bench: $(STAMP) system-deps ## the benchmark: plain Envoy vs no-op ext_proc vs tokenbook (~8-10 min; prints tables, the targets' verdicts and, if one is missed, a profile; writes bench/results/latest.json)
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(PY) bench/run.py $(BENCH_ARGS)

bench-processors: $(STAMP) system-deps ## tokenbook's own CPU per request, without Envoy (~30 s; bench/processor_bench.py)
	$(PY) bench/processor_bench.py

clean: ## remove the venv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build src/*.egg-info

.PHONY: help install system-deps protos envoy-configs lint fmt test test-unit check demo bench bench-processors clean
