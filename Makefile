# Set-up is part of every target: a fresh machine needs only python3 (>= 3.10) and this Makefile.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test lint install bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m edgekit.demo

# Lint and type checks run first: a finding fails `make test` like a failing test.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check edgekit tests benchmarks
	$(VENV)/bin/mypy edgekit

test: lint
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_nms.py
	$(PY) benchmarks/bench_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info demo_output
