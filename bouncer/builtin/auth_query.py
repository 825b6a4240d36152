"""Built-in auth_query: the credentials backend asked after auth_file and any plugin.

The query runs at every login (no cache, so a password changed in PostgreSQL counts at the
next login) on a pooled server connection of ``auth_user``, in ``auth_dbname`` or the database
the client asked for.  What to send and how to read the answer is sans-IO, in
:mod:`bouncer.auth.query`; this module only moves the bytes.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, List, Optional, Sequence

from bouncer.auth.query import (AuthQueryFailed, AuthQuerySpec, config_problems,
                                credentials_from_rows, lookup_request, resolve_spec)
from bouncer.auth.store import Credentials
from bouncer.errors import AuthFailed, ClientError
from bouncer.net.stream import ConnectionLost, send_all
from bouncer.plugin import hookimpl
from bouncer.proto import sqlstate
from bouncer.session.server import ServerError

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.config import Config
    from bouncer.pool.pool import Pool

log = logging.getLogger(__name__)

Rows = List[Sequence[Optional[bytes]]]


class AuthQueryLookup:
    """What a server running auth_query is linked to (SHOW SERVERS' ``link``): not a client,
    so it is never counted in a pool's clients."""

    def __init__(self, user: str) -> None:
        self.user = user
        #: The pool adds the time spent waiting for a server here, as it does for clients.
        self.wait_time_us = 0


@hookimpl
def bouncer_validate_config(config: "Config") -> List[str]:
    return config_problems(config)


@hookimpl(trylast=True)
def bouncer_get_credentials(app: "App", user: str, database: str) -> Optional[Credentials]:
    """Run auth_query for *user*; ``None`` when no auth_user applies or no role matched."""
    spec = resolve_spec(app.config, database)
    if spec is None:
        return None
    pool = _auth_pool(app, spec)
    if pool is None:  # the client asked for a database that does not exist
        log.debug("auth_query for user %r: no database %r to run it in", user, spec.dbname)
        return None
    try:
        return credentials_from_rows(user, _run_lookup(pool, spec, user))
    except (ClientError, ConnectionLost, AuthQueryFailed) as exc:
        raise _lookup_failed(user, spec, exc) from exc


def _auth_pool(app: "App", spec: AuthQuerySpec) -> Optional["Pool"]:
    """The auth_user's pool in the query's database, logging in with auth_user's own secret."""
    database = app.registry.find_database(spec.dbname)
    if database is None:
        return None
    pool = app.registry.pool(database, spec.auth_user)
    # Read at every lookup so a RELOAD of auth_file reaches the next new server connection.
    own_secret = app.user_store.from_userlist(spec.auth_user)
    if own_secret is not None:
        pool.server_credentials = own_secret
    return pool


def _run_lookup(pool: "Pool", spec: AuthQuerySpec, user: str) -> Rows:
    """Send the lookup on a pooled server and read the rows; the server goes back to the pool
    when it reached ReadyForQuery, and is closed otherwise (broken, or interrupted by the
    client's login timeout)."""
    server = pool.acquire(AuthQueryLookup(user))  # query_wait_timeout applies, as to clients
    ready = False
    try:
        send_all(server.sock, lookup_request(spec.query, user))
        rows = server.read_until_ready()
        ready = True
        return rows
    except ServerError:
        ready = True  # an SQL error: the server answered ReadyForQuery and stays usable
        raise
    finally:
        if ready:
            pool.release(server)
        else:
            pool.close_server(server, "auth_query did not complete")


def _lookup_failed(user: str, spec: AuthQuerySpec, exc: Exception) -> AuthFailed:
    """Fail closed: the client learns only that authentication failed, the log says why."""
    reason = getattr(exc, "message", None) or str(exc)
    log.error("auth_query for user %r as %r in database %r failed: %s", user, spec.auth_user,
              spec.dbname, reason)
    return AuthFailed(f'authentication failed for user "{user}"', sqlstate.INVALID_AUTHORIZATION,
                      log_reason=f"auth_query failed: {reason}")
