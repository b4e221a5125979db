# One-command entry points. `make demo` and `make test` each set everything up first.
#
#   make demo   - venv + build the Rust extension + `dvc repro` on the embedded default data
#   make test   - venv + build + lint (ruff, cargo fmt, clippy) + cargo test + pytest
#
# The venv lives in .venv; torch is large (PyPI ships a CUDA build), so pip's cache is kept warm.

PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint rust-test py-test wheel-check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Editable install: maturin builds the extension (release) into pipeline/_rust.abi3.so.
setup: $(BIN)/python
	$(BIN)/pip install -q -e ".[pipeline,test]"

demo: setup
	@test -d .git || git init -q
	@test -d .dvc || dvc init -q
	dvc repro
	@echo "Report: reports/report.html  |  MLflow: mlflow ui --backend-store-uri sqlite:///mlruns.db"

lint: setup
	ruff check .
	ruff format --check lrt pipeline stages tests scripts
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

rust-test:
	cargo test -q

py-test: setup
	pytest -q

test: setup lint rust-test wheel-check py-test

# maturin silently drops packages it is not told about: check the wheel really ships all three.
wheel-check: setup
	rm -rf target/wheels
	$(BIN)/maturin build --release -q -o target/wheels
	$(BIN)/python scripts/check_wheel.py target/wheels/*.whl

bench: setup
	lrt-pipeline bench tokenizer
	lrt-pipeline bench loader
	lrt-pipeline bench step

clean:
	rm -rf target $(VENV) pipeline/_rust*.so
