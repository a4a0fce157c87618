# cityloop: `make demo` runs the main job, `make test` passes the tests (both install first).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PREFECT_HOME ?= $(CURDIR)/.cityloop/prefect

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast bench lint clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null || { echo "need $(PY) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install cityloop with pinned dependencies

demo: $(STAMP) ## Simulate → gate → DVC version, then train → ONNX → registry → promotion gate
	$(BIN)/cityloop demo

test: $(STAMP) ## Run the whole test suite (slow tests included)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## Tests not marked slow
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP) ## Benchmarks (figures go to benchmarks/results.md)
	$(BIN)/python benchmarks/bench_governance.py
	W=data/models/cityloop-detector/v1/weights.pt; E=data/raw/field-bench; \
	if [ -f $$W ] && [ -d $$E ]; then \
	  $(BIN)/python benchmarks/bench_models.py --weights $$W --eval-images $$E --eval-coco $$E/annotations.coco.json; \
	else $(BIN)/python benchmarks/bench_models.py; fi

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .

clean: ## Remove generated data and state (keeps .venv)
	rm -rf .cityloop reports data/raw data/frames data/datasets data/quarantine data/*.dvc
