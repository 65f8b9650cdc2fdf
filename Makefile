# TokenVault: `make run` serves the embedded default; `make test` runs every test.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export TOKENVAULT_DATA_DIR ?= $(CURDIR)/var

.PHONY: setup run test lint typecheck bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,bench]'
	touch $@

run: setup
	$(BIN)/tokenvault init
	$(BIN)/tokenvault clients demo --out $(TOKENVAULT_DATA_DIR)/demo-clients.env
	$(BIN)/tokenvault serve

lint: setup
	$(BIN)/ruff check vault kms api tests bench
	$(BIN)/lint-imports
	$(BIN)/bandit -q -r vault kms api -c pyproject.toml

typecheck: setup
	$(BIN)/mypy vault kms

test: setup lint typecheck
	$(BIN)/pytest -n 2 --durations=10 $(PYTEST_ARGS)

# Every case of issue #9 in one run (~7 min; needs wrk): bench/results/<UTC>.{json,md,png}, docs/bench/latest.*
bench: setup
	$(BIN)/python bench/run.py --publish $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
