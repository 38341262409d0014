# The two commands of cardflow. Both bootstrap .venv from pyproject.toml and
# reuse it while pyproject.toml is unchanged.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cardflow-installed

.PHONY: demo test test-fast deep-model mutation audit-changes down status lint clean chromium

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cardflow demo

# Two pytest workers, one per core of the machine CI runs on: most tests wait
# on Temporal, PostgreSQL and the simulators, so two sessions side by side
# take little more than half the time of one.
TEST_WORKERS ?= 2
test: $(STAMP) chromium
	$(BIN)/python -m pytest --numprocesses $(TEST_WORKERS)

# The fast tier: the process skeleton's timer and compensation paths and the
# pure rules, in seconds (the full suite runs them too).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m fast

# The ledger's model test with the deep profile: far more and longer random
# sequences than `make test` runs (minutes, not seconds).
deep-model: $(STAMP)
	HYPOTHESIS_PROFILE=deep $(BIN)/python -m pytest -p no:randomly tests/activities/ledger/test_model.py

# Mutation testing of the pure money logic (fees, conversion legs, the
# cashback rules, top-up limits, the card's decision and limit rules) against
# its fast unit tests (tests/schemas),
# configured in pyproject.toml's [tool.mutmut]; then the kill rate per module
# and every mutant that lived. mutmut works on a copy under mutants/, made
# afresh each run so its figures always reflect the current tests. Then the
# curated mutations of the ledger's SQL functions, each against the ledger
# tests (bench/sql_mutation.py; a few minutes).
mutation: $(STAMP)
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2
	$(BIN)/python -m bench.mutation_report
	$(BIN)/python -m bench.sql_mutation

# The money controls an audit once broke by hand (card limits, the ledger's
# available balance, debt collection net of fee, the debt account's guard,
# the fee's rounding), each broken again in a worktree and run against the
# tests that should notice; every failing test is named, two at least each.
audit-changes: $(STAMP)
	$(BIN)/python -m bench.audit_changes

# The Web UI test drives Debian's chromium (nothing is downloaded at run time):
# install the package when it is missing, as root directly or through sudo.
CARDFLOW_CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x "$(CARDFLOW_CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else echo "make test needs Debian's chromium at $(CARDFLOW_CHROMIUM) for the Web UI test:" \
	    "run 'sudo apt-get install chromium' (or set CARDFLOW_CHROMIUM to a Chromium binary)" >&2; exit 1; fi; \
	  echo "Installing Debian's chromium for the Web UI test..."; \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	    || { echo "could not install Debian's chromium with apt-get; install it, or set CARDFLOW_CHROMIUM" >&2; exit 1; }; \
	fi

down: $(STAMP)
	$(BIN)/cardflow dev down

status: $(STAMP)
	$(BIN)/cardflow dev status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy schemas workflows activities workers starters

clean:
	-$(BIN)/cardflow dev down
	rm -rf $(VENV) .cardflow
