"""Closing server connections across pools to bring a scope (a pool, a database's pools, a
user's pools) down to a count: after a lowered limit, or for another worker
(:mod:`bouncer.slots`).

Closing goes idle (and being-tested) servers first, then active ones, most recently active
first: an active server closes when its client releases it, or after a grace period with its
client told why (:meth:`bouncer.pool.pool.Pool.evict`).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.pool.pool import Pool

log = logging.getLogger(__name__)


def shrink(pools: Sequence["Pool"], allowed: int, reason: str, grace: Optional[float]) -> int:
    """Evict servers of *pools* until at most *allowed* remain (0 = unlimited: nothing).

    :return: how many servers were chosen for closing.
    """
    return shrink_to(pools, allowed, reason, grace) if allowed else 0


def shrink_to(pools: Sequence["Pool"], target: int, reason: str,
              grace: Optional[float]) -> int:
    """Evict servers of *pools* until at most *target* remain (0: all of them).

    Servers already marked to close are not counted: they are on their way out, so asking
    twice for the same target closes nothing more.

    :param grace: seconds after which an active server is closed under its client; None:
        only when the client releases it.
    :return: how many servers were chosen for closing.
    """
    excess = sum(staying(pool) for pool in pools) - target
    if excess <= 0:
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
