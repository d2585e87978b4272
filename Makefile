# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 5000

.PHONY: run test setup lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# `make run` needs only the runtime (a fast first start, no PyTorch); `make test` adds the
# test + train + postgres + plot extras. torch==2.13.0 is pinned so pip takes the CPU build.
RUN_STAMP := $(VENV)/.installed-run

$(RUN_STAMP): $(BIN)/python pyproject.toml requirements.txt constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -r requirements.txt
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,train,postgres,plot]'
	touch $(STAMP)

setup: $(STAMP)

# An error about the port or address then says PORT=N or HOST=…, as make takes them.
run: export PHISCHER_MAKE_RUN := 1
run: $(RUN_STAMP)
	$(BIN)/phischer db upgrade
	$(BIN)/phischer seed
	$(BIN)/phischer serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python scripts/bench_webhook.py

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache
