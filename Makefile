# The two commands of the README: `make demo` and `make test` (which runs `make lint` first). Both create (or reuse) the virtual environment
# $(VENV) and install the project into it from this folder's own files.
PYTHON ?= python3
VENV ?= .venv
# torch and torchvision are pinned to a pair that is known to work together; override for another platform,
# e.g. `make test TORCH="torch torchvision"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1
# faiss comes as alternatives: `cpu` (faiss-cpu) or `gpu` (faiss-gpu >= 1.15), never both.
EXTRAS ?= cpu,dev,wandb,onnx
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.icg-installed

.PHONY: install lint test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $(STAMP)

# ruff's version is pinned in pyproject.toml (dev extra): formatting changes between releases
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/python examples/demo.py

clean:
	rm -rf $(VENV) runs data/synthetic-demo .pytest_cache
