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
                                reserved_auth_dbname_problem, resolve_spec)
from bouncer.auth.store import Credentials
from bouncer.builtin.auth_connections import AuthConnections
from bouncer.config.sections import ADMIN_DATABASE
from bouncer.errors import ClientError, ProtocolError
from bouncer.net.stream import ConnectionLost
from bouncer.plugin import hookimpl
from bouncer.proto import sqlstate

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.config import Config
    from bouncer.pool.pool import Pool
    from bouncer.pool.registry import DatabaseState

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
    """Run auth_query for *user*; ``None`` when no auth_user applies or the client's database
    does not exist (PgBouncer runs no query then either).

    :raises ClientError: no role matched (``no such user``, told to the client as PgBouncer
        tells it), the auth database is unusable, or the lookup failed.
    """
    spec = resolve_spec(app.config, database)
    if spec is None:
        return None
    if database != ADMIN_DATABASE and app.registry.find_database(database) is None:
        log.debug("auth_query for user %r: no database %r", user, database)
        return None
    pool = _auth_pool(app, spec)
    try:
        rows = _auth_connections(app, spec).run(app, pool, lookup_request(spec.query, user))
        credentials = credentials_from_rows(user, rows)
    except (ClientError, ConnectionLost, ProtocolError, AuthQueryFailed) as exc:
        raise _lookup_failed(user, spec, exc) from exc
    if credentials is None:
        # PgBouncer tells the client so (it has no mock exchange after an auth_query).
        raise ClientError("no such user", sqlstate.PROTOCOL_VIOLATION)
    return credentials


def _auth_connections(app: "App", spec: AuthQuerySpec) -> AuthConnections:
    targets = _connections.setdefault(app, {})
    key = (spec.dbname, spec.auth_user)
    if key not in targets:
        targets[key] = AuthConnections()
    return targets[key]


def _auth_pool(app: "App", spec: AuthQuerySpec) -> "Pool":
    """The auth_user's pool in the query's database, logging in with auth_user's own secret:
    the auth connections log in as its servers do."""
    pool = app.registry.pool(_auth_database(app, spec.dbname), spec.auth_user)
    # Read at every lookup so a RELOAD of auth_file reaches the next new server connection.
    own_secret = app.user_store.from_userlist(spec.auth_user)
    if own_secret is not None:
        pool.server_credentials = own_secret
    return pool


def _auth_database(app: "App", dbname: str) -> "DatabaseState":
    """The database the query runs in, refused as PgBouncer refuses it: the admin console
    (checked first, or a ``*`` entry would create a database of that name), one that is not
    configured, or a disabled one."""
    if dbname == ADMIN_DATABASE:
        log.error(reserved_auth_dbname_problem(dbname))
        raise _config_error()
    database = app.registry.find_database(dbname)
    if database is None:
        log.error('authentication database "%s" is not configured.', dbname)
        raise _config_error()
    if database.refuses_logins:
        raise ClientError(f'authentication database "{dbname}" is disabled',
                          sqlstate.PROTOCOL_VIOLATION)
    return database


def _config_error(log_reason: str = "") -> ClientError:
    """What PgBouncer tells a client whose login its configuration cannot serve; the log
    says why."""
    return ClientError("bouncer config error", sqlstate.PROTOCOL_VIOLATION,
                       log_reason=log_reason)


def _lookup_failed(user: str, spec: AuthQuerySpec, exc: Exception) -> ClientError:
    """Fail closed, with PgBouncer's words to the client and the server's reason in the log;
    except that the database it asked for does not exist, which PostgreSQL would tell it too."""
    if isinstance(exc, ClientError) and exc.sqlstate == sqlstate.INVALID_CATALOG_NAME:
        return exc
    reason = (getattr(exc, "message", None) or str(exc)) + failure_hint(
        getattr(exc, "sqlstate", ""))
    log.error("auth_query for user %r as %r in database %r failed: %s", user, spec.auth_user,
              spec.dbname, reason)
    return _config_error(f"auth_query failed: {reason}")
