# The two commands: `make demo` and `make test` (see README.md).
# Use another interpreter (a virtualenv, say) with `make test PYTHON=.venv/bin/python`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="tests/unit -x"`.
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install install-test postgres slapd

demo: postgres install
	$(PYTHON) -m tests.support.demo

# pytest exits 5 when it collected nothing: that is a failure too, and said so.
test: postgres slapd install-test
	@$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

install:
	$(PIP) install -e .

install-test:
	$(PIP) install -e '.[test]'

# The same lookup the test fixtures use (/usr/lib/postgresql/*/bin, then pg_config).
postgres:
	@if $(PYTHON) -c 'from bouncer.testing.pgcluster import find_pg_bindir; find_pg_bindir()' \
	    2>/dev/null; then :; else \
	  echo "PostgreSQL server binaries not found: installing them with apt-get"; \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql postgresql-contrib; \
	fi

# The LDAP plugin's tests start a throwaway slapd of their own (tests/support/slapd.py).
slapd:
	@if [ -x /usr/sbin/slapd ]; then :; else \
	  echo "slapd not found: installing it with apt-get"; \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y slapd; \
	fi

# ---- Debian package (issue #7) -------------------------------------------------------------
# `make deb` builds bouncer_<version>_all.deb and a bouncer-NAME_<version>_all.deb per plugin
# (plugins/) into $(DEB_OUTDIR); then `sudo apt install ./dist/bouncer*_*.deb`. The build runs in a temporary
# copy of the files git tracks or would track, so no build artefact lands in the tree. Missing
# build dependencies (debian/control's Build-Depends) are installed with apt-get. PATH is the
# system's so that pybuild finds Debian's python3, never a virtualenv's or pyenv's.
DEB_OUTDIR ?= dist

.PHONY: deb
deb:
	@dpkg-checkbuilddeps 2>/dev/null || { $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get build-dep -y ./; }
	@set -e; work=$$(mktemp -d); trap 'rm -rf "$$work"' EXIT; mkdir "$$work/bouncer"; \
	git ls-files -z --cached --others --exclude-standard \
	  | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null \
	  | tar -xf - -C "$$work/bouncer"; \
	(cd "$$work/bouncer" && \
	  env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b) > "$$work/build.log" 2>&1 \
	  || { tail -n 60 "$$work/build.log" >&2; exit 1; }; \
	mkdir -p "$(DEB_OUTDIR)"; mv "$$work"/bouncer*_*.deb "$(DEB_OUTDIR)/"; \
	ls "$(DEB_OUTDIR)"/bouncer*_*.deb
