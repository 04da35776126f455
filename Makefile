# The two commands a fresh machine needs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit bench faults docker-host compose-up compose-down stack-test clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mona serve --demo --data-dir demo-output/service

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python benchmarks/acdc.py --protocol cpu

faults: $(STAMP)
	.ci/with-services $(BIN)/python benchmarks/faults.py

# Containers (deploy/README.md): an engine where there is none, then the compose stack on 127.0.0.1:8000.
docker-host:
	bash deploy/local/docker-host.sh

compose-up: $(STAMP)
	bash deploy/local/compose-up.sh

compose-down:
	deploy/local/compose down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
