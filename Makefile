# The two commands of the README, and a few more. Every target installs into .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slow load lint bench mutation clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)  ## install and start the service on its embedded default (SQLite + ./data, 127.0.0.1:8080)
	$(BIN)/vmbackup serve

test: $(STAMP)  ## the whole test suite (SQLite and PostgreSQL), then lint and type checks
	$(BIN)/python -m pytest -q -n 2 -m "not slow"
	$(BIN)/ruff check src tests
	$(BIN)/mypy src

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

load: $(STAMP)  ## 200 concurrent clients for 60 s against `vmbackup serve` while backups and restores run
	$(BIN)/python -m pytest -q -s -m slow tests/load

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy src

bench: $(STAMP)  ## vmbackup vs tar|zstd, restic and borg on a generated 2 GiB image (root: apt-get, drop_caches)
	$(BIN)/python bench/compare.py $(BENCH_ARGS)

mutation: $(STAMP)  ## mutmut on the engine, auth, formats and action guards, each against its own tests (docs/mutation.md)
	$(BIN)/pip install --quiet -e '.[mutation]'
	$(BIN)/python tools/mutation.py $(TARGETS)

clean:
	rm -rf $(VENV) data build *.egg-info
