# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine:
# they create .venv (torch 2.13.0 CPU first, pinned by constraints.txt) and install bridgec into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test bench clean

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/bridgec compile examples/quickstart/spec.toml -o examples/quickstart/run.py
	cd examples/quickstart && ../../$(BIN)/torchrun --nproc-per-node 2 run.py

test: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

bench: $(INSTALLED)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) examples/*/out
