# One obvious command per habit. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint format typecheck docs bench bench-long faults clean venv-django6

# Test processes (pytest-xdist), each with a database of its own. The tests mostly wait
# on PostgreSQL, subprocesses and timers, so 4 beat 2 even on 2 cores. The slow group
# runs alone: its chaos and cron tests want the connections and the clock to themselves.
TEST_WORKERS ?= 4

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e . --group dev
	touch $(STAMP)

demo: $(STAMP)  ## a worker running examples/simple.py (embedded PostgreSQL unless DATABASE_URL is set)
	$(BIN)/python examples/simple.py

test: $(STAMP)  ## the test suite (embedded PostgreSQL unless PGWORKER_TEST_DATABASE_URL is set)
	$(BIN)/pytest -m "not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-slow: $(STAMP)  ## the tests that wait for real minutes (cron with Node, crash recovery); CI runs them
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

docs: $(STAMP)  ## the documentation site, into site/ (any warning fails the build)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)  ## pgworker against Node graphile-worker and the pgbench SQL floor, both configurations, medians of 3 (JSON in .bench/)
	$(BIN)/python -m benchmarks.throughput --repeat 3 $(BENCH_ARGS)

bench-long: $(STAMP)  ## 1,000,000 jobs through pgworker workers: RSS after warm-up and at the end
	$(BIN)/python -m benchmarks.long $(BENCH_ARGS)

faults: $(STAMP)  ## pgworker through crashes, outages, overload on a private cluster (~15 min); FAULTS_ARGS="--only worker_sigkill --scale 0.2"
	$(BIN)/python -m faults $(FAULTS_ARGS)

# Django 6 needs Python >= 3.12: tests/test_django.py runs itself again in this venv.
PYTHON_DJANGO6 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.1[2-9]*/bin/python3) \
	$(shell command -v python3.13 python3.12 2>/dev/null))
venv-django6:  ## a Python >= 3.12 venv with Django 6, for the Django 6 leg of the tests
	$(PYTHON_DJANGO6) -m venv .venv-django6
	.venv-django6/bin/pip install --quiet -e . 'django>=6' pytest pytest-timeout

clean:
	rm -rf .venv-django6 $(VENV) .pytest_cache .mypy_cache .ruff_cache site
