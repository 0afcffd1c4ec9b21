# Conveniences over scripts/ (the README's commands call the scripts directly, so make
# is not needed on a fresh machine).
.PHONY: setup run test lint vcsim clean bench bench-short

setup:
	scripts/setup

run:
	scripts/up

test:
	scripts/test

lint:
	uv run ruff check . && uv run ruff format --check . && uv run mypy

vcsim:
	deploy/vcsim/build.sh build/vcsim

# the benchmark scenarios (loadtest/RESULTS.md); SCENARIOS="latency routes" runs a few
bench:
	uv run python -m loadtest $(SCENARIOS)

bench-short:
	uv run python -m loadtest --short $(SCENARIOS)

clean:
	rm -rf .vebus build/vcsim
