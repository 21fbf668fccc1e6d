# Two commands for a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint migrate seed bench clean browser libreoffice

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)

# Runtime dependencies, pinned in requirements.lock; reinstalled when the lock changes.
$(VENV)/.runtime: requirements.lock pyproject.toml | $(VENV)/bin/activate
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Test and lint tools, pinned in requirements-dev.lock (a superset of the runtime lock).
$(VENV)/.dev: requirements-dev.lock $(VENV)/.runtime
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	touch $@

run: $(VENV)/.runtime
	$(PY) -m app migrate
	$(PY) -m app seed --if-empty
	@echo "Serving on http://$(HOST):$(PORT)  (API docs: http://$(HOST):$(PORT)/docs)"
	$(PY) -m app serve --host $(HOST) --port $(PORT)

# The browser tests drive Debian's Chromium (never a downloaded build); installed when we can.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get install -y -q --no-install-recommends chromium fonts-noto-cjk \
		|| (apt-get update -q && apt-get install -y -q --no-install-recommends chromium fonts-noto-cjk)); } \
		|| echo "chromium is not installed: the browser tests will be skipped"

# The XLSX export is read back by Debian's LibreOffice Calc; installed when we can (~100 MB).
libreoffice:
	@command -v libreoffice >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get install -y -q --no-install-recommends libreoffice-calc \
		|| (apt-get update -q && apt-get install -y -q --no-install-recommends libreoffice-calc)); } \
		|| echo "libreoffice is not installed: the XLSX read-back test will be skipped"

test: $(VENV)/.dev browser libreoffice
	$(PY) -m pytest

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app

# The benchmark: our app against a minimal reference, on PostgreSQL and SQLite (needs wrk).
bench: $(VENV)/.dev
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get install -y -q wrk || (apt-get update -q && apt-get install -y -q wrk)); } \
		|| { echo "wrk is needed: apt-get install wrk"; exit 1; }
	$(PY) bench/run.py

migrate: $(VENV)/.runtime
	$(PY) -m app migrate

seed: $(VENV)/.runtime
	$(PY) -m app seed

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
