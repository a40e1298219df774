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

# Every demo is a new run (a repeated run name would resume the finished one).
demo: $(STAMP)
	$(BIN)/detr-ray train configs/shapes_tiny.yaml --set run.name=shapes_tiny-$$(date +%Y%m%d-%H%M%S)

lint: check

bench: $(STAMP)
	$(BIN)/python bench/bench_loss.py

# On a GPU machine: the readiness table (bench/gpu_check.py; --device cpu --tiny in CI).
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
