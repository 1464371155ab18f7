# The course in two commands:
#   make lab    set up .venv (once) and open JupyterLab on notebooks/
#   make test   set up .venv (once) and run the whole test suite (every notebook included, fast mode)
# And for maintainers:
#   make peer     compare the operators with torchvision's (a second venv, .peer/, with torch + torchvision from PyPI)
#   make mutants  plant typical bugs in a copy of the package, one at a time: each must fail a test
# Variables: PYTHON (the interpreter to build the venv from), LAB_ARGS (extra arguments for jupyter lab),
# PYTEST_ARGS (extra arguments for pytest), TORCH_SPEC (pip arguments for torch when the venv has none yet).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

PEER ?= .peer
PEER_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: lab test student setup clean peer peer-env mutants

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch first, pinned, and only if the venv has none: a bare `torch` requirement would pull the newest
	@# CUDA build (several GB); on a machine with the CPU wheel on disk, torch==2.13.0 takes that wheel.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	@# jsonschema's optional rfc3987-syntax (pulled in by jupyter-events) builds an Earley parser when imported:
	@# 2.4 s on a quiet core, up to 8 s on a loaded one, in every process that imports nbformat (each graded
	@# submission and its judge, otter assign, the JupyterLab server). Nothing in the course validates IRIs, and
	@# without it jsonschema only skips that format. Removing it halved the grading of a small lesson (22 s -> 11 s).
	@# Upstream: python-jsonschema/jsonschema#1392, #1428.
	$(PY) -m pip uninstall --yes --quiet rfc3987-syntax
	@touch $(STAMP)

lab: $(STAMP)
	$(PY) -m dcn_lessons lab $(LAB_ARGS)

test: $(STAMP)
	DCN_LESSONS_FAST=1 MPLBACKEND=Agg $(PY) -m pytest $(PYTEST_ARGS)

mutants: $(STAMP)
	DCN_LESSONS_FAST=1 MPLBACKEND=Agg $(PY) tests/mutation_check.py

student: $(STAMP)
	$(PY) -m dcn_lessons student --install

# torchvision's compiled ops load on the CPU only when torch and torchvision both come from PyPI (the CUDA build
# runs on a CPU); this project's own venv may hold a CPU-only torch with no matching torchvision. PIP_FIND_LINKS is
# cleared so that pip cannot take a local CPU-only torch wheel for this environment.
peer-env:
	@test -x $(PEER)/bin/python || $(PYTHON) -m venv $(PEER)
	PIP_FIND_LINKS= $(PEER)/bin/python -m pip install --quiet $(PEER_SPEC) numpy numba pytest hypothesis

peer: peer-env
	DCN_LESSONS_PEER=1 PYTHONPATH=$(CURDIR) MPLBACKEND=Agg $(PEER)/bin/python -m pytest -p no:cacheprovider tests/peer $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(PEER) build notebooks/student
