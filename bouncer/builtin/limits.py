"""Built-in limit enforcer: client connection limits at login, the limits that span pools when a
server connection is about to be opened (max_db_connections, max_user_connections), and
applying changed limits to live pools after RELOAD, SET, SET USER and SET POOL.

Refusals use PgBouncer's wording; the pool's own size is enforced by the pool itself.  A pool
held back by a cross-pool limit may close an idle server of a sibling pool, as PgBouncer does.
The SET USER / SET POOL commands are in :mod:`bouncer.builtin.limits_admin`, shrinking in
:mod:`bouncer.builtin.limits_shrink`; this module is the plugin that registers them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from bouncer.builtin import limits_admin, limits_shrink
from bouncer.config.sections import ADMIN_DATABASE
from bouncer.plugin import Refusal, hookimpl
from bouncer.pool.limits import database_cap, user_cap
from bouncer.pool.registry import AUTODB
from bouncer.proto import sqlstate

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.config import Config
    from bouncer.plugin import ClientInfo
    from bouncer.pool.pool import Pool


def _too_many(limit: str, whose: str, cap: int, where: str) -> Refusal:
    """PgBouncer's refusal, with the count that was reached and where to raise it."""
    return Refusal(f"no more connections allowed ({limit})", sqlstate.PROTOCOL_VIOLATION,
                   detail=f"{whose} already has {limit} = {cap} clients",
                   hint=f"raise {limit} ({where}), or have clients close the connections "
                        "they do not use (SHOW CLIENTS on the admin console lists them)")


@hookimpl
def bouncer_client_admit(app: "App", client: "ClientInfo") -> None:
    config = app.config
    if not _within_max_client_conn(app):
        raise _too_many("max_client_conn", "bouncer", config.max_client_conn,
                        "[pgbouncer], with the open files limit")
    if client.database == ADMIN_DATABASE and client.user in config.admin_users:
        return  # an operator is never locked out of the console by these two limits
    db_limit = database_cap(config, _definition(app, client.database),
                            "max_db_client_connections")
    if db_limit and _clients_of(app, database=client.database) > db_limit:
        raise _too_many("max_db_client_connections", f"database {client.database}", db_limit,
                        "[pgbouncer] or the database's line")
    user_limit = user_cap(config, app.registry.overrides, client.user,
                          "max_user_client_connections")
    if user_limit and _clients_of(app, user=client.user) > user_limit:
        raise _too_many("max_user_client_connections", f"user {client.user}", user_limit,
                        "[pgbouncer], the user's [users] line or SET USER")


@hookimpl
def bouncer_server_connect_limit(app: "App", pool: "Pool") -> None:
    caps = (("max_db_connections", pool.database, pool.limits.max_db_connections()),
            ("max_user_connections", pool.user, pool.limits.max_user_connections()))
    for limit, owner, cap in caps:
        if cap and owner.server_count() >= cap and not _made_room(owner, pool, cap, limit):
            raise Refusal(limit)


def _made_room(owner: Any, pool: "Pool", cap: int, limit: str) -> bool:
    """Close the oldest idle server of a sibling pool (same database or user) for *pool*.

    As PgBouncer's evict_connection(): an idle server elsewhere must not keep clients that
    are waiting here from ever getting one.  Only for waiting clients, so filling up to
    min_pool_size never takes servers from a sibling.
    """
    if not pool.waiters:
        return False
    for sibling in list(owner.pools.values()):
        if sibling is not pool and sibling.idle:
            sibling.close_server(sibling.idle[0], f"evicted: {limit} reached")
            return owner.server_count() < cap
    return False


@hookimpl
def bouncer_reload(app: "App", old_config: "Config", new_config: "Config") -> None:
    """RELOAD (or SET) may have lowered a limit below what is open, or raised one."""
    limits_shrink.apply_limits(app)


@hookimpl
def bouncer_admin_commands(app: "App") -> Dict[str, Callable[..., Any]]:
    return limits_admin.COMMANDS


def _within_max_client_conn(app: "App") -> bool:
    """max_client_conn (0: unlimited) holds with this client, counted in app.clients already
    (hence "<=" rather than "<").  With workers, across all of them: the shared count is kept
    at every login, so it is right when the limit is raised from 0 later."""
    limit = app.config.max_client_conn
    if app.client_count is not None:
        return app.client_count.admit(len(app.clients), limit)
    return not limit or len(app.clients) <= limit


def _clients_of(app: "App", database: Optional[str] = None, user: Optional[str] = None) -> int:
    """Clients counted against a limit: every client that sent its startup packet."""
    return sum(1 for c in app.clients
               if (database is None or c.database == database) and (user is None or c.user == user))


def _definition(app: "App", database: str) -> Any:
    """The database's definition; an unknown name would be served by the ``*`` entry."""
    state = app.registry.databases.get(database)
    return state.definition if state is not None else app.config.databases.get(AUTODB)
