"""bouncer: a PgBouncer-compatible PostgreSQL connection pooler built on gevent."""

__version__ = "0.1.0"

#: The PgBouncer release whose behaviour, settings and admin console we follow.
PGBOUNCER_COMPAT = "1.25.2"

#: What ``SHOW VERSION`` and ``bouncer --version`` print.  Monitoring tools look for
#: ``PgBouncer x.y.z`` in this string to pick the SHOW column sets they expect.
VERSION_STRING = f"bouncer {__version__} (PgBouncer {PGBOUNCER_COMPAT} compatible)"
