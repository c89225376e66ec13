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

.PHONY: install demo evidence test lint clean wheelhouse wheelhouse-gpu gpu-data install-offline

# Offline installs (README.md, "Installing without internet"). `make wheelhouse` downloads every
# wheel gdig needs for one target except torch (the target brings its own torch; torch's own needs
# are in: TORCH_SPEC, a requirement such as torch==2.13.0 here, is resolved to see them), split into
# part-NN folders of at most 60 MiB.
# Target: WHEEL_PYTHON (e.g. 3.12) and WHEEL_PLATFORM (a pip platform tag, or manylinux_x86_64
# for every manylinux x86-64 tag); empty = this machine's.
WHEELHOUSE ?= wheelhouse
WHEEL_PYTHON ?=
WHEEL_PLATFORM ?=
WHEELHOUSE_ARGS ?= --require "$(TORCH_SPEC)" --exclude torch --extra opusfilter --no-deps-extra $(OPUSFILTER_SPEC)
# Evaluated when a recipe runs, so `make wheelhouse install-offline` sees the fresh parts.
FIND_LINKS = $(foreach d,$(wildcard $(WHEELHOUSE)/part-* $(WHEELHOUSE)/build),--find-links $(d))
# The data files configs/evidence-de-en-gpu.yaml reads, copied into the checkout for a GPU machine.
DATA_DIR ?= ../shared/data/mt
GPU_DATA = de-en/pool.wmt17-20.jsonl de-en/flores.dev.tsv de-en/flores.devtest.de de-en/flores.devtest.en \
	zh-en/pool.wmt17-20.jsonl

# OpusFilter (the opusfilter method) likewise comes with --no-deps: its real needs are the
# [opusfilter] extra; its metadata adds a 96 MB language detector that its chain never imports.
OPUSFILTER_SPEC ?= opusfilter==3.3.1

# kronfluence (the test suite's independent EK-FAC reference) comes with --no-deps: its metadata
# pins torchvision, which it never imports, and a mismatched torchvision breaks transformers.
# Its real needs are in the [dev] extra.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev,opusfilter]'
	$(PY) -m pip install -q --no-deps kronfluence==1.0.1 $(OPUSFILTER_SPEC)
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

wheelhouse:
	$(PYTHON) scripts/wheelhouse.py --out $(WHEELHOUSE) $(if $(WHEEL_PYTHON),--python-version $(WHEEL_PYTHON)) \
		$(if $(WHEEL_PLATFORM),--platform $(WHEEL_PLATFORM)) $(WHEELHOUSE_ARGS)
	du -sh $(WHEELHOUSE)/*/

# The GPU machines' image (Python 3.12.3, manylinux x86-64): its own packages stay out
# (scripts/gpu-image-packages.txt); kronfluence comes for the influence benchmark's comparison;
# fallback/ holds the image packages these wheels require, at the resolved versions: installed there
# only where the image's own version misses a requirement (scripts/site_check.py --fix).
wheelhouse-gpu:
	$(MAKE) wheelhouse WHEELHOUSE=wheelhouse-gpu WHEEL_PYTHON=3.12.3 WHEEL_PLATFORM=manylinux_x86_64 \
		WHEELHOUSE_ARGS="--provided-file scripts/gpu-image-packages.txt --no-deps-extra kronfluence==1.0.1 \
		--no-deps-extra einconv==0.1.0 --extra opusfilter --no-deps-extra $(OPUSFILTER_SPEC) --fallback"

gpu-data:
	for f in $(GPU_DATA); do install -D -m 644 $(DATA_DIR)/$$f gpu-data/mt/$$f; done
	du -sh gpu-data

# No index: everything from $(WHEELHOUSE) (torch too unless the venv already imports it: then a
# local wheel or index pip is configured with, e.g. TORCH_SPEC=/path/to/torch.whl). Packages the
# venv already has are kept.
install-offline:
	@test -d $(WHEELHOUSE) || { echo "no wheelhouse at $(WHEELHOUSE): run make wheelhouse first"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --no-index $(FIND_LINKS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-index $(FIND_LINKS) -e '.[opusfilter]'
	$(PY) -m pip install -q --no-index --no-deps $(FIND_LINKS) $(OPUSFILTER_SPEC)

clean:
	rm -rf $(VENV) runs .pytest_cache
