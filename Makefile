# Timbral — every entry point. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export OPENBLAS_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: help setup system-deps demo test test-fast lint bench bench-train loadtest k8s-validate clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-14s %s\n", $$1, $$2}'

system-deps: ## install missing system packages (redis-server) with apt-get
	@command -v redis-server >/dev/null || { echo "installing redis-server"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) \
	  || { echo "could not install redis-server: run 'sudo apt-get install redis-server'" >&2; exit 1; }; }

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11+) on PATH" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[test,bench]'
	$(PIP) check
	touch $(STAMP)

setup: system-deps $(STAMP) ## create .venv with the project (editable) and every dependency

demo: setup ## end to end on embedded defaults: local S3 + MLflow, data, train, register, serve, answer
	$(VENV)/bin/timbral demo

test: setup ## the whole suite (unit, integration, end-to-end incl. slow)
	$(VENV)/bin/ruff check timbral training service tests loadtest
	$(PY) -m pytest -q

test-fast: setup ## the suite without the slow end-to-end tier
	$(PY) -m pytest -q -m "not slow"

lint: setup ## ruff
	$(VENV)/bin/ruff check timbral training service tests loadtest

clean: ## remove the venv and local state
	rm -rf $(VENV) .timbral build .pytest_cache

bench-train: setup ## training benchmark: fit time/peak memory by size; quality vs popularity and implicit ALS
	$(PY) -m training.bench
