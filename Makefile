# The two commands of the quick start: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# Test processes (pytest-xdist); each has its own redis-server. TEST_WORKERS=0 runs in one.
TEST_WORKERS ?= 2

.PHONY: run test bench bench-cluster faults floors lock redis-server wrk promtool

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit("vod-webhook needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

## run: install and start the receiver (embedded store unless VOD_WEBHOOK_REDIS_URL is set)
run: $(STAMP)
	$(BIN)/vod-webhook serve $(ARGS)

## test: install, lint, type-check and run the whole test suite against a throwaway redis-server,
## with branch coverage (the CLI, server and emulator subprocesses counted); fails under 95 %
test: $(STAMP) redis-server wrk promtool
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS) $(COVERAGE) $(PYTEST_ARGS)

# What `make test` measures; COVERAGE= (empty) runs without it, as for a narrowed run.
COVERAGE ?= --cov --cov-report=term

## bench: measure the callback hot path with wrk against same-run baselines (table and
## .bench/report.json; BENCH_ARGS="--seconds 2 --rounds 1" for a quick run), then the shared
## submission quota
bench: $(STAMP) redis-server wrk
	$(BIN)/python -m bench.receiver $(BENCH_ARGS)
	$(BIN)/python -m bench.submit_rate

## bench-cluster: the receiver (1 and 2 workers) on a local Redis Cluster (3 masters + 3
## replicas) with 1, 2 and 3 partitions against a single redis-server of the same run: req/s,
## latency, CPU, and Redis CPU per callback per master (.bench/cluster.json; BENCH_ARGS as above)
bench-cluster: $(STAMP) redis-server wrk
	$(BIN)/python -m bench.cluster $(BENCH_ARGS)

## faults: prove the guarantees under faults (Redis and receiver killed, Redis paused or out of
## memory, duplicate bursts, a cluster's and a Sentinel's master killed, MNS ingest stopped and
## killed) and fuzz every endpoint with 10,000 cases; prints the figures
faults: $(STAMP) redis-server
	$(BIN)/pytest tests/test_fuzz.py --hypothesis-profile=faults --hypothesis-show-statistics \
	  -p no:randomly -o addopts="" --timeout 3600 -q; fuzz=$$?; \
	$(BIN)/python -m bench.faults; faults=$$?; \
	test $$fuzz -eq 0 -a $$faults -eq 0

# The tests start their own redis-server on a free port; install it when the machine has none.
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "redis-server not found: installing it with apt-get"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

# The benchmark's load generator; without it `make bench` falls back to a slower Python one.
wrk:
	@command -v wrk >/dev/null || { \
	  echo "wrk not found: installing it with apt-get"; \
	  $(SUDO) apt-get install -y -qq wrk >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk >/dev/null; } || \
	  echo "wrk could not be installed: the bench uses its Python load generator"; }

# promtool checks deploy/prometheus/ (tests/test_deploy.py: `check rules`, `test rules`, `check
# config`). Debian ships it in its `prometheus` package: take the binary out of the package into
# the venv rather than install a Prometheus service. Without it those tests are skipped.
promtool: $(STAMP)
	@command -v promtool >/dev/null || [ -x $(BIN)/promtool ] || { \
	  echo "promtool not found: taking it from Debian's prometheus package into $(BIN)"; \
	  tmp=$$(mktemp -d); \
	  ( cd $$tmp && { apt-get download prometheus >/dev/null 2>&1 || \
	      { $(SUDO) apt-get update -qq && apt-get download prometheus >/dev/null; }; } && \
	    dpkg-deb -x prometheus_*.deb . ) && cp $$tmp/usr/bin/promtool $(BIN)/promtool || \
	  echo "promtool could not be had: the tests that need it are skipped"; \
	  rm -rf $$tmp; }

## floors: the whole suite on the lowest versions the core dependencies allow (pyproject.toml's
## floors of pydantic, redis and structlog, what a subscriber may have pinned); the rest resolved
## anew, in a venv of its own
FLOORS := pydantic==2.7.0 redis==5.2.0 structlog==24.1.0
floors: redis-server wrk
	rm -rf .floors-venv && $(PYTHON) -m venv .floors-venv
	.floors-venv/bin/python -m pip install --quiet --upgrade pip
	.floors-venv/bin/python -m pip install --quiet $(FLOORS) -e '.[dev]'
	.floors-venv/bin/pytest -n $(TEST_WORKERS) -p no:cacheprovider $(PYTEST_ARGS)

## lock: re-resolve the newest allowed versions into constraints.txt
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[dev]'
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^pip==' > constraints.txt
	rm -rf .lock-venv
