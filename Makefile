# cachegw: the same entry points locally and in CI (.ci/run calls `make test`).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
PIP_VERSION := 26.3
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
PIP_INSTALL := $(BIN)/pip install -q --disable-pip-version-check

.PHONY: help install install-run system-deps system-deps-test run down status test test-unit \
	check lint fmt lock clean \
	bench bench-hotpath bench-store bench-ratelimit bench-fleet bench-failover bench-versions bench-outbox \
	bench-partition bench-batch \
	soak

help:
	@echo "make run    install, start the local stack, migrate, serve on http://127.0.0.1:$(PORT)"
	@echo "make test   install, then every test (the tests start their own stack on free ports)"
	@echo "make test-unit  the unit tests alone (no stack, seconds)"
	@echo "make down   stop the local stack started by make run; make status: how it is"
	@echo "make check  ruff, and mypy --strict on app, devstack and tests (CI runs it first)"
	@echo "make fmt    ruff format and fixes; make lock: the lock files again; make clean: the venv"
	@echo "make bench  throughput, stampede and CAS: gateway vs a naive proxy (k6)"
	@echo "make bench-hotpath    CPU per GET hit in process (BASELINE=<commit>: A/B against it)"
	@echo "make bench-failover   a primary killed under load: gateway vs a naive proxy"
	@echo "make bench-store      write commits/s with the feed on and off, against bare INSERTs"
	@echo "make bench-fleet      read hits through HAProxy with one, two and three gateways"
	@echo "make bench-ratelimit  one key's rate through three gateways: shared bucket vs per process"
	@echo "make bench-versions   the version map: cost per note, memory per key, loop stalls"
	@echo "make bench-outbox     300 PUT/s for 60 s: does the outbox stay bounded?"
	@echo "make soak             10 minutes (SOAK_S) of writes, reads and a fault a minute, checked"

# install: everything (runtime, dev and benchmark tools, the Python client); install-run: what
# serving needs, no more (make run). Both lock files carry hashes, which pip verifies.
install: system-deps $(STAMP)

install-run: system-deps $(RUN_STAMP)

system-deps:
	@scripts/install-system-deps.sh run

system-deps-test:
	@scripts/install-system-deps.sh test

$(VENV)/.venv-made:
	@echo "cachegw: creating the virtualenv $(VENV) (pip $(PIP_VERSION))"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check pip==$(PIP_VERSION)
	@touch $@

$(RUN_STAMP): requirements.lock pyproject.toml $(VENV)/.venv-made
	@echo "cachegw: installing the runtime dependencies (requirements.lock; a minute the first time)"
	@$(PIP_INSTALL) --require-hashes -r requirements.lock
	@$(PIP_INSTALL) --no-deps -e .
	@touch $@

$(STAMP): requirements-dev.lock pyproject.toml clients/python/pyproject.toml $(VENV)/.venv-made
	@echo "cachegw: installing the runtime and dev dependencies (requirements-dev.lock)"
	@$(PIP_INSTALL) --require-hashes -r requirements-dev.lock
	@$(PIP_INSTALL) --no-deps -e . -e clients/python
	@touch $@ $(RUN_STAMP)

# The stack as the developer's: logs for people on a terminal, a line per request.
run: install-run
	$(BIN)/python -m devstack up
	$(BIN)/cachegw migrate up --env-file .devstack/env
	@echo "cachegw: development API key (send Authorization: Bearer <key>):"
	@$(BIN)/cachegw keys --env-file .devstack/env dev
	@echo "cachegw: starting on http://127.0.0.1:$(PORT) (docs at /docs); Ctrl-C stops it, 'make down' stops the stack"
	CACHEGW_ACCESS_LOG=$${CACHEGW_ACCESS_LOG:-true} $(BIN)/cachegw serve --env-file .devstack/env --port $(PORT)

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m devstack down; else echo "nothing to stop"; fi

status: $(RUN_STAMP)
	$(BIN)/python -m devstack status

test: system-deps-test install
	$(BIN)/pytest

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# The gateway beside a naive redis-py proxy on its own stack: throughput scenarios A B A B, the
# two ceilings, a cold-key stampede, compare-and-set writers.
# BASELINE=<commit> adds that commit's gateway to every pair (A/B/C), over the same stack.
bench: install system-deps-test
	$(BIN)/python -m bench.run $(if $(BASELINE),--baseline $(BASELINE))

# The gateway's own CPU per GET hit, in process (no HTTP server, no client), A/B against
# BASELINE=<commit> when given: what the code controls of make bench's figures.
bench-hotpath: install
	$(BIN)/python -m bench.hotpath $(if $(BASELINE),--baseline $(BASELINE))

# A primary SIGKILLed under 1,500 GET/s: the gateway beside a naive redis-py proxy (own stack).
bench-failover: install
	$(BIN)/python -m bench.failover

# The store's write ceiling: 16 pgbench writers of cachegw_put beside 16 processes following the feed,
# with the feed off, with a NOTIFY per write, and with the relay, against bare INSERTs (A B C D).
bench-store: install
	$(BIN)/python -m bench.store

# The version map: note cost at 100,000 live keys, bytes per key, the longest event-loop stall
# while 50,000 pending keys are noted from Postgres (own Postgres; exits 1 when a goal is missed).
bench-versions: install
	$(BIN)/python -m bench.versions

# Network faults in the fault lab (root): a minority primary and its heal, then 50-200 ms and 20%
# loss on one primary; the gateway beside the naive proxy, every read checked against the history.
bench-partition: install system-deps-test
	$(BIN)/python -m bench.partition

# Also part of make bench: read hits through HAProxy in front of one, two and three gateways.
bench-fleet: install system-deps-test
	$(BIN)/python -m bench.fleet

# keys/s of POST /v1/batch (100 gets) against single-key GETs and the naive proxy's loop.
bench-batch: install
	$(BIN)/python -m bench.batch

# One key limited to 50/s (burst 50), offered 300/s through three gateways for 10 s, with the
# shared bucket and with per-process buckets; exits 1 unless the shared one holds within 10%.
bench-ratelimit: install
	$(BIN)/python -m bench.ratelimit

# 300 PUT/s for 60 s through the gateway (k6), the outbox's row count every 5 s against its
# bound (own stack; exits 1 when the outbox grows past it).
bench-outbox: install
	$(BIN)/python -m bench.outbox

# Two workers, one writer per key, 32 readers, a fault every minute (primary SIGKILL, primary
# from an older snapshot, replica restarted empty, Postgres restart, feed listeners killed);
# every read checked against the history. SOAK_S seconds (default 600). Exits 1 on a violation.
SOAK_S ?= 600
soak: install
	SOAK_S=$(SOAK_S) $(BIN)/python -m bench.soak

# What CI runs before the tests (.ci/run): ruff, and mypy --strict on the code and its tests.
check: $(STAMP)
	$(BIN)/ruff check app devstack tests alembic bench deploy clients
	$(BIN)/ruff format --check app devstack tests alembic bench deploy clients
	$(BIN)/mypy --strict app devstack tests deploy clients/python/cachegw_client

lint: check

fmt: $(STAMP)
	$(BIN)/ruff format app devstack tests alembic bench deploy clients
	$(BIN)/ruff check --fix app devstack tests alembic bench deploy clients

# Regenerate the pinned trees, with every file's hash, from pyproject.toml (uv's resolver, a dev
# tool): runtime, then runtime + dev. UPGRADE=1 takes the newest releases the ranges allow.
LOCK := $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
	$(if $(UPGRADE),--upgrade)
lock: $(STAMP)
	$(LOCK) -o requirements.lock
	$(LOCK) --group dev -o requirements-dev.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
