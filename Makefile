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

# Three workers on two cores: the end-to-end tests mostly wait on their servers (578 s against 676 s with
# two, side by side on 2026-12-02); worksteal keeps the slow ones from finishing alone at the end.
test: setup lint typecheck
	$(BIN)/pytest -n 3 --dist worksteal --durations=10 $(PYTEST_ARGS)

# Every case of issue #9 in one run (~7 min; needs wrk): bench/results/<UTC>.{json,md,png}, docs/bench/latest.*
bench: setup
	$(BIN)/python bench/run.py --publish $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
