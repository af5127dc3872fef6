# `make test` and `make train` set up everything they need on first use:
# a .venv built with a Python 3.8-3.11 from PATH, with the package and its pinned dependencies.
# MXNET_VARIANT=cu112 selects the CUDA 11.2 build of MXNet instead of the CPU build.

MXNET_VARIANT ?= cpu
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(MXNET_VARIANT)
PYTHON_VERSIONS := 3.11 3.10 3.9 3.8
PYTEST_ARGS ?=
# make train: the chapter's recipe sized for a 2-core CPU on the offline faces-synthetic set
# (32x32 faces, 400 identities): smaller embedding and batch, momentum, a softer ArcFace margin.
TRAIN_ARGS ?= --dataset faces-synthetic --val-targets synthetic_val --emb-size 128 \
	--batch-size 64 --lr 0.1 --momentum 0.9 --margin-s 16 --margin-m 0.2 --epochs 5 \
	--lr-steps 3,4 --seed 0 --output runs/synthetic

.PHONY: test train bench venv clean-venv lint

venv: $(STAMP)

$(STAMP): setup.py
	@set -e; \
	if [ ! -x $(PY) ]; then \
	  found=""; \
	  for v in $(PYTHON_VERSIONS); do \
	    for cand in python$$v python3; do \
	      if command -v $$cand >/dev/null 2>&1 && \
	         $$cand -c "import sys; sys.exit(0 if sys.version_info[:2] == tuple(map(int, '$$v'.split('.'))) else 1)" >/dev/null 2>&1; then \
	        found=$$cand; break 2; \
	      fi; \
	    done; \
	  done; \
	  if [ -z "$$found" ]; then \
	    echo "error: no Python 3.8-3.11 found on PATH (looked for python3.11, python3.10, python3.9, python3.8 and python3); mxnet 1.9.1 needs one of them" >&2; \
	    exit 1; \
	  fi; \
	  echo "creating $(VENV) with $$found ($$($$found --version 2>&1))"; \
	  $$found -m venv $(VENV); \
	fi
	@# a current pip first: pip 23.0 (Python 3.8's venv) backtracks for over 15 minutes through
	@# the jupyter stack that d2l 1.0.3 pins; pip 25 resolves it in about a minute
	$(PY) -m pip install --upgrade pip setuptools wheel >/dev/null
	$(PY) -m pip install -e ".[$(MXNET_VARIANT),test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

train: $(STAMP)
	$(PY) scripts/train.py $(TRAIN_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check gluon_arcface scripts tests

clean-venv:
	rm -rf $(VENV)
