# Two entry points: `make demo` (the pipeline on configs/demo.yaml) and `make test` (the suite).
# Both create .venv and install the project on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On CPU-only machines pin the local CPU wheel; GPU users: `make install TORCH_SPEC="torch"` after
# installing their CUDA build, or any spec pip accepts.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/demo.yaml

# One model cache for everything make runs: the test suite's Gemma-3-270M conversion is the one
# `make demo` and `make evidence` use (and tests write nowhere outside the project).
export GDIG_CACHE ?= $(CURDIR)/.cache/gdig
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo evidence test lint clean

# kronfluence (the test suite's independent EK-FAC reference) comes with --no-deps: its metadata
# pins torchvision, which it never imports, and a mismatched torchvision breaks transformers.
# Its real needs are in the [dev] extra.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps kronfluence==1.0.1
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/gdig run $(CONFIG)

# The evidence experiment on Gemma-3-270M (CPU, about 1.5-2 hours on 2 cores); report under
# runs/evidence-de-en-cpu/report/. configs/evidence-tune-de-en-cpu.yaml is its held-out tuning run.
evidence: install
	$(VENV)/bin/gdig run configs/evidence-de-en-cpu.yaml

test: install
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
