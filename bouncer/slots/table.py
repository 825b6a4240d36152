"""The supervisor's count of server-connection slots: who holds how many, per pool, per
database and per user, who waits for one, and who was refused one for min_pool_size.  See
:mod:`bouncer.slots` for the design.

Sans-IO: each event (a worker asks, cancels, releases, announces limits or dies) returns the
messages to send, addressed to workers; no socket, no gevent, no clock.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, TypeVar, Union

from bouncer.slots.messages import (Announce, Ask, Granted, Message, PoolKey, Queued, Refill,
                                    Shrink, pool_key)

#: The limits that span a pool's servers, the scope each counts, in the order they are checked.
POOL_SIZE, MAX_DB, MAX_USER = "pool_size", "max_db_connections", "max_user_connections"
LIMITS = (POOL_SIZE, MAX_DB, MAX_USER)
#: What a connection for min_pool_size is refused for when the pool has that many already.
MIN_POOL = "min_pool_size"

Worker = int
T = TypeVar("T")
Outgoing = List[Tuple[Worker, Message]]


@dataclass(frozen=True)
class Caps:
    """A request's limits (0 = unlimited)."""
    pool_size: int
    max_db_connections: int
    max_user_connections: int

    @classmethod
    def of(cls, message: Union[Ask, Announce]) -> "Caps":
        return cls(message.pool_size, message.max_db_connections, message.max_user_connections)

    def cap(self, limit: str) -> int:
        return int(getattr(self, limit))


@dataclass
class Pending:
    worker: Worker
    request: int
    key: PoolKey
    caps: Caps


def in_scope(limit: str, key: PoolKey, other: PoolKey) -> bool:
    """Whether a slot of pool *other* counts against *limit* for pool *key*."""
    if limit == POOL_SIZE:
        return other == key
    return other[0] == key[0] if limit == MAX_DB else other[1] == key[1]


def fair_shares(demands: Dict[Worker, int], cap: int,
                held: Optional[Dict[Worker, int]] = None) -> Dict[Worker, int]:
    """Max-min fair split of *cap* slots among workers wanting *demands*: nobody gets more
    than it wants, the shares sum to at most *cap*, all get the same level where they want
    that much, and the few slots left above that level go first to a worker that holds none
    (below one slot a worker each, the level is 0: a server another worker keeps, idle
    perhaps, would otherwise never come to its clients), then to the workers *held* most now,
    so that two equally loaded workers do not trade a server back and forth."""
    level = 0
    while (level < max(demands.values(), default=0)
           and sum(min(demand, level + 1) for demand in demands.values()) <= cap):
        level += 1
    shares = {worker: min(demand, level) for worker, demand in demands.items()}
    left = cap - sum(shares.values())
    holding = held or {}
    for worker in sorted(demands, key=lambda w: (holding.get(w, 0) > 0, -holding.get(w, 0),
                                                 -demands[w], w)):
        if left and shares[worker] < demands[worker]:
            shares[worker] += 1
            left -= 1
    return shares


class SlotTable:
    """Slots granted and asked for, across the workers."""

    def __init__(self) -> None:
        self.held: Dict[Worker, "Counter[PoolKey]"] = {}
        self.pools: "Counter[PoolKey]" = Counter()
        self.databases: "Counter[str]" = Counter()
        self.users: "Counter[str]" = Counter()
        #: Requests waiting for a slot, oldest first.
        self.queue: List[Pending] = []
        #: Workers refused a connection for min_pool_size, by pool: the caps and minimum they
        #: asked with, to tell them when it would be granted.
        self.fillers: Dict[Tuple[Worker, PoolKey], Tuple[Caps, int]] = {}

    # -- events ------------------------------------------------------------------------------

    def ask(self, worker: Worker, message: Ask) -> Outgoing:
        pending = Pending(worker, message.request, pool_key(message), Caps.of(message))
        if not message.wait:
            return self._fill(pending, message.min_pool_size)
        blocked = self.blocking_limit(pending.key, pending.caps)
        if blocked is None:
            return [self._grant(pending)]
        self.queue.append(pending)
        return [(worker, Queued(message.request, blocked))] + self._make_room()

    def _fill(self, pending: Pending, minimum: int) -> Outgoing:
        """A connection for min_pool_size, which the pool keeps across the workers together:
        granted while it has fewer and no limit stops it.  Otherwise the worker is told when
        that changes (Refill), so that it neither asks at every janitor tick nor has another
        worker close a server for a connection nobody waits for."""
        blocked = self.blocking_fill_limit(pending.key, pending.caps, minimum)
        if blocked is None:
            return [self._grant(pending)]
        if minimum:  # (else it was for clients that left meanwhile)
            self.fillers[(pending.worker, pending.key)] = (pending.caps, minimum)
        return [(pending.worker, Queued(pending.request, blocked))]

    def blocking_fill_limit(self, key: PoolKey, caps: Caps, minimum: int) -> Optional[str]:
        """Why a connection of *key* for min_pool_size *minimum* is refused now, or None."""
        if self.pools[key] >= minimum:
            return MIN_POOL
        return self.blocking_limit(key, caps)

    def cancel(self, worker: Worker, request: int) -> Outgoing:
        """A request withdrawn; one already granted is released by the worker instead."""
        self.queue = [p for p in self.queue if (p.worker, p.request) != (worker, request)]
        return []

    def release(self, worker: Worker, key: PoolKey) -> Outgoing:
        """:raises ValueError: *worker* holds no slot of *key* (a confused or hostile peer)."""
        held = self.held.get(worker, Counter())
        if not held[key]:
            raise ValueError(f"release of a slot not held: {key[0]}/{key[1]}")
        self._count(worker, key, -1)
        return self._grant_queued()

    def announce(self, worker: Worker, message: Announce) -> Outgoing:
        """New limits for a pool: the worker's waiting requests take them, and a limit now
        below the count across the workers has the holders shrink to fair shares."""
        key, caps = pool_key(message), Caps.of(message)
        for pending in self.queue:
            if (pending.worker, pending.key) == (worker, key):
                pending.caps = caps
        out = self._grant_queued()
        for limit in LIMITS:
            cap = caps.cap(limit)
            if cap and self.count(limit, key) > cap:
                out += self._shrinks(limit, key, cap, f"{limit} lowered to {cap}", forced=True)
        return out

    def worker_gone(self, worker: Worker) -> Outgoing:
        """A worker's channel closed (it exited or was killed): all its slots come back."""
        for key, count in self.held.pop(worker, Counter()).items():
            _step(self.pools, key, -count)
            _step(self.databases, key[0], -count)
            _step(self.users, key[1], -count)
        self.queue = [p for p in self.queue if p.worker != worker]
        self.fillers = {filler: ask for filler, ask in self.fillers.items()
                        if filler[0] != worker}
        return self._grant_queued()

    # -- counting ----------------------------------------------------------------------------

    def count(self, limit: str, key: PoolKey) -> int:
        """Slots granted, across the workers, in the scope of *limit* for pool *key*."""
        if limit == POOL_SIZE:
            return self.pools[key]
        return self.databases[key[0]] if limit == MAX_DB else self.users[key[1]]

    def blocking_limit(self, key: PoolKey, caps: Caps) -> Optional[str]:
        """The first limit a new slot of *key* would break, or None."""
        for limit in LIMITS:
            cap = caps.cap(limit)
            if cap and self.count(limit, key) >= cap:
                return limit
        return None

    def worker_count(self, worker: Worker, limit: str, key: PoolKey) -> int:
        held = self.held.get(worker, Counter())
        return sum(n for other, n in held.items() if in_scope(limit, key, other))

    def _count(self, worker: Worker, key: PoolKey, step: int) -> None:
        held = self.held.setdefault(worker, Counter())
        _step(held, key, step)
        _step(self.pools, key, step)
        _step(self.databases, key[0], step)
        _step(self.users, key[1], step)

    # -- granting and making room ------------------------------------------------------------

    def _grant(self, pending: Pending) -> Tuple[Worker, Message]:
        self._count(pending.worker, pending.key, +1)
        return pending.worker, Granted(pending.request, *pending.key)

    def _grant_queued(self) -> Outgoing:
        """Grant, oldest first, every waiting request that fits now; then tell the workers
        refused a connection for min_pool_size that would be granted now, and ask for room
        for the requests still waiting."""
        out: Outgoing = []
        waiting = []
        for pending in self.queue:
            if self.blocking_limit(pending.key, pending.caps) is None:
                out.append(self._grant(pending))
            else:
                waiting.append(pending)
        self.queue = waiting
        return out + self._refills() + self._make_room()

    def _refills(self) -> Outgoing:
        """Every worker whose min_pool_size connection fits now asks again (all of them: one
        that has no client of the pool any more would not), and the first asks get it."""
        ready = [filler for filler, (caps, minimum) in self.fillers.items()
                 if self.blocking_fill_limit(filler[1], caps, minimum) is None]
        for filler in ready:
            del self.fillers[filler]
        return [(worker, Refill(*key)) for worker, key in ready]

    def _make_room(self) -> Outgoing:
        """For each scope that keeps requests waiting, ask the workers holding more than a
        fair share of it (counting what each waits for) to come down to that share, so load
        that moves between workers is not starved by servers another worker keeps."""
        out: Outgoing = []
        seen = set()
        for pending in self.queue:
            limit = self.blocking_limit(pending.key, pending.caps)
            if limit is None or (limit, _scope(limit, pending.key)) in seen:
                continue
            seen.add((limit, _scope(limit, pending.key)))
            out += self._shrinks(limit, pending.key, pending.caps.cap(limit),
                                 f"evicted for another worker: {limit} reached", forced=False)
        return out

    def _shrinks(self, limit: str, key: PoolKey, cap: int, reason: str,
                 forced: bool) -> Outgoing:
        held = {worker: self.worker_count(worker, limit, key) for worker in self.held}
        demands = dict(held)
        for pending in self.queue:
            if in_scope(limit, key, pending.key):
                demands[pending.worker] = demands.get(pending.worker, 0) + 1
        shares = fair_shares(demands, cap, held)
        return [(worker, Shrink(limit, key[0], key[1], shares[worker], reason, forced))
                for worker, count in sorted(held.items()) if count > shares[worker]]


def _step(counter: "Counter[T]", name: T, step: int) -> None:
    """Add *step* to a count, forgetting it at 0 (pools and users come and go)."""
    counter[name] += step
    if not counter[name]:
        del counter[name]


def _scope(limit: str, key: PoolKey) -> object:
    return key if limit == POOL_SIZE else key[0] if limit == MAX_DB else key[1]

