# tailmail: `make run` shows it working, `make test` proves it. Both create .venv on demand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test soak bench lint fmt clean chromium report-sample

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

test: lint chromium
	$(BIN)/pytest

# The report's rendering test opens the HTML in Debian's chromium. Installed here when we can
# (root, apt-get); otherwise that test skips with the reason, and fails under CI=true.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the report rendering test"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends chromium >/dev/null \
		|| { apt-get -o DPkg::Lock::Timeout=300 update >/dev/null \
			&& apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends chromium >/dev/null; } \
		|| echo "could not install chromium: the rendering test will say so"; \
	fi

# docs/report.png, the README's picture of a report: a generated day rendered by chromium
report-sample: $(STAMP) chromium
	cd tests && ../$(BIN)/python report_day.py ../docs/report.png

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
