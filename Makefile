# Two entry points: `make book` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= laptop
# The CPU wheel that lies on this disk; GPU users: make TORCH_SPEC='torch>=2.2' (or a CUDA index).
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: setup browser book test test-fast bench study clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
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
	$(PY) -m ruff check telly tests
	$(PY) -m pytest -q -ra --durations=15

test-fast: setup
	$(PY) -m pytest -q -m "not integration and not browser"

bench: setup
	$(VENV)/bin/telly bench --profile $(PROFILE) --out runs/$(PROFILE)/bench --readme README.md --reference

# The code-model study (hours on 2 cores, resumable: a rerun skips what its records cover). Records
# (JSON) go to book/records/<model>/, to be committed as parts finish; weights stay under runs/study.
study: setup
	$(VENV)/bin/telly fetch smollm2-135m
	$(VENV)/bin/telly study --model smollm2-135m --profile study --out runs/study --records book/records/smollm2-135m

clean:
	rm -rf book/_build runs
