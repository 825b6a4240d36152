"""Built-in limit enforcers: client connection limits at login, and the limits that span pools
when a server connection is about to be opened (max_db_connections, max_user_connections).

Refusals use PgBouncer's wording; the pool's own size is enforced by the pool itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from bouncer.errors import ClientError
from bouncer.plugin import hookimpl
from bouncer.pool.limits import first_set
from bouncer.proto import sqlstate

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.pool.pool import Pool
    from bouncer.session.client import ClientSession


def _too_many(limit: str) -> ClientError:
    return ClientError(f"no more connections allowed ({limit})", sqlstate.PROTOCOL_VIOLATION)


@hookimpl
def bouncer_client_admit(app: "App", client: "ClientSession") -> Optional[ClientError]:
    config = app.config
    if config.max_client_conn and len(app.clients) > config.max_client_conn:
        return _too_many("max_client_conn")
    db_limit = _db_value(app, client.database, "max_db_client_connections",
                         config.max_db_client_connections)
    if db_limit and _clients_of(app, database=client.database) > db_limit:
        return _too_many("max_db_client_connections")
    user_limit = _user_value(app, client.user, "max_user_client_connections",
                             config.max_user_client_connections)
    if user_limit and _clients_of(app, user=client.user) > user_limit:
        return _too_many("max_user_client_connections")
    return None


@hookimpl
def bouncer_server_connect_limit(app: "App", pool: "Pool") -> Optional[str]:
    config = app.config
    db_limit = first_set(pool.database.definition.max_db_connections, config.max_db_connections)
    if db_limit and pool.database.server_count() >= db_limit:
        return "max_db_connections"
    user_limit = _user_value(app, pool.user.name, "max_user_connections",
                             config.max_user_connections)
    if user_limit and pool.user.server_count() >= user_limit:
        return "max_user_connections"
    return None


def _clients_of(app: "App", database: Optional[str] = None, user: Optional[str] = None) -> int:
    """Clients counted against a limit: every client that sent its startup packet."""
    return sum(1 for c in app.clients
               if (database is None or c.database == database) and (user is None or c.user == user))


def _db_value(app: "App", database: str, key: str, default: int) -> int:
    definition = app.config.databases.get(database)
    return first_set(getattr(definition, key, None), default)


def _user_value(app: "App", user: str, key: str, default: int) -> int:
    configured = app.config.users.get(user)
    return first_set(app.registry.overrides.user_value(user, key),
                     getattr(configured, key, None), default)
