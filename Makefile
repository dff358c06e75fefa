# The two quick-start commands (README): `make demo` and `make test`. Both set everything up first.
PY := .venv/bin/python

.PHONY: setup demo test test-all lint

setup:
	@bash tools/setup.sh

demo: setup
	$(PY) -m compiler build

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "not gpu"

lint: setup
	$(PY) -m ruff check compiler passes backends tools tests
