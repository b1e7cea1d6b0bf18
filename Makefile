# Every target works from a fresh clone with only Python and make present.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: chaos demo test lint typecheck pytest bench clean docs test-all test-others typecheck-public test-ray

# The stamp files record which extras are installed; pyproject changes reinstall.
$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,dask,progress]'
	touch $(VENV)/.stamp-base $@

$(VENV)/.stamp-bench: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[bench,progress]'
	touch $(VENV)/.stamp-base $@

$(VENV)/.stamp-docs: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[docs]'
	touch $(VENV)/.stamp-base $@

demo: $(VENV)/.stamp-base
	$(PY) -m hybridexec demo

lint: $(VENV)/.stamp-dev
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

typecheck: $(VENV)/.stamp-dev
	$(PY) -m mypy --strict src tests

pytest: $(VENV)/.stamp-dev
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The Ray backend's tests (skipped by `make test` when Ray is absent); Ray is about 260 MB.
test-ray: $(VENV)/.stamp-dev
	$(PY) -m pip install -q -e '.[dev,dask,ray]'
	$(PY) -m pytest tests/test_ray.py $(PYTEST_ARGS)

# The full suite on the default Python, then the quick one on every other Python >= 3.10.
test-all: test test-others

# The quick suite on every other Python >= 3.10 found by pyenv (or on PATH).
test-others: $(VENV)/.stamp-dev
	HX_TEST_EXTRAS=dev \
		scripts/test-all --default $$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# The site, with mkdocs' warnings as errors (broken links, pages missing from the nav).
docs: $(VENV)/.stamp-docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# How complete the public API's types are, as pyright sees them; fails below 100%.
# pyright (from npm) goes into the venv; it reads the venv from VIRTUAL_ENV and PATH.
typecheck-public: $(VENV)/.stamp-dev
	test -x $(VENV)/node/node_modules/.bin/pyright || \
		npm install --silent --no-audit --no-fund --prefix $(VENV)/node pyright
	cd $(VENV) && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" VIRTUAL_ENV="$(CURDIR)/$(VENV)" \
		node/node_modules/.bin/pyright --verifytypes hybridexec --ignoreexternal

# The long seeded soak: races under random injected faults for HX_SOAK_SECONDS (default 300),
# then the chaos run. Each prints its seed (HX_SOAK_SEED / HYBRIDEXEC_CHAOS_SEED replay it).
chaos: $(VENV)/.stamp-dev
	HX_SOAK_SECONDS=$${HX_SOAK_SECONDS:-300} $(PY) -m pytest -s -q \
		tests/test_sweep.py::test_soak tests/test_chaos.py $(PYTEST_ARGS)

bench: $(VENV)/.stamp-bench
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) dist build site .mypy_cache .ruff_cache .pytest_cache .hypothesis
