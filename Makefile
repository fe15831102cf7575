# tailmail: `make run` shows it working, `make test` proves it. Both create .venv on demand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test soak bench lint fmt clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tailmail demo

lint: $(STAMP)
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# kill -9 the real agent 1,000 times while 1,000,000+ lines are written and rotated (see tests/soak.py)
soak: $(STAMP)
	$(BIN)/python tests/soak.py

# tailmail against rsyslog, syslog-ng and a bare Python loop (see bench/run.py and README,
# "Performance"); BENCH_ARGS=--quick for a short run
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

fmt: $(STAMP)
	$(BIN)/ruff format agent tests bench
	$(BIN)/ruff check --fix agent tests bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
