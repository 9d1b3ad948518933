# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bantai-installed

.PHONY: demo test lint typecheck unit redis-server clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

redis-server:
	@scripts/ensure-redis-server.sh

demo: $(STAMP)
	@scripts/ensure-redis-server.sh --optional
	$(PY) -m bantai.demo

lint: $(STAMP)
	$(PY) -m ruff check src tests $(wildcard benchmarks)
	$(PY) -m ruff format --check src tests $(wildcard benchmarks)

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP) redis-server
	$(PY) -m pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
