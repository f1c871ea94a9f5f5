# The two commands a new machine needs: `make run` (set up and serve) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint docs bench clean system-deps

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

run: $(BIN)/activate ## set up (once) and serve on embedded defaults
	TWITCH_CDS_BIND=$(HOST):$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py

lint: $(BIN)/activate
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Headless Chromium for the browser tests (Debian packages; no browser download). Installed when
# missing and running as root (CI); elsewhere the browser tests skip and say how to install it.
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-dejavu-core >/dev/null; } \
	      || echo "note: installing chromium failed: browser tests will skip"; \
	  else echo "note: chromium/chromedriver missing (apt-get install chromium chromium-driver): browser tests will skip"; fi; \
	fi

test: lint system-deps ## set up (once), lint, type-check and run every test
	$(BIN)/pytest

docs: $(BIN)/activate ## regenerate docs/rules.md from the rule set
	$(BIN)/python -m service.engine.catalogue > docs/rules.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

bench: $(BIN)/activate ## latency benchmark, production config on loopback (needs wrk and Redis)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python bench/run.py
