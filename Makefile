# The course in two commands:
#   make lab    set up .venv (once) and open JupyterLab on notebooks/
#   make test   set up .venv (once) and run the whole test suite (every notebook included, fast mode)
# Variables: PYTHON (the interpreter to build the venv from), LAB_ARGS (extra arguments for jupyter lab),
# PYTEST_ARGS (extra arguments for pytest), TORCH_SPEC (pip arguments for torch when the venv has none yet).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: lab test student setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch first, pinned, and only if the venv has none: a bare `torch` requirement would pull the newest
	@# CUDA build (several GB); on a machine with the CPU wheel on disk, torch==2.13.0 takes that wheel.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

lab: $(STAMP)
	$(PY) -m dcn_lessons lab $(LAB_ARGS)

test: $(STAMP)
	DCN_LESSONS_FAST=1 MPLBACKEND=Agg $(PY) -m pytest $(PYTEST_ARGS)

student: $(STAMP)
	$(PY) -m dcn_lessons student --install

clean:
	rm -rf $(VENV) build notebooks/student
