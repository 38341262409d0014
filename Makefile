# The two commands of cardflow. Both bootstrap .venv from pyproject.toml and
# reuse it while pyproject.toml is unchanged.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cardflow-installed

.PHONY: demo test test-fast deep-model mutation audit-changes down status lint clean test-tools

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
test: $(STAMP) test-tools
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

# Tools the tests drive, from Debian (nothing is downloaded at run time):
# chromium for the Web UI test, promtool and amtool (packages prometheus and
# prometheus-alertmanager) for the alert rules' and monitoring files' tests.
# The missing ones are installed, as root directly or through sudo.
CARDFLOW_CHROMIUM ?= /usr/bin/chromium
CARDFLOW_PROMTOOL ?= /usr/bin/promtool
CARDFLOW_AMTOOL ?= /usr/bin/amtool
test-tools:
	@missing=""; \
	[ -x "$(CARDFLOW_CHROMIUM)" ] || missing="$$missing chromium"; \
	[ -x "$(CARDFLOW_PROMTOOL)" ] || missing="$$missing prometheus"; \
	[ -x "$(CARDFLOW_AMTOOL)" ] || missing="$$missing prometheus-alertmanager"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else echo "make test needs Debian's$$missing: run 'sudo apt-get install$$missing'" \
	    "(or set CARDFLOW_CHROMIUM, CARDFLOW_PROMTOOL, CARDFLOW_AMTOOL to the binaries)" >&2; exit 1; fi; \
	  echo "Installing Debian's$$missing for the tests..."; \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
	    || { echo "could not install$$missing with apt-get; install them, or set the CARDFLOW_ paths" >&2; exit 1; }; \
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
