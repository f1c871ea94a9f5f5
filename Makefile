# The two commands a new machine needs: `make run` (set up and serve) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint docs bench clean system-deps lock image-deps image-test

# Exactly the locked versions (requirements-dev.txt: runtime + dev, every file hashed), then the
# project itself without resolving anything; pip check fails when pyproject.toml has outgrown the lock.
$(BIN)/activate: pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check || { echo "requirements-dev.txt does not satisfy pyproject.toml: run make lock"; exit 1; }
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

test: lint system-deps ## set up (once), lint, type-check and run every test (but the image's)
	$(BIN)/pytest

# Debian's Docker engine and debootstrap (for the stand-in base image where no registry answers).
image-deps:
	@if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null; } \
	      || echo "note: installing docker.io failed: the image test will skip"; \
	  else echo "note: dockerd/debootstrap missing (apt-get install docker.io debootstrap)"; fi; \
	fi

image-test: $(BIN)/activate image-deps ## build the image and run it as deploy/k8s/ does, on a real Docker engine
	$(BIN)/pytest -m image tests/image
	@cat test-artifacts/image.json

docs: $(BIN)/activate ## regenerate docs/rules.md from the rule set
	$(BIN)/python -m service.engine.catalogue > docs/rules.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

bench: $(BIN)/activate ## latency benchmark, production config on loopback (needs wrk and Redis)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python bench/run.py

# Re-resolve both lock files from pyproject.toml with uv: the newest versions its ranges allow, for
# every Python >= 3.11 and platform (markers kept: Debian's own 3.11.2 needs async-timeout, 3.11.7
# does not), every file's hash, and the setuptools build backend. The image's requirements.txt
# (runtime only) is constrained to requirements-dev.txt's versions. `make lock UPGRADE=` keeps the
# current pins and only adds or drops what pyproject.toml changed.
UPGRADE ?= --upgrade
UV_COMPILE = $(BIN)/uv pip compile --quiet $(UPGRADE) --system-certs --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command 'make lock'
BUILD_REQUIRES = $(BIN)/python -c "import tomllib; \
	print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')"
lock: ## upgrade the pinned, hashed dependencies (requirements.txt, requirements-dev.txt)
	@# uv comes from the lock itself; a venv whose pip check failed (the lock is stale) still has it.
	@test -x $(BIN)/uv || $(MAKE) --no-print-directory $(BIN)/activate || test -x $(BIN)/uv
	$(BUILD_REQUIRES) | $(UV_COMPILE) --extra dev -o requirements-dev.txt pyproject.toml -
	$(BUILD_REQUIRES) | $(UV_COMPILE) -c requirements-dev.txt -o requirements.txt pyproject.toml -
