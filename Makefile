# The two commands of the README: `make demo` and `make test`. Both set up a fresh machine first.
.PHONY: setup demo test lint typecheck bench

setup:
	ASTROD_EXTRAS=dev ./scripts/setup

demo: setup
	.venv/bin/astrod demo

lint: setup
	.venv/bin/ruff check astrod tests bench

typecheck: setup
	.venv/bin/mypy

test: lint typecheck
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python bench/bench_read.py
