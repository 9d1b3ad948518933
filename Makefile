# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bantai-installed

.PHONY: demo test lint typecheck unit packaging bench bench-smoke chaos redis-server clean

# The extension must build here: BANTAI_REQUIRE_EXTENSIONS=1 turns a silent fallback to
# pure Python into a failed install.
$(STAMP): pyproject.toml setup.py src/bantai/redis/_speedups.pyx src/bantai/redis/_single_key.pyx \
  src/bantai/redis/single_key.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	BANTAI_REQUIRE_EXTENSIONS=1 $(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

redis-server:
	@scripts/ensure-redis-server.sh

demo: $(STAMP)
	@scripts/ensure-redis-server.sh --optional
	$(PY) -m bantai.demo

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

# The library (mypy --strict), then what users see: the typing tests under mypy --strict
# and pyright (strict), and every README example under mypy --strict.
typecheck: $(STAMP)
	$(PY) -m mypy
	$(PY) -m mypy --strict tests/typing
	PYRIGHT_PYTHON_IGNORE_WARNINGS=1 $(PY) -m pyright
	$(PY) scripts/typecheck-readme.py

# The whole suite twice: compiled, then the pure-Python twin.
unit: $(STAMP) redis-server
	BANTAI_EXPECT_IMPLEMENTATION=cython $(PY) -m pytest
	BANTAI_NO_EXTENSIONS=1 BANTAI_EXPECT_IMPLEMENTATION=python $(PY) -m pytest

packaging: $(STAMP)
	PY=$(PY) scripts/check-packaging.sh

# The chaos suite at length (make test runs an 8-second version): one minute per build.
chaos: $(STAMP) redis-server
	BANTAI_CHAOS_SECONDS=60 BANTAI_EXPECT_IMPLEMENTATION=cython $(PY) -m pytest -q -s tests/test_chaos.py
	BANTAI_CHAOS_SECONDS=60 BANTAI_NO_EXTENSIONS=1 BANTAI_EXPECT_IMPLEMENTATION=python \
	  $(PY) -m pytest -q -s tests/test_chaos.py

bench-smoke: $(STAMP) redis-server
	$(PY) -m benchmarks.run --smoke

bench: $(STAMP) redis-server
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) -m benchmarks.run

test: lint typecheck unit packaging bench-smoke

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache \
	  src/bantai/redis/_speedups.c src/bantai/redis/_single_key.c src/bantai/redis/*.so
