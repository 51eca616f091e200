# Two entry points for a fresh machine:
#   make repro  - set up (venv, pinned install, offline assets) and run the default study
#   make test   - set up and run the fast test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PATH := $(BIN):$(PATH)

.PHONY: setup assets repro test test-slow bench ui server clean

setup: $(STAMP) assets

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Fetch and verify the offline model assets (no-op when present and intact), then make
# sure DVC's cache holds data/ so `dvc status` and `dvc push` see it in sync.
assets: $(STAMP)
	$(BIN)/bgbias assets
	@$(BIN)/dvc status data.dvc | grep -q 'not in cache\|changed' && $(BIN)/dvc commit --force --quiet data.dvc || true

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/pytest -q

test-slow: setup
	$(BIN)/pytest -q -m slow

bench: setup
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python benchmarks/masks.py
	$(BIN)/python benchmarks/train_throughput.py --crop 96 --prepared

# MLflow UI on the project's store (runs of `dvc repro` and every `dvc exp run`).
ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --port $${PORT:-5000}

# A local MLflow tracking server on a local PostgreSQL (data in outputs/server/, kept), for
# trying the shared-services path: it prints the tracking.uri and tune.storage to set.
server: setup
	$(BIN)/bgbias server --port $${PORT:-5000}

clean:
	rm -rf $(VENV) outputs reports/*.json
