# fedsc — the project's commands. `make demo` and `make test` create .venv when missing.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedsc-installed

.PHONY: setup demo test test-fast test-dispatch lint format bench clean

setup: $(STAMP)

# Fixed install order: the local CPU torch wheel first, crypten without its (broken)
# declared dependencies, then crypten's real runtime deps, then fedsc itself.
$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; set PY=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps crypten==0.4.1
	$(BIN)/pip install --quiet -e ".[dev,crypten,scvi]"
	touch $(STAMP)

demo: setup
	$(BIN)/fedsc demo --out results/demo

# Test tiers (README "Tests"):
#   make test           everything; what CI runs (<= 8 min on 2 cores)
#   make test-fast      the inner loop: no `slow` tests (deployments, notebooks, party
#                       faults, end-to-end runs) (<= 2 min on 2 cores)
#   make test-dispatch  the `reproducibility` tests again with another CPU's dispatch
#                       emulated in every library (AVX2-only; SSE4.2 where AVX2 is native)
# Two pytest-xdist workers (TEST_WORKERS=0: one process); tests/conftest.py orders the
# tests longest first and keeps the deployment tests on one worker (--dist loadgroup).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider \
	$(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder)
EMULATE_AVX2 := ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell \
	NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR" NUMBA_CPU_NAME=haswell
EMULATE_SSE4 := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 \
	OPENBLAS_CORETYPE=Nehalem NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR" \
	NUMBA_CPU_NAME=nehalem
EMULATE ?= $(if $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo y),$(EMULATE_AVX2),$(EMULATE_SSE4))

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

test-dispatch: setup
	env $(EMULATE) $(PYTEST) -m reproducibility

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy fedsc smpc
	$(BIN)/python .ci/check_imports.py  # no import cycle (in-function imports count); smpc never imports fedsc
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
