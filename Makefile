# Real-time fraud scoring on Triton. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages: libgomp1 (LightGBM's OpenMP runtime), redis-server (online store, tests),
# libpython3.11 and python3.11-venv (the Triton Python backend's stub links Debian's Python,
# so the serving environment is made from it too: its standard library must match),
# libb64-0d (perf_analyzer links it), chromium and chromium-driver (the image page's test),
# prometheus (promtool checks and unit-tests the rules in deploy/prometheus).
APT_PACKAGES := libgomp1 redis-server libpython3.11 python3.11-venv libb64-0d chromium chromium-driver
# Installed without their recommends (no exporters or daemons beside them).
APT_BARE_PACKAGES := prometheus
SERVING_PYTHON := /usr/bin/python3.11
# The serving interpreter of the Triton Python-backend models (numpy<2, no Feast).
SERVING_VENV := .venv-serving
PYTRITON := nvidia-pytriton==0.7.0
# The chart's validators (kubernetes-validate, checkov) and helm (from a PyPI wheel), apart.
CHART_VENV := .venv-chart
# Size of the simulated data for `make engines`: tiny | small | default.
SCALE ?= default

.PHONY: help setup test-unit test-integration engines eval-real features feature-bench records records-bench feature-parity serve stop observe retrain loop feature-groups rollout perf-mesh perf-analysis trace-report demo perf perf-image perf-recommender recommender chaos broker-holes image-model image-api test lint fmt clean
# Scale built by `make serve` / `make demo` when no model is built yet (small: about a minute).
DEMO_SCALE ?= small
# Online store: sqlite (embedded, default) or redis (with REDIS_URL).
FEATURE_STORE ?= sqlite
export FEATURE_STORE
FEATURE_DATA ?= build/data/$(SCALE)
export FEATURE_DATA

help:  ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt requirements-serving.txt requirements-chart.txt Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	@missing=""; for p in $(APT_BARE_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@test -x $(SERVING_VENV)/bin/python || $(SERVING_PYTHON) -m venv $(SERVING_VENV)
	$(SERVING_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-serving.txt
	$(SERVING_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps $(PYTRITON)
	$(SERVING_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@test -x $(CHART_VENV)/bin/python || $(PYTHON) -m venv $(CHART_VENV)
	$(CHART_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-chart.txt
	$(PY) -m client.chart install-helm
	@touch $@

setup: $(STAMP)  ## Create .venv and install pinned dependencies (idempotent)

engines: $(STAMP)  ## Simulate data, train primary/fallback/baseline, ONNX, INT8, engines, reports
	$(PY) -m build_engines all --scale $(SCALE) $(if $(FORCE),--force)

eval-real: $(STAMP)  ## Train and evaluate on the real ULB credit-card fraud data set
	$(PY) -m build_engines eval-real

$(FEATURE_DATA)/transactions.parquet: | $(STAMP)
	$(PY) -m build_engines all --scale $(SCALE)

features: $(STAMP) $(FEATURE_DATA)/transactions.parquet  ## Apply the Feast repo and materialize into FEATURE_STORE
	$(PY) -m feature_repo materialize

records: $(STAMP)  ## Regenerate python_backend/records_pb2.py from records.proto (the topics' binary records)
	$(PY) -m grpc_tools.protoc -I. --python_out=. python_backend/records.proto

records-bench: $(STAMP) $(FEATURE_DATA)/transactions.parquet  ## Binary records against JSON: CPU per record and bytes -> perf/results/records.md
	$(PY) -m perf records

feature-bench: $(STAMP) $(FEATURE_DATA)/transactions.parquet  ## Online read latency, reader vs Feast SDK, sqlite and redis
	$(PY) -m perf feature-bench

feature-parity: $(STAMP) $(FEATURE_DATA)/transactions.parquet  ## Replay a day through Kafka; compare online and offline features
	$(PY) -m perf feature-parity

# Triton replicas behind Envoy for `make serve` (0: one server on the ports, no Envoy).
REPLICAS ?= 0
export REPLICAS
# 1: the heavy model's analysis consumer (and a local broker) beside `make serve`.
ANALYSIS ?= 0
export ANALYSIS
serve: $(STAMP)  ## Build what is missing, start Triton in the background (gRPC 8001, HTTP 8000, metrics 8002; REPLICAS=N: N behind Envoy; ANALYSIS=1: the heavy model's analysis beside it)
	$(PY) -m client serve --scale $(DEMO_SCALE) --replicas $(REPLICAS)

stop:  ## Stop the background Triton server, the image API, the collector and Prometheus
	@if [ -x $(PY) ]; then $(PY) -m client stop; fi

observe: $(STAMP)  ## Span collector (OTLP 4318) and Prometheus (9090) beside `make serve`; `make stop` stops them
	$(PY) -m client observe

retrain: $(STAMP)  ## A challenger from the newest labelled window (late labels, declines imputed), plain and distilled, gated against the champion; published as the next fraud_primary version if it passes -> build/reports/retrain.md
	$(PY) -m client retrain $(if $(NO_PUBLISH),--no-publish)

loop: $(STAMP)  ## The whole loop: serve, replay days, labels arrive, retrain, gate, roll out, promote (small scale, under 10 min) -> build/reports/loop.json
	$(PY) -m client loop --scale $(DEMO_SCALE)

feature-groups: $(STAMP)  ## What each feature group is worth (PR-AUC lost without it) beside its serving cost -> perf/results/feature_groups.md
	$(PY) -m perf feature-groups --scale $(DEMO_SCALE)

rollout: $(STAMP)  ## Roll out fraud_primary VERSION=N (PUBLISH=copy|inverted|file.onnx first): shadow, canary, promote or roll back
	@test -n "$(VERSION)" || { echo "make rollout VERSION=N [PUBLISH=copy|inverted|path.onnx]"; exit 2; }
	$(PY) -m client rollout --version $(VERSION) $(if $(PUBLISH),--publish $(PUBLISH))

perf-mesh: $(STAMP)  ## What Envoy adds: the same load direct and through Envoy, side by side -> perf/results/mesh
	$(PY) -m perf mesh --scale $(DEMO_SCALE) $(if $(filter 1,$(PERF_QUICK)),--quick)

perf-analysis: $(STAMP)  ## The analysis consumer beside the service: its lag, and serving with it and without -> build/reports/analysis.md
	$(PY) -m perf analysis --scale $(DEMO_SCALE) $(if $(filter 1,$(PERF_QUICK)),--quick)

trace-report: $(STAMP)  ## A traced load run: per-stage p50/p99 and the slowest 1% as waterfalls -> perf/results/traces
	$(PY) -m perf trace-report --scale $(DEMO_SCALE) $(if $(filter 1,$(PERF_QUICK)),--quick)

demo: $(STAMP)  ## The main job: build, serve, replay a day over gRPC, fail the primary on purpose, stop
	$(PY) -m client demo --scale $(DEMO_SCALE)

image-model: $(STAMP)  ## EfficientNet-Lite0: ONNX (checked), INT8, engines where possible, repository
	$(PY) -m build_engines image $(if $(FORCE),--force)

IMAGE_API_PORT ?= 8080
export IMAGE_API_PORT
image-api: $(STAMP)  ## Image web API on IMAGE_API_PORT (8080) and its Triton, in the background
	$(PY) -m client image-api --port $(IMAGE_API_PORT)

perf-image: $(STAMP)  ## Image API latency per stage and end to end -> perf/results/image (PERF_QUICK=1)
	$(PY) -m perf image $(if $(filter 1,$(PERF_QUICK)),--quick)

perf: $(STAMP)  ## Benchmark: perf_analyzer sweeps and peers side by side -> perf/results (PERF_QUICK=1: <5 min)
	$(PY) -m perf --scale $(DEMO_SCALE)

recommender: $(STAMP)  ## MovieLens top-5 recommender: train, evaluate, ONNX, repository, online store
	$(PY) -m build_engines recommender $(if $(FORCE),--force)
	$(PY) -m feature_repo recommender

perf-recommender: $(STAMP)  ## recommend_top5 perf_analyzer sweep + click freshness -> perf/results/recommender
	$(PY) -m perf recommender $(if $(filter 1,$(PERF_QUICK)),--quick)

chaos: $(STAMP)  ## Faults one at a time under 200 req/s; decision log reconciled (CHAOS_QUICK=1, CHAOS_SOAK_S=N, CHAOS_FAULTS=a,b)
	$(PY) -m perf chaos --scale $(DEMO_SCALE) $(if $(filter 1,$(CHAOS_QUICK)),--quick)

broker-holes: $(STAMP)  ## Concurrent producers vs the stream consumer: holes in offsets re-read, none lost
	$(PY) -m perf.broker_holes

test: $(STAMP)  ## Lint and run the test suite (no tests collected counts as a failure)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-unit: $(STAMP)  ## The unit tests only (pure logic, no build, no server: seconds)
	@rc=0; $(PY) -m pytest tests/unit $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-integration: $(STAMP)  ## The integration tests only (a tiny build, real Triton, Redis, broker)
	@rc=0; $(PY) -m pytest tests/integration $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: $(STAMP)  ## Ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

fmt: $(STAMP)  ## Format the code
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:  ## Remove built data, models and reports (keeps .venv and the committed model.py files)
	rm -rf build
	git clean -qfdX model_repository
