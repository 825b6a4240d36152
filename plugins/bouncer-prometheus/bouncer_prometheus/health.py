"""``/healthz``: whether this pooler can serve clients now, and if not, why.

Unhealthy while the process is paused (PAUSE), suspended (SUSPEND, online restart) or shutting
down, while a database is paused, and when no server of a database can be reached: every pool
of that database that has tried to connect failed at its latest attempt (the state SHOW CHECKS
shows).  A database no client has used yet is not held against the pooler.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List

from bouncer.admin.checks import pool_status
from bouncer.admin.show import process_state

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.pool.registry import DatabaseState


def health_problems(app: "App") -> List[str]:
    """One sentence per reason the pooler is unhealthy; empty when it is healthy."""
    problems: List[str] = []
    if app.shutdown_mode is not None:
        problems.append(f"shutting down ({app.shutdown_mode.replace('_', ' ')})")
    state = dict(process_state(app))
    if state["suspended"]:
        problems.append("suspended (SUSPEND on the admin console, or an online restart)")
    elif state["paused"]:
        problems.append("paused (PAUSE on the admin console)")
    for database in sorted(app.registry.databases.values(), key=lambda db: db.name):
        problems += _database_problems(database, whole_process_paused=app.paused)
    return problems


def _database_problems(database: "DatabaseState", whole_process_paused: bool) -> List[str]:
    problems = []
    if database.paused and not whole_process_paused:
        problems.append(f"database {database.name} is paused")
    statuses = [pool_status(pool) for pool in database.pools.values()]
    tried = [status for status in statuses if status != "untried"]
    if tried and all(status == "failing" for status in tried):
        problems.append(f"database {database.name}: no server can be reached (its latest "
                        "server logins failed; SHOW CHECKS says why)")
    return problems
