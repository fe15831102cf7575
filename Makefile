# tailmail: `make run` shows it working, `make test` proves it. Both create .venv on demand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test soak bench lint fmt clean debian-tools deb test-deb report-sample

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
	$(BIN)/lint-imports

test: lint debian-tools
	$(BIN)/pytest

# Debian tools that tests run for real: systemd-analyze for the units, chromium to render the
# report, strace to hold a system call of the agent (the watchdog tests), faketime to step its
# clock. Installed when missing, as root; otherwise those tests skip (and fail under CI=true).
debian-tools:
	packaging/ensure-tools systemd-analyze:systemd chromium:chromium strace:strace faketime:faketime

# docs/report.png, the README's picture of a report: a generated day rendered by chromium
report-sample: $(STAMP) debian-tools
	cd tests/support && ../../$(BIN)/python report_day.py ../../docs/report.png

# dist/tailmail_VERSION_ARCH.deb: the agent in its own venv, made with Debian's python3.11.
deb: $(STAMP)
	packaging/ensure-tools /usr/bin/python3.11:python3.11 dpkg-shlibdeps:dpkg-dev strip:binutils
	PIP=$(BIN)/pip packaging/build-deb

# Build the .deb; lintian must find no error. Install it in a fresh Debian root (debootstrap +
# chroot), run its check and demo, remove and purge it and show what is left (test-deb). Boot
# such a root with systemd-nspawn and run the unit as shipped (test-service). Needs root.
test-deb: deb
	packaging/ensure-tools debootstrap:debootstrap lintian:lintian systemd-nspawn:systemd-container strace:strace
	packaging/test-deb dist/tailmail_*.deb
	packaging/test-service dist/tailmail_*.deb

# kill -9 the real agent 1,000 times while 1,000,000+ lines are written and rotated (see tests/support/soak.py)
soak: $(STAMP)
	$(BIN)/python tests/support/soak.py

# tailmail against rsyslog, syslog-ng and a bare Python loop (see bench/run.py and README,
# "Performance"); BENCH_ARGS=--quick for a short run
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

fmt: $(STAMP)
	$(BIN)/ruff format agent tests bench
	$(BIN)/ruff check --fix agent tests bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
