# Two commands do all set-up on a fresh machine: `make reproduce` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-stamp
WEIGHTS ?= weights
CORES ?= all
export PATH := $(BIN):$(PATH)

.PHONY: help install weights reproduce report test lint format bench clean-results

help:
	@echo "make reproduce  - install, fetch metric weights, run Table 1 and its figures (profile from params.yaml, default quick)"
	@echo "make report     - HTML report (tables, figures, ablations done so far) in results/<profile>/report.html"
	@echo "make test       - install and run the test suite"
	@echo "make lint       - ruff check + snakemake --lint"
	@echo "make bench      - run the benchmarks and rewrite benchmarks/README.md"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar off -e ".[dev,diffusers]"
	touch $(STAMP)

install: $(STAMP)

weights: $(STAMP)
	$(BIN)/gaussquant fetch-weights --out $(WEIGHTS)

# A hard kill (SIGKILL, power cut) leaves Snakemake's lock behind; with no Snakemake running on
# this machine it is stale, and is removed so that the same command resumes the run.
reproduce: weights
	@if [ -n "$$(ls -A .snakemake/locks 2>/dev/null)" ] && ! pgrep -f "[b]in/snakemake" >/dev/null; then \
		echo "removing the stale lock of an interrupted run (snakemake --unlock)"; \
		$(BIN)/snakemake --unlock >/dev/null; fi
	$(BIN)/snakemake --cores $(CORES) reproduce_table1

# Snakemake's HTML report of every target already produced, in results/<profile>/report.html
report: $(STAMP)
	$(BIN)/gaussquant report

test: weights
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: weights
	$(BIN)/gaussquant bench --out benchmarks/README.md

clean-results:
	rm -rf results .snakemake
