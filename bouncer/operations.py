"""Operator actions on a running pooler: PAUSE, RESUME, SUSPEND, DISABLE, ENABLE, RECONNECT,
KILL, KILL_CLIENT, WAIT_CLOSE.  Used by the admin console and by signals (SIGUSR1/SIGUSR2).

Each takes an optional database name; ``None`` means every database, as in PgBouncer.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, List, Optional

import gevent

from bouncer.errors import ClientError
from bouncer.proto import sqlstate
from bouncer.session import handover

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.pool.registry import DatabaseState

log = logging.getLogger(__name__)

POLL = 0.05


class OperationError(ClientError):
    """An admin command cannot be carried out (sent as ERROR, the console stays usable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sqlstate.PROTOCOL_VIOLATION, "ERROR")  # as PgBouncer's


def _targets(app: "App", database: Optional[str]) -> List["DatabaseState"]:
    if database is None:
        return list(app.registry.databases.values())
    state = app.registry.databases.get(database)
    if state is None:
        raise OperationError(f"no such database: {database}")
    return [state]


def pause(app: "App", database: Optional[str], timeout: Optional[float] = None) -> None:
    """Hold new transactions, wait until every server is released, then close the servers.

    :param timeout: give up waiting after this long and drop the clients still holding a
        server (SUSPEND's ``suspend_timeout``); ``None`` waits as long as it takes.
    """
    targets = _targets(app, database)
    if all(db.paused for db in targets):
        raise OperationError("already paused" if database is None else
                             f"database {database} is already paused")
    for db in targets:
        db.resumed.clear()
    if database is None:
        app.paused = True
    deadline = None if timeout is None else time.monotonic() + timeout
    while any(db.active_count() for db in targets):
        if deadline is not None and time.monotonic() > deadline:
            _drop_linked_clients(app, targets, "suspend_timeout")
        gevent.sleep(POLL)
    for db in targets:
        for pool in db.pools.values():
            pool.close_idle(lambda server: "pause mode")
    log.info("PAUSE done for %s", database or "all databases")


def resume(app: "App", database: Optional[str]) -> None:
    targets = _targets(app, database)
    if app.suspended and database is None:
        app.suspended = False
        app.listeners.start_accepting()
        handover.resume_handed_over(app)
    if not any(db.paused for db in targets) and database is not None:
        raise OperationError(f"database {database} is not paused")
    for db in targets:
        db.resumed.set()
    if database is None:
        app.paused = False


def suspend(app: "App") -> None:
    """Stop accepting and hold all traffic (used before an online restart); clients still in
    a transaction after ``suspend_timeout`` are dropped."""
    if app.suspended:
        raise OperationError("already suspended")
    app.suspended = True
    app.listeners.stop_accepting()
    pause(app, None, app.config.suspend_timeout or None)


def _drop_linked_clients(app: "App", targets: List["DatabaseState"], reason: str) -> None:
    names = {db.name for db in targets}
    for client in list(app.clients):
        if client.server is not None and client.db is not None and client.db.name in names:
            kill_client_session(client, reason)


def disable(app: "App", database: str) -> None:
    for db in _targets(app, database):
        db.disabled = True


def enable(app: "App", database: str) -> None:
    for db in _targets(app, database):
        db.disabled = False


def reconnect(app: "App", database: Optional[str]) -> None:
    """Close every server as soon as it is released (new ones get the current config)."""
    for db in _targets(app, database):
        for pool in list(db.pools.values()):
            pool.mark_close_needed("RECONNECT issued")


def wait_close(app: "App", database: Optional[str]) -> None:
    """Wait until the servers marked by RECONNECT (or a reload) are all closed."""
    targets = _targets(app, database)
    while any(server.close_needed for db in targets for pool in db.pools.values()
              for server in pool.all_servers()):
        gevent.sleep(POLL)


def refuse_new_transactions(app: "App", reason: str) -> None:
    """Transactions in flight finish; a client that asks for a server now, or waits for one,
    is closed with *reason* (SHUTDOWN WAIT_FOR_SERVERS, as PgBouncer)."""
    refusal = ClientError(reason, sqlstate.PROTOCOL_VIOLATION)
    for db in app.registry.databases.values():
        db.refusal = refusal
        db.resumed.clear()
    for pool in app.registry.pools():
        pool.refuse_waiting(refusal)


def kill(app: "App", database: Optional[str]) -> None:
    """Drop every client and server of the database(s) at once."""
    names = {db.name for db in _targets(app, database)}
    for client in list(app.clients):
        if client.database in names and not client.is_admin:
            kill_client_session(client, "database killed")
    for db in _targets(app, database):
        for pool in list(db.pools.values()):
            for server in pool.all_servers():
                pool.close_server(server, "database killed")
        db.resumed.clear()


def kill_client(app: "App", client_id: int) -> None:
    for client in list(app.clients):
        if client.id == client_id:
            kill_client_session(client, "client killed by admin")
            return
    raise OperationError("client not found")


def kill_client_session(client, reason: str) -> None:
    """End the client's session: its own greenlet tells it why and returns its server."""
    client.end(ClientError(reason, sqlstate.ADMIN_SHUTDOWN))
