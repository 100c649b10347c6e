# Two commands do all set-up on a fresh machine: `make reproduce` and `make test`.
# After them, run any command with the venv active (`source .venv/bin/activate`) or through
# the targets below (make repro, make pipeline TARGET=..., make report).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.installed-dev-stamp
# CPU-only install: make reproduce TORCH_INDEX=https://download.pytorch.org/whl/cpu (torch and
# torchvision come from that index first; the default index's Linux torch pulls CUDA wheels)
TORCH_INDEX ?=
TARGET ?= reproduce_table1
WEIGHTS ?= weights
CORES ?= all
export PATH := $(BIN):$(PATH)

.PHONY: help install install-dev weights reproduce pipeline repro report test lint format bench clean-results

help:
	@echo "make reproduce  - install, fetch metric weights, run Table 1 and its figures (preset from params.yaml, default quick)"
	@echo "make report     - HTML report (tables, figures, ablations done so far) in results/<preset>/report.html"
	@echo "make pipeline TARGET=reproduce_figure1 - any Snakemake target (README: Pipeline)"
	@echo "make repro      - dvc repro: the pipeline, recorded in dvc.lock"
	@echo "make test       - install (with the [dev] extra) and run the test suite"
	@echo "CPU-only torch: add TORCH_INDEX=https://download.pytorch.org/whl/cpu to the first make"
	@echo "make lint       - ruff check + snakemake --lint"
	@echo "make bench      - run the benchmarks and rewrite benchmarks/README.md"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --progress-bar off --index-url $(TORCH_INDEX) torch torchvision)
	$(BIN)/python -m pip install --progress-bar off -e ".[diffusers]"
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --progress-bar off -e ".[dev,diffusers]"
	touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

weights: $(STAMP)
	$(BIN)/gaussquant fetch-weights --out $(WEIGHTS)

# A hard kill (SIGKILL, power cut) leaves Snakemake's lock behind; with no Snakemake running on
# this machine it is stale, and is removed so that the same command resumes the run.
reproduce: weights
	@if [ -n "$$(ls -A .snakemake/locks 2>/dev/null)" ] && ! pgrep -f "[b]in/snakemake" >/dev/null; then \
		echo "removing the stale lock of an interrupted run (snakemake --unlock)"; \
		$(BIN)/snakemake --unlock >/dev/null; fi
	$(BIN)/snakemake --cores $(CORES) reproduce_table1

# Any other Snakemake target with the venv's tools, e.g. make pipeline TARGET=reproduce_figure1
pipeline: weights
	$(BIN)/snakemake --cores $(CORES) $(TARGET)

# DVC's record of the pipeline (dvc.yaml's command finds .venv/bin itself)
repro: weights
	$(BIN)/dvc repro

# Snakemake's HTML report of every target already produced, in results/<preset>/report.html
report: $(STAMP)
	$(BIN)/gaussquant report

test: $(DEV_STAMP) weights
	$(BIN)/python -m pytest -q

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: weights
	$(BIN)/gaussquant bench --out benchmarks/README.md

clean-results:
	rm -rf results .snakemake
