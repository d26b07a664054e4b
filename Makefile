# The project's commands. `make run` and `make test` work from a fresh clone: they create the
# virtual environment and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.installed-bench-stamp

.PHONY: help run test crash lint alerts chromium unit integration bench kafka-up kafka-status kafka-down clean

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# the bench extra (quixstreams, py-spy) on top of dev, only for `make bench`
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

run: $(STAMP) ## the main job: local Kafka, a worker and a demo workload
	$(BIN)/python -m streams.demo

test: lint alerts chromium ## everything CI runs: ruff, mypy, the alert rules, unit and integration tests (the crash test and the dashboard's browser test too)
	$(BIN)/pytest

crash: $(STAMP) ## the exactly-once crash test alone, with its counts (CRASH_TEST_ROUNDS=N: more kills)
	$(BIN)/pytest -m crash -s tests/integration/test_crash.py

lint: $(STAMP) ## ruff (lint and format) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy streams schemas projections bench

# promtool comes from Debian's prometheus package, installed once with apt-get when it is not on
# PATH (as root, or with passwordless sudo; about 15 s). On a host running systemd the package
# also enables its prometheus.service; containers without an init system start nothing.
alerts: ## check the Prometheus alert rules (deploy/prometheus) and run their unit tests
	@if ! command -v promtool >/dev/null 2>&1; then \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then \
	    sudo="sudo -n env DEBIAN_FRONTEND=noninteractive"; \
	  else echo "make alerts: promtool is not on PATH and installing it needs root: run" \
	    "'apt-get install prometheus' (or put promtool from prometheus.io on PATH)" >&2; exit 1; fi; \
	  if ! command -v apt-get >/dev/null 2>&1; then echo "make alerts: promtool is not on PATH" \
	    "and there is no apt-get: put promtool from prometheus.io on PATH" >&2; exit 1; fi; \
	  echo "make alerts: promtool is not on PATH: installing Debian's prometheus package (apt-get)"; \
	  log=$$(mktemp); export DEBIAN_FRONTEND=noninteractive; \
	  install="$$sudo apt-get install -y -qq --no-install-recommends prometheus"; \
	  $$install >$$log 2>&1 || { $$sudo apt-get update -qq >>$$log 2>&1 && $$install >>$$log 2>&1; } \
	    || { cat $$log >&2; rm -f $$log; echo "make alerts: installing prometheus failed" >&2; exit 1; }; \
	  rm -f $$log; \
	fi
	@cd deploy/prometheus && promtool check rules alerts.yml >/dev/null \
	  && promtool check config prometheus.yml >/dev/null && promtool test rules alerts_test.yml

# The dashboard's test drives Debian's chromium headless (tests/integration/test_dashboard.py);
# installed once with apt-get when it is not on PATH, as prometheus is above (about 1 min).
# Without it the test is skipped, saying why.
chromium: ## install Debian's chromium for the dashboard's browser test, if it is missing
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then \
	    sudo="sudo -n env DEBIAN_FRONTEND=noninteractive"; \
	  else echo "make chromium: chromium is not on PATH and installing it needs root: run" \
	    "'apt-get install chromium' (the dashboard's browser test is skipped without it)" >&2; exit 1; fi; \
	  if ! command -v apt-get >/dev/null 2>&1; then echo "make chromium: chromium is not on PATH" \
	    "and there is no apt-get: install Chromium (the dashboard's browser test is skipped without it)" >&2; exit 1; fi; \
	  echo "make chromium: chromium is not on PATH: installing Debian's chromium package (apt-get)"; \
	  log=$$(mktemp); export DEBIAN_FRONTEND=noninteractive; \
	  install="$$sudo apt-get install -y -qq --no-install-recommends chromium"; \
	  $$install >$$log 2>&1 || { $$sudo apt-get update -qq >>$$log 2>&1 && $$install >>$$log 2>&1; } \
	    || { cat $$log >&2; rm -f $$log; echo "make chromium: installing chromium failed" >&2; exit 1; }; \
	  rm -f $$log; \
	fi

unit: $(STAMP) ## unit tests only (no broker)
	$(BIN)/pytest tests/unit

integration: $(STAMP) ## integration tests only (starts its own broker)
	$(BIN)/pytest tests/integration

bench: $(BENCH_STAMP) ## benchmarks (with the quixstreams peer) on a broker of their own: a table, and bench/results/latest.json
	$(BIN)/python -m bench

kafka-up: $(STAMP) ## start the local broker on 127.0.0.1:9092
	$(BIN)/orchestrator kafka up

kafka-status: $(STAMP) ## is the local broker up?
	$(BIN)/orchestrator kafka status

kafka-down: $(STAMP) ## stop the local broker
	$(BIN)/orchestrator kafka down

clean: ## remove the virtual environment and caches (not the Kafka jars)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
