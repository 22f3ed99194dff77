# DiLaServe: `make up` starts the local cluster, `make test` runs the test suite.
# Both set up .venv first (idempotent: a stamp file skips the install when nothing changed).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
WORKERS ?= 2
PORT ?= 8000

.PHONY: setup up test redis-server clean

setup: $(STAMP) redis-server

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q --upgrade pip
	# torch first and pinned: the CPU wheel installs from local disk; GPU users bring their own CUDA build.
	$(VENV)/bin/pip install --disable-pip-version-check -q torch==2.13.0
	$(VENV)/bin/pip install --disable-pip-version-check -q -e '.[test]'
	@touch $(STAMP)

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server from Debian packages"; \
		SUDO=$$(command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@# Sentinel for `dilaserve up --ha`; without the package it runs as `redis-server --sentinel` (the same program).
	@command -v redis-sentinel >/dev/null 2>&1 || { \
		echo "installing redis-sentinel from Debian packages"; \
		SUDO=$$(command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo); \
		{ $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-sentinel >/dev/null; } \
		|| echo "redis-sentinel not installed: dilaserve up --ha falls back to redis-server --sentinel"; }

up: setup
	$(VENV)/bin/dilaserve up --workers $(WORKERS) --port $(PORT)

test: setup
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache runs .run
