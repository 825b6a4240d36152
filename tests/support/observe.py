"""Looking at what a pooler did from the outside: client queries and PostgreSQL's own view.

The functional tests judge the pooler by what a client sees and by ``pg_stat_activity`` on the
server (never by the pooler's SHOW commands, which are its own claims about itself).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Set

from bouncer.testing.pgcluster import PgCluster
from bouncer.testing.ports import wait_until


def scalar(conn: Any, sql: str, params: Optional[tuple] = None) -> Any:
    """The first column of the first row of ``sql`` on a psycopg2 connection."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def execute(conn: Any, sql: str, params: Optional[tuple] = None) -> None:
    """Run a statement that returns no rows (SET, CREATE ...)."""
    with conn.cursor() as cur:
        cur.execute(sql, params)


def backend_pid(conn: Any) -> int:
    return scalar(conn, "SELECT pg_backend_pid()")


def server_pids(pg: PgCluster, user: str, db: str = "testdb", query: Optional[str] = None
                ) -> Set[int]:
    """Backends of ``user`` on ``db`` as PostgreSQL sees them (the pooler's servers); only
    those running ``query`` when it is given."""
    running = "" if query is None else f" AND query = {_literal(query)} AND state = 'active'"
    out = pg.psql(f"SELECT pid FROM pg_stat_activity WHERE usename = {_literal(user)} "
                  f"AND datname = {_literal(db)} AND backend_type = 'client backend'{running}")
    return {int(line) for line in out.split()}


def wait_for_server_pids(pg: PgCluster, user: str, check: Callable[[Set[int]], bool],
                         timeout: float = 10, db: str = "testdb",
                         query: Optional[str] = None) -> Set[int]:
    """Poll ``server_pids`` until ``check`` accepts them; fail with what was last seen."""
    seen: Set[int] = set()

    def ready() -> bool:
        seen.clear()
        seen.update(server_pids(pg, user, db, query))
        return check(seen)

    assert wait_until(ready, timeout, interval=0.1), f"server pids never matched: {seen}"
    return set(seen)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def read_text(path: str) -> str:
    """A log file's text ("" while it does not exist yet)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def read_pid(pidfile: str) -> Optional[int]:
    """The pid in ``pidfile``, or None while it is missing or not written yet."""
    text = read_text(pidfile).strip()
    return int(text) if text.isdigit() else None


class Background:
    """Runs ``action`` in a thread; ``result()`` gives its return value or re-raises."""

    def __init__(self, action: Callable[[], Any]) -> None:
        self._action = action
        self._value: Any = None
        self._error: Optional[Exception] = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._action()
        except Exception as exc:  # handed to the test thread by result()
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float = 10) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"background action still running after {timeout}s"
        if self._error is not None:
            raise self._error
        return self._value
