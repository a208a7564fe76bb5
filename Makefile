# Streaming CDP. `make help` lists the targets. Everything installs into the work tree (.venv, .local).
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
KAFKA := deploy/local/kafka.sh
# Every package of the project (tests/test_architecture.py holds their layers).
PACKAGES := schemas rules core analytics traffic config sinks streams ops bench cdp_cli
# A broker named by CDP_KAFKA_BOOTSTRAP (other than the local default) is used as is and never started here.
LOCAL_KAFKA := $(if $(filter-out 127.0.0.1:9092 localhost:9092,$(CDP_KAFKA_BOOTSTRAP)),,yes)

.PHONY: help setup up down demo test test-unit test-integration bench lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

# The core's per-event modules compiled with mypyc (core/native.py); rebuilt when a core source changes. A failed
# build leaves the pipeline on plain Python and says why.
NATIVE := .local/native/manifest.json
$(NATIVE): $(STAMP) $(wildcard core/*.py) deploy/local/build_native.py
	@$(BIN)/python deploy/local/build_native.py

setup: $(STAMP) $(NATIVE) ## create .venv, install the project (again only when pyproject.toml changed), compile the core
	@$(KAFKA) fetch
	@bash deploy/local/browser.sh

up: setup ## start the local Kafka broker (KRaft, 127.0.0.1:9092); a no-op when it runs
	@if [ -n "$(LOCAL_KAFKA)" ]; then $(KAFKA) up; else echo "using Kafka at $(CDP_KAFKA_BOOTSTRAP)"; fi

down: ## stop the local Kafka broker
	@$(KAFKA) down

demo: setup ## run the whole pipeline on a synthetic shop's traffic and print what it did
	@bash deploy/local/demo.sh

test: setup ## every test: unit, agent, integration against the real broker and embedded ClickHouse
	@bash deploy/local/with-kafka.sh $(BIN)/pytest -q
	@echo "and the core as plain Python (what runs where the compiled core is not built):"
	@CDP_PURE_PYTHON=1 $(BIN)/pytest -q tests/core tests/schemas

test-unit: setup ## the tests that need no broker
	$(BIN)/pytest -q -m "not integration"

bench: setup ## the benchmark: pipeline and identity rates against the raw consume rate, same run; RocksDB bytes
	@bash deploy/local/with-kafka.sh $(BIN)/cdp bench --json

lint: setup ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy $(PACKAGES)

clean: down ## remove local state (broker data, ClickHouse, worker state); keeps .venv and the Kafka jars
	rm -rf .local/kafka/data .local/kafka/logs .local/clickhouse .local/state .local/demo
