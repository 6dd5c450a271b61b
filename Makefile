# cellray: the README's two commands (`make demo`, `make test`) and a few helpers.
# Every target sets up what it needs itself, starting from a fresh clone.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
CHROMIUM    := /usr/bin/chromium
# Set when an apt-get install of chromium failed, so later runs do not retry (and wait on
# apt) every time; delete it to try again.
NO_CHROMIUM := $(VENV)/.chromium-unavailable
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="tests/unit -k wait"`.
PYTEST_ARGS ?=

.PHONY: help venv demo test lint lab bench proto browser-deps clean distclean

help:
	@echo "make demo    run the demo (creates .venv on first use)"
	@echo "make test    run the lint gate, then the test suite (creates .venv, installs chromium for page tests if it can)"
	@echo "make lint    ruff and mypy --strict on runtime/, kernel_ext/ and widgets/"
	@echo "make lab     start JupyterLab on notebooks/, bound to 127.0.0.1"
	@echo "make bench   print cellray's microbenchmark rows (bench/README.md: against Ray)"
	@echo "make proto   regenerate runtime/protocol/*_pb2*.py from the .proto files"
	@echo "make venv    create .venv and install cellray with its test extras"
	@echo "make clean   remove build outputs and caches (make distclean also removes .venv)"

venv: $(STAMP)

# pip runs again only when pyproject.toml is newer than the last successful install.
$(STAMP): pyproject.toml
	@if ! $(PY) -c '' 2>/dev/null; then \
	  if python3.11 -c '' 2>/dev/null; then base=python3.11; \
	  else \
	    base=python3; \
	    echo "python3.11 not found; using $$(command -v python3 || echo 'python3 (missing)') instead"; \
	  fi; \
	  if ! $$base -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
	    echo "cellray needs Python >= 3.11, but $$base is $$($$base --version 2>&1)" >&2; exit 1; \
	  fi; \
	  echo "creating $(VENV) with $$base ($$($$base --version 2>&1))"; \
	  $$base -m venv --clear $(VENV); \
	fi
	$(PY) -m pip install -e '.[test]'
	@touch $@

demo: venv
	$(PY) notebooks/run.py notebooks/quickstart.ipynb

# The gate: ruff (configuration in pyproject.toml [tool.ruff]) and mypy --strict
# ([tool.mypy]) on the three packages, generated protocol code excluded.
lint: venv
	$(VENV)/bin/ruff check runtime kernel_ext widgets
	$(VENV)/bin/mypy

test: venv browser-deps lint
	@rc=0; $(PY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then \
	  echo "make test: FAILED: pytest collected no tests (exit code 5). That never happens on a" \
	       "good tree: check testpaths in pyproject.toml and PYTEST_ARGS." >&2; \
	  exit 1; \
	fi; \
	exit $$rc

# Page tests need Playwright (a pip package, installed by `venv`) and a system Chromium.
# Never `playwright install`: it downloads a browser, and downloads are not allowed to be
# part of the test set-up. If Chromium cannot be had, browser tests skip and say why.
browser-deps: venv
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if [ -e $(NO_CHROMIUM) ]; then \
	  echo "note: $(CHROMIUM) is missing (an earlier install failed; rm $(NO_CHROMIUM) to retry);" \
	       "browser tests will be skipped"; exit 0; \
	fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: $(CHROMIUM) is missing and apt-get is not available; browser tests will be skipped"; exit 0; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else \
	  echo "note: $(CHROMIUM) is missing; browser tests will be skipped." \
	       "Install it with: sudo apt-get install -y chromium"; exit 0; \
	fi; \
	echo "installing chromium for the browser tests: apt-get update && apt-get install -y chromium"; \
	export DEBIAN_FRONTEND=noninteractive; \
	if $$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium >/dev/null && [ -x $(CHROMIUM) ]; then \
	  echo "installed $$($(CHROMIUM) --version 2>/dev/null || echo chromium)"; \
	else \
	  touch $(NO_CHROMIUM); \
	  echo "note: could not install chromium (apt-get failed, see above); browser tests will be skipped"; \
	fi

lab: venv
	@mkdir -p notebooks
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

bench: venv
	$(PY) bench/microbench.py

proto: venv
	$(PY) -m runtime.protocol.generate

clean:
	rm -rf build dist *.egg-info test-artifacts .pytest_cache
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
