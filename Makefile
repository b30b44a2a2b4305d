# The two set-up commands of the README: `make run` and `make test`. Both install what they need first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test install lint typecheck bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

## The service on its embedded default (SQLite + in-process broker + console provider), with a demo message.
run: install
	$(BIN)/carenotify run --demo

## Lint, type-check and the whole test suite (starts local PostgreSQL and Redis if they are installed but stopped).
test: install
	scripts/ensure-services
	scripts/ensure-chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy
