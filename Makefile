# The two commands of the README: `make demo` and `make test`. Both set up a fresh machine first: `setup` installs
# what the product needs (also what `sudo make setup` puts on the observatory PC), `setup-dev` adds the test and
# development toolchain.
.PHONY: setup setup-dev demo test lint typecheck bench

setup:
	./scripts/setup

setup-dev:
	ASTROD_DEV=1 ./scripts/setup

demo: setup
	.venv/bin/astrod demo

lint: setup-dev
	.venv/bin/ruff check astrod tests bench

typecheck: setup-dev
	.venv/bin/mypy

test: lint typecheck
	.venv/bin/python -m pytest -q

bench: setup-dev
	.venv/bin/python bench/bench_read.py
