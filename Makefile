# Two entry points: `make book` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= laptop
# The CPU wheel that lies on this disk; GPU users: make TORCH_SPEC='torch>=2.2' (or a CUDA index).
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
# The exact versions the suite last passed on (make lock writes it; make setup installs through it).
LOCK ?= constraints.txt
LATEST_VENV ?= .venv-latest
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: setup browser book test test-fast test-latest lock bench study clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) pip
	$(PY) -m pip install --quiet -c $(LOCK) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# Headless Chromium for the browser test (Debian package; needs root or an existing install).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	    echo "warning: could not install chromium; the browser test will be skipped"; }

book: setup
	$(VENV)/bin/telly book --profile $(PROFILE)

test: setup browser
	$(PY) -m ruff check telly tests tools
	TELLY_LOCKED=$(LOCK) $(PY) -m pytest -q -ra --durations=15

test-fast: setup
	$(PY) -m pytest -q -m "not integration and not browser"

# The newest releases pyproject allows, in a venv of their own (torch stays at TORCH_SPEC: an unpinned
# torch is a multi-GB CUDA download). Passing means `make lock VENV=$(LATEST_VENV)` may refresh the lock.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade -e ".[test]"
	$(LATEST_VENV)/bin/python tools/lock.py diff $(LOCK)
	$(LATEST_VENV)/bin/python -m pytest -q -m "not integration and not browser"
	$(LATEST_VENV)/bin/python -m pytest -q -m "integration and not browser" \
	  tests/test_prefix_cache.py tests/test_trainer.py tests/test_bench.py
	@echo "make test-latest passed with these versions against $(LOCK):"
	@$(LATEST_VENV)/bin/python tools/lock.py diff $(LOCK)

# Write the lock from a venv whose suite passed (default .venv; after test-latest: VENV=$(LATEST_VENV)).
lock:
	test -x $(PY) || { echo "no venv at $(VENV): run make test (or make test-latest) first" >&2; exit 1; }
	$(PY) tools/lock.py write $(LOCK)

bench: setup
	$(VENV)/bin/telly bench --profile $(PROFILE) --out runs/$(PROFILE)/bench --readme README.md --reference

# The code-model study (hours on 2 cores, resumable: a rerun skips what its records cover). Records
# (JSON) go to book/records/<model>/, to be committed as parts finish; weights stay under runs/study.
study: setup
	$(VENV)/bin/telly fetch smollm2-135m
	$(VENV)/bin/telly study --model smollm2-135m --profile study --out runs/study --records book/records/smollm2-135m

clean:
	rm -rf book/_build runs $(LATEST_VENV)
