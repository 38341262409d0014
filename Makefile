# The two commands of cardflow. Both bootstrap .venv from pyproject.toml and
# reuse it while pyproject.toml is unchanged.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cardflow-installed

.PHONY: demo test down status lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cardflow demo

test: $(STAMP)
	$(BIN)/python -m pytest

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
