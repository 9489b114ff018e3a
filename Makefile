# Two commands on a fresh machine:
#   make run    install (first time), build the default artifact if none, serve it on 127.0.0.1:8000
#   make test   install (first time) and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel; on a GPU machine set TORCH_SPEC to a CUDA build in the same range.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev

.PHONY: run demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python -m serve.quickstart

demo: install
	$(BIN)/spectramind demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf outputs .pytest_cache
