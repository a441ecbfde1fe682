# fedsc — the project's commands. `make demo` and `make test` create .venv when missing.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedsc-installed

.PHONY: setup demo test lint format bench clean

setup: $(STAMP)

# Fixed install order: the local CPU torch wheel first, crypten without its (broken)
# declared dependencies, then crypten's real runtime deps, then fedsc itself.
$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; set PY=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps crypten==0.4.1
	$(BIN)/pip install --quiet -e ".[dev,crypten]"
	touch $(STAMP)

demo: setup
	$(BIN)/fedsc demo --out results/demo

# Two pytest-xdist workers (TEST_WORKERS=0: one process); tests/conftest.py orders the
# tests longest first and keeps the deployment tests on one worker (--dist loadgroup).
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider \
		$(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy fedsc smpc
	@! grep -rnE 'REFERENCE(\.md| §)|DESIGN\.md' --include='*.py' --include='*.md' --include='*.yaml' \
		--include='*.toml' --include='*.ipynb' fedsc smpc tests benchmarks notebooks experiments \
		docs README.md pyproject.toml \
		|| { echo "error: cite docs/ (e.g. docs/algorithms.md#scbatchprox), not files outside the repository"; exit 1; }

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) results .pytest_cache
