"""Putting changed limits into force on live pools: close server connections above a lowered
limit, and let waiting clients through a raised one.

Called after RELOAD, SET, SET USER and SET POOL.  Closing goes idle (and being-tested) servers
first, then active ones, most recently active first; an active server closes when its client
releases it, or after ``limit_shrink_timeout`` with its client told which limit closed it
(:meth:`bouncer.pool.pool.Pool.evict`).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, List, Sequence, Tuple

from bouncer.pool.limits import database_cap, user_cap

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.pool.pool import Pool

log = logging.getLogger(__name__)


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
    for pool in pools:
        if pool.waiters:
            pool.launch_if_needed()  # a raised limit serves waiting clients at once


def shrink(pools: Sequence["Pool"], allowed: int, reason: str, grace: float) -> int:
    """Evict servers of *pools* until at most *allowed* remain (0 = unlimited: nothing).

    Servers already marked to close are not counted: they are on their way out.

    :return: how many servers were chosen for closing.
    """
    excess = sum(staying(pool) for pool in pools) - allowed
    if not allowed or excess <= 0:
        return 0
    log.info("%s: closing %d server connection(s)", reason, excess)
    chosen = 0
    for pool in pools:  # idle servers go first, in whichever pool they are
        chosen += pool.evict(min(excess - chosen, len(pool.idle) + len(pool.tested)),
                             reason, grace)
    for pool, count in _most_recently_active(pools, excess - chosen).items():
        chosen += pool.evict(count, reason, grace)
    return chosen


def staying(pool: "Pool") -> int:
    """Servers of *pool* that count against a limit: all but those already marked to close."""
    leaving = sum(1 for server in pool.all_servers() if server.close_needed)
    return pool.server_count() - leaving


def _most_recently_active(pools: Sequence["Pool"], count: int) -> "Counter[Pool]":
    """How many of the *count* most recently active servers (across *pools*) each pool has."""
    if count <= 0:
        return Counter()
    active: List[Tuple[float, "Pool"]] = [
        (_request_time(server), pool)
        for pool in pools for server in pool.active if not server.close_needed]
    active.sort(key=lambda item: item[0], reverse=True)
    return Counter(pool for _, pool in active[:count])


def _request_time(server: Any) -> float:
    client = server.link
    return client.request_time if client is not None else 0.0
