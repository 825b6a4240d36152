"""Built-in auth_query: the credentials backend asked after auth_file and any plugin.

The query runs at every login (no cache, so a password changed in PostgreSQL counts at the
next login) as ``auth_user``, in ``auth_dbname`` or the database the client asked for, on a
connection that only ever runs lookups (:mod:`bouncer.builtin.auth_connections`).  What to send
and how to read the answer is sans-IO, in :mod:`bouncer.auth.query`; this module only moves
the bytes.
"""
from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from bouncer.auth.query import (AuthQueryFailed, AuthQuerySpec, config_problems,
                                credentials_from_rows, failure_hint, lookup_request,
                                resolve_spec)
from bouncer.auth.store import Credentials
from bouncer.builtin.auth_connections import AuthConnections
from bouncer.errors import AuthFailed, ClientError, ProtocolError
from bouncer.net.stream import ConnectionLost
from bouncer.plugin import hookimpl
from bouncer.proto import sqlstate

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.config import Config
    from bouncer.pool.pool import Pool

log = logging.getLogger(__name__)

#: Each running App's auth connections, by (auth database, auth_user).
_connections: "weakref.WeakKeyDictionary[App, Dict[Tuple[str, str], AuthConnections]]" = \
    weakref.WeakKeyDictionary()


@hookimpl
def bouncer_validate_config(config: "Config") -> List[str]:
    return config_problems(config)


@hookimpl
def bouncer_shutdown(app: "App") -> None:
    for connections in _connections.pop(app, {}).values():
        connections.close_all("shutting down")


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
        rows = _auth_connections(app, spec).run(app, pool, lookup_request(spec.query, user))
        return credentials_from_rows(user, rows)
    except (ClientError, ConnectionLost, ProtocolError, AuthQueryFailed) as exc:
        raise _lookup_failed(user, spec, exc) from exc


def _auth_connections(app: "App", spec: AuthQuerySpec) -> AuthConnections:
    targets = _connections.setdefault(app, {})
    key = (spec.dbname, spec.auth_user)
    if key not in targets:
        targets[key] = AuthConnections()
    return targets[key]


def _auth_pool(app: "App", spec: AuthQuerySpec) -> Optional["Pool"]:
    """The auth_user's pool in the query's database, logging in with auth_user's own secret:
    the auth connections log in as its servers do."""
    database = app.registry.find_database(spec.dbname)
    if database is None:
        return None
    pool = app.registry.pool(database, spec.auth_user)
    # Read at every lookup so a RELOAD of auth_file reaches the next new server connection.
    own_secret = app.user_store.from_userlist(spec.auth_user)
    if own_secret is not None:
        pool.server_credentials = own_secret
    return pool


def _lookup_failed(user: str, spec: AuthQuerySpec, exc: Exception) -> ClientError:
    """Fail closed: the client learns only that authentication failed, the log says why;
    except that the database it asked for does not exist, which PostgreSQL would tell it too."""
    if isinstance(exc, ClientError) and exc.sqlstate == sqlstate.INVALID_CATALOG_NAME:
        return exc
    reason = (getattr(exc, "message", None) or str(exc)) + failure_hint(
        getattr(exc, "sqlstate", ""))
    log.error("auth_query for user %r as %r in database %r failed: %s", user, spec.auth_user,
              spec.dbname, reason)
    return AuthFailed(f'authentication failed for user "{user}"', sqlstate.INVALID_AUTHORIZATION,
                      log_reason=f"auth_query failed: {reason}")
