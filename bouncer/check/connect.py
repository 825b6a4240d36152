"""``bouncer --check --connect``: log in to every ``[databases]`` target as the pooler would.

The App is built as the daemon builds it (configuration, plugins, user store, TLS contexts,
registry) but never listens; each attempt is the pooler's own
:func:`~bouncer.session.server.connect_server` on a pool of that App, so the TLS settings, the
forced or auth_user, the secret and server_connect_timeout are exactly the daemon's.  The
attempts run side by side; :mod:`bouncer.check.verdict` words each one.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator, List, Optional, Tuple

import gevent
import gevent.pool

from bouncer.app import App
from bouncer.check.verdict import Attempt, Settings, Target, Verdict, judge, skipped
from bouncer.errors import ClientError
from bouncer.log import LogSetup
from bouncer.pool.registry import AUTODB, DatabaseState
from bouncer.proto import sqlstate
from bouncer.session.server import ServerConnection, ServerError, connect_server
from bouncer.session.server_login import forced_user_secret

#: Attempts made at the same time (each holds a server connection only while it logs in).
CONCURRENT_ATTEMPTS = 8
#: Users checked per database without a forced user: enough to see a pattern, few enough
#: that a long auth_file does not make the check hammer the server.
USERS_PER_DATABASE = 10
#: The bound on one attempt when server_connect_timeout = 0 sets none.
UNSET_TIMEOUT_BOUND = 15.0


class _CheckLogs(LogSetup):
    """Only errors, on stderr: the check prints its own lines and must not write the
    configured logfile or syslog."""

    def apply(self, *args, **kwargs) -> None:
        super().apply()
        self.logger.setLevel(logging.ERROR)


def check_connections(path: str) -> List[Verdict]:
    """One verdict per (database, login user), in the order of ``[databases]``; a ``*`` entry
    and a database with no user to log in as get a SKIP line."""
    app = App(path, _CheckLogs())
    settings = Settings(app.config.server_tls_sslmode, app.config.server_tls_ca_file,
                        app.config.auth_type)
    jobs: List[Tuple[Target, DatabaseState]] = []
    lines: List[Optional[Verdict]] = []
    for name in app.config.databases:
        if name == AUTODB:
            lines.append(skipped(name, "it stands for any database name a client asks for"))
            continue
        database = app.registry.databases[name]
        targets, left_out = _targets(app, database)
        if not targets:
            lines.append(skipped(name, "no forced user, auth_user or auth_file user to log "
                                       "in as (each client logs in as itself)"))
        for target in targets:
            jobs.append((target, database))
            lines.append(None)  # filled in below, in this order
        if left_out:
            lines.append(skipped(name, f"{left_out} more auth_file users (the first "
                                       f"{USERS_PER_DATABASE} were checked)"))
    verdicts = iter(gevent.pool.Pool(CONCURRENT_ATTEMPTS).map(
        lambda job: judge(job[0], settings, _attempt(app, *job)), jobs))
    return [line if line is not None else next(verdicts) for line in lines]


def _targets(app: App, database: DatabaseState) -> Tuple[List[Target], int]:
    """Who the pooler logs in as for *database*, with the secret it would send; and how many
    auth_file users were left out."""
    definition = database.definition
    if definition.user:
        return [Target(database.name, definition.user, forced_user_secret(app, definition),
                       forced=True)], 0
    users = list(dict.fromkeys(_login_users(app, database)))
    chosen = users[:USERS_PER_DATABASE]
    targets = [Target(database.name, user, _auth_file_secret(app, user), forced=False)
               for user in chosen]
    return targets, len(users) - len(chosen)


def _login_users(app: App, database: DatabaseState) -> Iterator[str]:
    auth_user = database.definition.auth_user or app.config.auth_user
    if auth_user:
        yield auth_user
    store = app.user_store
    yield from sorted(name for name in store.names() if store.from_userlist(name) is not None)


def _auth_file_secret(app: App, user: str) -> Optional[str]:
    credentials = app.user_store.from_userlist(user)
    return credentials.secret if credentials is not None else None


def _attempt(app: App, target: Target, database: DatabaseState) -> Attempt:
    pool = app.registry.pool(database, target.user)
    if not target.forced:
        # What a client login (or auth_query's own pool) hands the pool: the auth_file entry.
        pool.server_credentials = app.user_store.from_userlist(target.user)
    opened: List[ServerConnection] = []
    started = time.monotonic()
    error: Optional[ClientError] = None
    try:
        with gevent.Timeout(_bound(app), ServerError(
                f"no answer within {UNSET_TIMEOUT_BOUND:.0f} s (server_connect_timeout = 0 "
                "sets no limit)", sqlstate.CONNECTION_FAILURE)):
            connect_server(app, pool, on_connected=opened.append)
    except ClientError as err:
        error = err
    seconds = time.monotonic() - started
    server = opened[-1] if opened else None
    if server is not None:
        server.close("bouncer --check --connect is done")
    return Attempt(where=_where(database, server), connected=server is not None,
                   unix=server is not None and server.addr == "unix",
                   tls=server.tls if server is not None else "",
                   auth_request=server.auth_request if server is not None else None,
                   error=error, seconds=seconds,
                   server_version=server.params.get("server_version", "") if server else "")


def _bound(app: App) -> Optional[float]:
    """connect_server applies server_connect_timeout itself; only its absence needs one."""
    return None if app.config.server_connect_timeout else UNSET_TIMEOUT_BOUND


def _where(database: DatabaseState, server: Optional[ServerConnection]) -> str:
    if server is not None:
        return f"{server.host} port {server.port}"
    definition = database.definition
    return f"{','.join(definition.host) or 'unix socket'} port {definition.port}"
