# Two commands for a newcomer: `make demo` and `make test`. Both create .venv if it
# is missing and install edgepack with every extra, pinned by constraints.txt
# (torch==2.13.0: any other torch pulls several GB of CUDA wheels). A stamp file
# makes a second run take seconds.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgepack-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: demo test test-flower install system-deps lint typecheck bench clean

$(STAMP): pyproject.toml constraints.txt edgepack/federated/_fastsum.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all]'
	@touch $@

install: $(STAMP)

# What the tests need from Debian: chromium, for report and dashboard checks in a real browser;
# postgresql, whose initdb/pg_ctl start a throwaway server so the database tests also run on
# PostgreSQL (tests/support/postgres.py; no system service is used); wrk, the check-in
# benchmark's load generator (benchmarks/bench_fleet.py).
system-deps:
	@pkgs=""; \
	command -v chromium >/dev/null 2>&1 || pkgs="$$pkgs chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || pkgs="$$pkgs postgresql"; \
	command -v wrk >/dev/null 2>&1 || pkgs="$$pkgs wrk"; \
	if [ -n "$$pkgs" ]; then \
	  echo "installing from Debian (once):$$pkgs"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$pkgs >/dev/null; \
	fi

test: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) examples/demo.py

# The Flower adapter in its own environment (flwr's pins conflict with tensorflow's).
FLWR_VENV := .venv-flwr
test-flower:
	@test -x $(FLWR_VENV)/bin/python || $(PYTHON) -m venv $(FLWR_VENV)
	$(FLWR_VENV)/bin/python -m pip install --quiet --disable-pip-version-check numpy cryptography 'flwr[simulation]>=1.40' scikit-learn pytest pytest-timeout psutil
	$(FLWR_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(FLWR_VENV)/bin/python -m pytest tests/federated_flower -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check edgepack converters runtime fleet_server tests benchmarks examples

typecheck: install
	$(VENV)/bin/mypy

clean:
	rm -rf demo-out .pytest_cache build *.egg-info
