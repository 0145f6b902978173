# The two commands of the README: `make run` and `make test`. Both create .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
# Two processes, each test file whole in one of them (its module fixtures start once): most tests wait
# on Kafka, Postgres or a subprocess, so two overlap well on two cores. `PYTEST_ARGS=` runs serially.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: run test down bench bench-streams lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $@

# exec: `switchboard up` is make's own child, so the SIGTERM make passes on to its children reaches it
# (through a shell it would stop only the shell); `up` also stops itself when make dies of anything else.
run: $(VENV)/.installed
	exec $(VENV)/bin/switchboard up

test: $(VENV)/.installed
	$(VENV)/bin/switchboard infra up
	$(PY) -m pytest $(PYTEST_ARGS)

down: $(VENV)/.installed
	$(VENV)/bin/switchboard down

# ruff (check + format) over the tree; mypy over shared/ and every service's pure domain.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy shared services/*/domain.py services/assigner/allocation.py services/assigner/routing.py

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(VENV)/bin/switchboard bench

# One delivery instance holding 5,000 idle chat streams for 60 s: its peak RSS and CPU.
bench-streams: $(VENV)/.bench-installed
	$(VENV)/bin/switchboard bench-streams
