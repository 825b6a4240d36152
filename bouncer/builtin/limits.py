"""Built-in limit enforcer: client connection limits at login, the limits that span pools when a
server connection is about to be opened (max_db_connections, max_user_connections), and
applying changed limits to live pools after RELOAD, SET, SET USER and SET POOL.

Refusals use PgBouncer's wording; the pool's own size is enforced by the pool itself.  A pool
held back by a cross-pool limit may close an idle server of a sibling pool, as PgBouncer does.
With ``workers``, the client limits count the clients of every worker
(:mod:`bouncer.slots.client_count`), and the supervisor holds the server limits across them
as well (:mod:`bouncer.slots`).
The SET USER / SET POOL commands are in :mod:`bouncer.builtin.limits_admin`, shrinking in
:mod:`bouncer.builtin.limits_shrink`; this module is the plugin that registers them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from bouncer.builtin import limits_admin, limits_shrink
from bouncer.config.sections import ADMIN_DATABASE
from bouncer.plugin import Refusal, hookimpl
from bouncer.pool.limits import database_cap, user_cap
from bouncer.pool.registry import AUTODB
from bouncer.proto import sqlstate
from bouncer.slots.client_count import ALL, Scope

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.config import Config
    from bouncer.plugin import ClientInfo
    from bouncer.pool.pool import Pool
    from bouncer.session.client import ClientSession


def _too_many(limit: str, whose: str, cap: int, where: str) -> Refusal:
    """PgBouncer's refusal, with the count that was reached and where to raise it."""
    return Refusal(f"no more connections allowed ({limit})", sqlstate.PROTOCOL_VIOLATION,
                   detail=f"{whose} already has {limit} = {cap} clients",
                   hint=f"raise {limit} ({where}), or have clients close the connections "
                        "they do not use (SHOW CLIENTS on the admin console lists them)")


#: Where each client limit is raised, as its refusal's hint says.
_RAISED_IN = {
    "max_client_conn": "[pgbouncer], with the open files limit",
    "max_db_client_connections": "[pgbouncer] or the database's line",
    "max_user_client_connections": "[pgbouncer], the user's [users] line or SET USER",
}


class _ClientLimit(NamedTuple):
    """A limit on the clients of a scope (0: none)."""
    setting: str
    scope: Scope
    cap: int

    def refusal(self) -> Refusal:
        whose = "bouncer" if self.scope == ALL else " ".join(self.scope)  # "user alice"
        return _too_many(self.setting, whose, self.cap, _RAISED_IN[self.setting])


@hookimpl
def bouncer_client_admit(app: "App", client: "ClientInfo", session: "ClientSession") -> None:
    over = _first_reached(app, session, _client_limits(app, client))
    if over is not None:
        raise over.refusal()


def _client_limits(app: "App", client: "ClientInfo") -> List[_ClientLimit]:
    """The client limits that apply to *client*, in the order they are checked."""
    config = app.config
    # An operator is never locked out of the console by the database's and user's limits.
    operator = client.database == ADMIN_DATABASE and client.user in config.admin_users
    database_limit = 0 if operator else database_cap(
        config, _definition(app, client.database), "max_db_client_connections")
    user_limit = 0 if operator else user_cap(config, app.registry.overrides, client.user,
                                             "max_user_client_connections")
    return [_ClientLimit("max_client_conn", ALL, config.max_client_conn),
            _ClientLimit("max_db_client_connections", ("database", client.database),
                         database_limit),
            _ClientLimit("max_user_client_connections", ("user", client.user), user_limit)]


def _first_reached(app: "App", session: "ClientSession",
                   limits: Sequence[_ClientLimit]) -> Optional[_ClientLimit]:
    """The first of *limits* (0: none) that this client takes past its cap.  In one process
    the clients are those of app.clients, this one among them; with workers, those of the
    shared count, across all of them, which counts every client in every scope so that it is
    right when a limit is raised from 0 later (and uncounts this one when it leaves)."""
    if app.client_count is not None:
        scope = app.client_count.admit(session, [(limit.scope, limit.cap) for limit in limits])
        return next((limit for limit in limits if limit.scope == scope), None)
    return next((limit for limit in limits
                 if limit.cap and _clients_in(app, limit.scope) > limit.cap), None)


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


def _clients_in(app: "App", scope: Scope) -> int:
    """This process's clients in *scope*: every client for the total, else every client that
    sent its startup packet."""
    if scope == ALL:
        return len(app.clients)
    kind, name = scope
    return sum(1 for c in app.clients if (c.database if kind == "database" else c.user) == name)


def _definition(app: "App", database: str) -> Any:
    """The database's definition; an unknown name would be served by the ``*`` entry."""
    state = app.registry.databases.get(database)
    return state.definition if state is not None else app.config.databases.get(AUTODB)
