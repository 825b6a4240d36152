# The two commands: `make demo` and `make test` (see README.md).
# Use another interpreter (a virtualenv, say) with `make test PYTHON=.venv/bin/python`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="tests/unit -x"`.
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install install-test postgres

demo: postgres install
	$(PYTHON) -m tests.support.demo

# pytest exits 5 when it collected nothing: that is a failure too, and said so.
test: postgres install-test
	@$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

install:
	$(PIP) install -e .

install-test:
	$(PIP) install -e '.[test]'

# The same lookup the test fixtures use (/usr/lib/postgresql/*/bin, then pg_config).
postgres:
	@if $(PYTHON) -c 'from tests.support.pgcluster import find_pg_bindir; find_pg_bindir()' \
	    2>/dev/null; then :; else \
	  echo "PostgreSQL server binaries not found: installing them with apt-get"; \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql postgresql-contrib; \
	fi
