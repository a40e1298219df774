# detr-ray: `make demo` trains the CPU demo, `make test` runs the suite.
# Both set up .venv on first use (torch's CPU wheel first, see constraints-cpu.txt).

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Quiet, fast Ray/MLflow settings for local runs and tests (see ../shared/PLATFORM.md).
export RAY_USAGE_STATS_ENABLED := 0
export RAY_TRAIN_ENABLE_PRINT_PATCH := 0
export RAY_TRAIN_ENABLE_PREEMPTION_WATCHER := 0
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup test test-fast check demo lint bench gpu-check clean

setup: $(STAMP)

# pip's notes about absent local index folders are noise on these machines.
PIP_QUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }

$(STAMP): pyproject.toml constraints-cpu.txt
	@echo "Setting up $(VENV) (first run only, about 2 minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | $(PIP_QUIET)
	$(BIN)/python -m pip install --quiet -r constraints-cpu.txt 2>&1 | $(PIP_QUIET)
	$(BIN)/python -m pip install --quiet -c constraints-cpu.txt -e '.[dev]' 2>&1 | $(PIP_QUIET)
	$(BIN)/python -c "import torch, ray, mlflow, pycocotools, scipy"
	touch $(STAMP)

# Every tier (tests/conftest.py): unit, engine, services, ray, cluster; the ray
# tier in one pytest process beside the others in another (tests/lanes.py).
test: check
	$(BIN)/python tests/lanes.py -q --durations=15

# The unit tier alone: in-process and fast (about a minute and a half).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m unit tests

# Lint, formatting and types; `make test` runs it first.
check: $(STAMP)
	$(BIN)/ruff check detr_ray tests bench
	$(BIN)/ruff format --check detr_ray tests bench
	$(BIN)/mypy

# The demo: generated shapes (once), `detr-ray recipe` writes a config for them
# and a training budget of DEMO_MINUTES (it prints the data's profile and why it
# chose what it chose), then `detr-ray train` runs it on 2 local Ray workers and
# registers the best checkpoint as the MLflow model shapes-detr. Every demo is
# a new run (a repeated run name would resume the finished one).
DEMO_DATA    := data/shapes8k
DEMO_MINUTES ?= 6
demo: $(STAMP)
	test -f $(DEMO_DATA)/annotations/train.json || $(BIN)/detr-ray data synth \
	    --out $(DEMO_DATA) --train 8192 --val 64 --size 128 --seed 0
	name=shapes-$$(date +%Y%m%d-%H%M%S) && \
	$(BIN)/detr-ray recipe --budget-minutes $(DEMO_MINUTES) --name $$name \
	    --train-ann $(DEMO_DATA)/annotations/train.json --train-images $(DEMO_DATA)/train \
	    --val-ann $(DEMO_DATA)/annotations/val.json --val-images $(DEMO_DATA)/val \
	    --out runs/$$name.yaml && \
	$(BIN)/detr-ray train runs/$$name.yaml --set tracking.register_model=shapes-detr

lint: check

bench: $(STAMP)
	$(BIN)/python bench/bench_loss.py

# On a GPU machine: the readiness table (bench/gpu_check.py; --device cpu --tiny in CI).
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
