"""Putting changed limits into force on live pools: close server connections above a lowered
limit, and let waiting clients through a raised one.

Called after RELOAD, SET, SET USER and SET POOL.  How servers are chosen is
:mod:`bouncer.pool.eviction`'s; an active one closes when its client releases it, or after
``limit_shrink_timeout`` with its client told which limit closed it.  With workers, the new
limits are announced to the supervisor, which has the other workers shrink too
(:mod:`bouncer.slots`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bouncer.pool.eviction import shrink
from bouncer.pool.limits import database_cap, user_cap

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App


def apply_limits(app: "App") -> None:
    """Bring every pool, user and database within its limits as they are now."""
    registry, config = app.registry, app.config
    grace = config.limit_shrink_timeout
    pools = list(registry.pools())
    for pool in pools:
        pool.refresh_limits()  # before evicting: release() closes by the cached size
        if pool.size:
            # The reserve stays usable: evicting into it would only make waiters reopen it.
            shrink([pool], pool.size + pool.reserve, f"pool_size lowered to {pool.size}", grace)
    for user in list(registry.users.values()):
        cap = user_cap(config, registry.overrides, user.name, "max_user_connections")
        shrink(list(user.pools.values()), cap, f"max_user_connections lowered to {cap}", grace)
    for database in list(registry.databases.values()):
        cap = database_cap(config, database.definition, "max_db_connections")
        shrink(list(database.pools.values()), cap, f"max_db_connections lowered to {cap}", grace)
    if app.slots is not None:
        app.slots.announce(pools)
    for pool in pools:
        if pool.waiters:
            pool.launch_if_needed()  # a raised limit serves waiting clients at once
