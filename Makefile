# Two commands do all the set-up on a fresh machine:
#   make run    the main job: NeVe search vs validation-based ASHA on digits
#   make test   the test suite (fast tests; `make test-slow` runs the long end-to-end ones)
#   make lint   ruff: lint and format check of the whole tree (config in pyproject.toml)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.neve-installed

.PHONY: run test test-slow test-all lint bench gpu-check docs setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the pinned CUDA build of torch runs on CPU too; pip takes it from the local wheel cache when present
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: $(STAMP)
	$(VENV)/bin/neve-tune compare digits --trials 20 --repeats 5 --out runs/compare --json runs/compare/compare.json

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

# ruff (from the dev extra): the lint rules, then the formatter's check; it changes nothing
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/velocity_overhead.py
	$(PY) benchmarks/optuna_workers.py
	$(PY) benchmarks/ray_trials.py

# the docs site (mkdocs.yml, pages in docs/), warnings as errors, into site/
DOCS_STAMP := $(VENV)/.neve-docs-installed
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

docs: $(DOCS_STAMP)
	$(PY) benchmarks/report_pages.py --check
	$(PY) benchmarks/frontier_report.py --check
	$(VENV)/bin/mkdocs build --strict

# on a lent GPU: one table, exit status 1 on any failure (see benchmarks/gpu_check.py)
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs site .pytest_cache
