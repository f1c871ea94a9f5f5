# The two commands a new machine needs: `make run` (set up and serve) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint docs bench clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

run: $(BIN)/activate ## set up (once) and serve on embedded defaults
	$(BIN)/gunicorn --bind $(HOST):$(PORT) --workers 2 'service.app:create_app()'

lint: $(BIN)/activate
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint ## set up (once), lint, type-check and run every test
	$(BIN)/pytest

docs: $(BIN)/activate ## regenerate docs/rules.md from the rule set
	$(BIN)/python -m service.engine.catalogue > docs/rules.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

bench: $(BIN)/activate ## latency benchmark on loopback (needs wrk: apt-get install wrk)
	$(BIN)/python bench/run.py
