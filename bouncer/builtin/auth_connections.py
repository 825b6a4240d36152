"""The server connections that run auth_query, and nothing else.

A lookup must not run where a client has been: a client of the auth_user's pool could have
left a ``search_path`` (by SET, or as a tracked startup parameter), a temp table or a function
that turns an unqualified name in the query into its own object, and then log in as anyone
(PgBouncer's CVE-2025-12819 is one form).  So each (auth database, auth_user) pair has a few
connections of its own: opened for lookups, never linked to a client, their ``search_path``
pinned by bouncer right after login, and closed rather than reused when a lookup stops half-way.

They log in like the pool of the auth_user in that database (same host, credentials and log
prefix) but are not in it: SHOW SERVERS does not list them and pool limits do not count them.
Idle ones close after ``server_idle_timeout`` or ``server_lifetime``, or when the database's
connection settings change on RELOAD.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence

import gevent
from gevent.lock import BoundedSemaphore

from bouncer.auth.query import PIN_SEARCH_PATH, AuthQueryFailed
from bouncer.net.stream import ConnectionLost, send_all
from bouncer.pool.janitor import expiry_reason
from bouncer.pool.registry import connection_changed
from bouncer.session.server import ServerConnection, ServerError, connect_server

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.config import DatabaseDef
    from bouncer.pool.pool import Pool

Rows = Sequence[Sequence[Optional[bytes]]]

#: Lookups in flight at once per (auth database, auth_user); more logins wait their turn.
CONNECTIONS_PER_TARGET = 2
#: How often idle auth connections are checked for expiry.
REAP_INTERVAL = 1.0


@dataclass
class _Idle:
    server: ServerConnection
    #: The database definition it was opened with, to notice a RELOAD that moved it.
    opened_with: "DatabaseDef"


class AuthConnections:
    """The auth connections of one (auth database, auth_user) pair."""

    def __init__(self, size: int = CONNECTIONS_PER_TARGET) -> None:
        self._slots = BoundedSemaphore(size)
        self._idle: List[_Idle] = []
        self._reaper: Optional[gevent.Greenlet] = None

    def run(self, app: "App", pool: "Pool", request: bytes) -> Rows:
        """Send *request* (a whole lookup, Sync included) and return its data rows.

        :param pool: the auth_user's pool in the auth database: the connection logs in as
            its servers do, but is never put in it.
        :raises AuthQueryFailed: no connection became free within ``query_wait_timeout``.
        :raises ClientError: connecting failed, or the server answered with an error.
        :raises ConnectionLost: the connection broke during the lookup.
        """
        wait = pool.limits.query_wait_timeout() or None
        if not self._slots.acquire(timeout=wait):
            raise AuthQueryFailed("no auth_query connection became free within "
                                  "query_wait_timeout")
        try:
            idle = self._take_idle(app, pool) or self._open(app, pool)
            try:
                with _closed_unless_ready(app, idle.server, "auth_query did not complete"):
                    send_all(idle.server.sock, request)
                    return idle.server.read_until_ready()
            finally:
                if not idle.server.closed:
                    self._keep(app, idle)
        finally:
            self._slots.release()

    def close_all(self, reason: str) -> None:
        """Close every idle connection (shutdown); those in use close when their lookup ends."""
        while self._idle:
            self._idle.pop().server.close(reason)

    # -- opening and reuse -----------------------------------------------------------------

    @staticmethod
    def _open(app: "App", pool: "Pool") -> _Idle:
        server = connect_server(app, pool)
        pinned = False
        try:  # the pin is part of opening: a connection whose SET failed is never used
            server.run_query(PIN_SEARCH_PATH)
            pinned = True
        finally:
            if not pinned:
                server.close("could not pin search_path")
        return _Idle(server, pool.database.definition)

    def _take_idle(self, app: "App", pool: "Pool") -> Optional[_Idle]:
        while self._idle:
            idle = self._idle.pop()
            reason = _unfit_reason(app, idle, pool)
            if reason is None:
                return idle
            idle.server.close(reason)
        return None

    def _keep(self, app: "App", idle: _Idle) -> None:
        idle.server.last_used = time.monotonic()
        self._idle.append(idle)
        if self._reaper is None or self._reaper.dead:
            self._reaper = gevent.spawn(self._reap, app)

    def _reap(self, app: "App") -> None:
        """Close idle connections as they expire; ends when none is left."""
        while self._idle:
            gevent.sleep(REAP_INTERVAL)
            for idle in list(self._idle):
                reason = _unfit_reason(app, idle, None)
                if reason is not None and idle in self._idle:
                    self._idle.remove(idle)
                    idle.server.close(reason)


@contextlib.contextmanager
def _closed_unless_ready(app: "App", server: ServerConnection, reason: str) -> Iterator[None]:
    """Close *server* unless the block ends with the server at ReadyForQuery: normally, or with
    an SQL error (ServerError is raised only once ReadyForQuery arrived).  A lookup interrupted
    (the client's login timeout, a malformed reply) is also cancelled, so its backend stops at
    once; a broken connection is only closed."""
    ready = False
    lost = False
    try:
        yield
        ready = True
    except ServerError:
        ready = True
        raise
    except ConnectionLost:
        lost = True
        raise
    finally:
        if not ready:
            if not lost:
                app.cancels.cancel_server(server, server.prefix)
            server.close(reason)


def _unfit_reason(app: "App", idle: _Idle, pool: Optional["Pool"]) -> Optional[str]:
    """Why an idle auth connection must not run another lookup, or ``None``."""
    server = idle.server
    if server.closed:  # it went away while idle (ServerConnection.readable closed it)
        return "server conn crashed?"
    if pool is not None and server.pool is not pool:
        return "auth database re-created"
    if connection_changed(idle.opened_with, server.pool.database.definition):
        return "database configuration changed"
    return expiry_reason(app.config, server)
