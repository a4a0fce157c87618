# cityloop: `make demo` runs the main job, `make test` passes the tests (both install first).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LS_VENV := .venv-labelstudio
LS_STAMP := $(LS_VENV)/.installed
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PREFECT_HOME ?= $(CURDIR)/.cityloop/prefect

.DEFAULT_GOAL := help
.PHONY: help install demo up down test test-fast bench lint clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null || { echo "need $(PY) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Label Studio pins packages that clash with Prefect 3: the server gets its own venv (see labeling/server.py).
$(LS_STAMP): labeling/server-constraints.txt
	test -x $(LS_VENV)/bin/python || $(PY) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q -c labeling/server-constraints.txt label-studio
	touch $(LS_STAMP)

# Headless Chromium for the screenshot tests (Debian's package; the browser is never downloaded by a tool).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	$$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $$SUDO apt-get update -q >/dev/null && \
	$$SUDO apt-get install -y -q chromium >/dev/null; }

install: $(STAMP) $(LS_STAMP) $(CHROMIUM) ## Create .venv (+ Label Studio's own venv, Chromium) with pinned dependencies

demo: install ## Simulate → gate → DVC version → train → ONNX → registry, then the closed loop (active vs random)
	@mkdir -p "$(PREFECT_HOME)"
	$(BIN)/cityloop demo

up: install ## The control room: Prefect server + UI, the deployments, Label Studio (cityloop up)
	@mkdir -p "$(PREFECT_HOME)"
	$(BIN)/cityloop up

down: ## Stop the control room (cityloop down); data stays
	$(BIN)/cityloop down

# Two xdist workers, each test file on one of them (module fixtures are not built twice): the suite
# waits on servers as much as it computes, so the two cores are kept busy (29 -> 19 minutes).
test: install ## Run the whole test suite (slow tests included)
	@mkdir -p "$(PREFECT_HOME)"
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: install ## Tests not marked slow
	@mkdir -p "$(PREFECT_HOME)"
	$(BIN)/python -m pytest -q -m "not slow"

bench: install ## Benchmarks (figures go to benchmarks/results.md)
	$(BIN)/python benchmarks/bench_governance.py
	W=data/models/cityloop-detector/v1/weights.pt; E=data/raw/field-bench; \
	if [ -f $$W ] && [ -d $$E ]; then \
	  $(BIN)/python benchmarks/bench_models.py --weights $$W --eval-images $$E --eval-coco $$E/annotations.coco.json; \
	else $(BIN)/python benchmarks/bench_models.py; fi
	$(BIN)/python benchmarks/bench_labeling.py
	W=data/models/cityloop-detector/v1/weights.pt; E=data/raw/field-bench; \
	if [ -f $$W ]; then $(BIN)/python benchmarks/bench_serving.py --root . --model cityloop-detector:latest \
	  --images $$E/images; else echo "bench_serving: run make demo first (it needs a registered model)"; fi
	if [ -f data/models/cityloop-detector/v1/weights.pt ]; then $(BIN)/python benchmarks/bench_analysis.py --root .; \
	else echo "bench_analysis: run make demo first (it needs a registered model)"; fi

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .

clean: ## Remove generated data, models and state, and the dataset-version tags (keeps .venv)
	rm -rf .cityloop reports data/raw data/frames data/datasets data/quarantine data/models data/inbox data/*.dvc
	git tag -l 'data/*' | xargs -r git tag -d >/dev/null
	git branch -D cityloop/data 2>/dev/null || true
