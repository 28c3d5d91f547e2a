# Development entry points. `make test` and `make demo` set everything up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The venv's tools first (its pinned ninja above all): a build run from an activated shell and one
# from a plain shell otherwise used different ninja binaries, whose differently recorded commands
# made each switch recompile every file.
export PATH := $(abspath $(VENV))/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: venv build test demo bench clean

venv: $(VENV)/.deps-installed

$(VENV)/.deps-installed: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH_SPEC)" -r requirements-dev.txt
	touch $@

# Editable in-place build against the venv's torch; ninja recompiles only what changed.
build: venv
	$(PIP) install --no-build-isolation --no-deps -e .

test: build
	@$(PY) -m pytest $(PYTEST_ARGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests: nothing was checked" >&2; fi; \
	exit $$rc

demo: build
	$(VENV)/bin/trp-ext demo

bench: build
	$(PY) -m pytest bench --benchmark-only --benchmark-json=bench/latest.json $(PYTEST_ARGS)

clean:
	rm -rf build trp_ext/_C*.so *.egg-info
