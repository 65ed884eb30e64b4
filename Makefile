# Two commands on a fresh machine: `make demo` and `make test`. Both build the venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed-stamp
PACKAGES := core providers/inmemory providers/sqlite providers/postgres providers/mongo \
	contract_tests examples/thirdparty_provider examples/redis_provider
PYPROJECTS := pyproject.toml $(addsuffix /pyproject.toml,$(PACKAGES))
TEST_PATHS := core/tests providers/inmemory/tests providers/sqlite/tests \
	providers/postgres/tests providers/mongo/tests contract_tests/tests \
	examples/thirdparty_provider/tests examples/redis_provider/tests

.PHONY: venv demo test lint typecheck pytest services lock bench clean

venv: $(STAMP)

$(STAMP): requirements.lock $(PYPROJECTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	$(BIN)/uv pip install -q --python $(BIN)/python --require-hashes -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps --no-build-isolation \
		$(addprefix -e ,$(PACKAGES))
	touch $(STAMP)

demo: venv
	bash scripts/demo.sh

services:
	bash scripts/ensure-services.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: venv
	$(BIN)/mypy core/src providers/inmemory/src providers/sqlite/src \
		providers/postgres/src providers/mongo/src contract_tests/src \
		examples/redis_provider/src

# pytest-xdist, PYTEST_WORKERS processes (2: our machines have 2 cores). --dist loadgroup
# hands out tests one by one, except modules that share a private server (xdist_group),
# which stay on one worker. The contract plugin's verdicts and gate cover the whole run.
PYTEST_WORKERS ?= 2
pytest: venv services
	$(BIN)/pytest $(wildcard $(TEST_PATHS)) -q -ra \
		-n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test: lint typecheck pytest

bench: venv services
	bash scripts/bench.sh

# Re-resolve after changing a dependency; commits only the hashed, URL-free export.
lock: venv
	$(BIN)/uv lock
	$(BIN)/uv export --frozen --all-packages --all-groups --all-extras --no-emit-workspace \
		--format requirements-txt -o requirements.lock

clean:
	rm -rf $(VENV) .ccvault .mypy_cache .ruff_cache
