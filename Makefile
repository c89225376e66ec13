# Two entry points: `make demo` (the pipeline on configs/demo.yaml) and `make test` (the suite).
# Both create .venv and install the project on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On CPU-only machines pin the local CPU wheel; GPU users: `make install TORCH_SPEC="torch"` after
# installing their CUDA build, or any spec pip accepts.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/demo.yaml

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint clean

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

test: install
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
