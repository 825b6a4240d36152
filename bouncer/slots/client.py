"""A worker's end of the slot channel: asks the supervisor for a slot before a pool opens a
server connection, returns it when the connection closes, closes servers when the
supervisor asks (another worker needs them, or a limit was lowered), and holds back the
min_pool_size connections it refused until it says they would be granted.  The design is in
:mod:`bouncer.slots`."""
from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Set, Tuple

import gevent
from gevent.event import Event

from bouncer.pool.eviction import shrink_to
from bouncer.slots import client_count
from bouncer.slots.channel import Channel, serve
from bouncer.slots.messages import (Announce, Ask, Cancel, Granted, Message, PoolKey, Queued,
                                    Refill, Release, Shrink, pool_key)
from bouncer.slots.table import MAX_DB, POOL_SIZE

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.pool.pool import Pool
    from bouncer.pool.registry import Registry
    from bouncer.worker import WorkerSpec

log = logging.getLogger(__name__)


def for_worker(spec: "WorkerSpec") -> Tuple["SlotClient", client_count.ClientCount]:
    """The slot channel and the shared client count the supervisor made for this worker."""
    path = os.path.join(spec.peer_dir, client_count.FILE_NAME)
    return (SlotClient(socket.socket(fileno=spec.slot_fd)),
            client_count.ClientCount(path, spec.index))


class _Request:
    __slots__ = ("pool", "wanted", "fill", "answered", "granted")

    def __init__(self, pool: "Pool", wanted: Callable[[], bool]) -> None:
        self.pool = pool
        #: Whether the connection is still wanted (someone waits for it).
        self.wanted = wanted
        #: Asked while nobody waited (for min_pool_size): a refusal is final.
        self.fill = not wanted()
        #: Set once the request is settled: granted, or no longer wanted.
        self.answered = Event()
        self.granted = False


class SlotClient:
    """Slots of this worker's pools; :meth:`start` it once the App is running."""

    def __init__(self, sock: socket.socket) -> None:
        self._channel = Channel(sock)
        self._app: Optional["App"] = None
        self._ids = itertools.count(1)
        self._requests: Dict[int, _Request] = {}
        #: The supervisor is gone: limits hold per worker (the workers are on their way out).
        self.lost = False
        #: Pools refused a connection for min_pool_size, until a Refill or new limits.
        self._unfilled: Set[PoolKey] = set()

    def start(self, app: "App") -> None:
        self._app = app
        gevent.spawn(self._serve)

    # -- called by pools ---------------------------------------------------------------------

    def acquire(self, pool: "Pool") -> bool:
        """Wait (cooperatively) for a slot for one more server connection of *pool*.

        While the limit is reached across the workers the request stays queued at the
        supervisor, for as long as the pool has clients waiting: they themselves give up
        after query_wait_timeout, as in one process.

        :return: False when nobody waits for the connection any more (nothing to open).
        """
        wait = pool.limits.query_wait_timeout() or None
        # The timeout only notices waiters that gave up meanwhile: the answer wakes us.
        return self._acquire(pool, lambda: bool(pool.waiters), lambda: wait)

    def acquire_dedicated(self, pool: "Pool", deadline: Optional[float]) -> bool:
        """:meth:`acquire` for a connection one client keeps (replication), which waits up to
        *deadline* (monotonic; None: for ever).

        :return: False when the deadline passed first.
        """
        def remaining() -> Optional[float]:
            return None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._acquire(pool, lambda: remaining() != 0.0, remaining)

    def _acquire(self, pool: "Pool", wanted: Callable[[], bool],
                 check_after: Callable[[], Optional[float]]) -> bool:
        if self.lost:
            return True
        request_id = next(self._ids)
        request = self._requests[request_id] = _Request(pool, wanted)
        limits = pool.limits
        self._channel.send(Ask(request_id, pool.database.name, pool.user.name, _pool_cap(pool),
                               limits.max_db_connections(), limits.max_user_connections(),
                               limits.min_pool_size(), not request.fill))
        try:
            while not request.answered.wait(check_after()):
                if not wanted():
                    break
        finally:
            del self._requests[request_id]
            if not request.granted:
                self._channel.send(Cancel(request_id))  # a Granted crossing it is released
        return request.granted

    def release(self, pool: "Pool") -> None:
        """A server connection of *pool* that held a slot closed."""
        self._channel.send(Release(pool.database.name, pool.user.name))

    def may_fill(self, pool: "Pool") -> bool:
        """Whether *pool* may ask for connections for min_pool_size: not while the supervisor
        has it wait for a Refill (the pool has that many servers across the workers)."""
        return _key(pool) not in self._unfilled

    def announce(self, pools: Sequence["Pool"]) -> None:
        """The limits of *pools* may have changed (RELOAD, SET, SET USER, SET POOL)."""
        for pool in pools:
            self._unfilled.discard(_key(pool))  # a raised min_pool_size is asked for again
            limits = pool.limits
            self._channel.send(Announce(pool.database.name, pool.user.name, _pool_cap(pool),
                                        limits.max_db_connections(),
                                        limits.max_user_connections()))

    # -- from the supervisor -----------------------------------------------------------------

    def _serve(self) -> None:
        serve(self._channel, self._handle, "the supervisor")
        self.lost = True
        log.error("slot channel to the supervisor closed: pool limits hold per worker now")
        for request in self._requests.values():
            request.granted = True
            request.answered.set()

    def _handle(self, message: Message) -> None:
        if isinstance(message, Granted):
            self._granted(message)
        elif isinstance(message, Queued):
            self._queued(message)
        elif isinstance(message, Shrink):
            self._shrink(message)
        elif isinstance(message, Refill):
            self._unfilled.discard(pool_key(message))
        else:
            raise ValueError(f"not a supervisor's message: {type(message).__name__}")

    def _granted(self, message: Granted) -> None:
        request = self._requests.get(message.request)
        if request is None or request.answered.is_set():  # withdrawn meanwhile
            self._channel.send(Release(message.database, message.user))
            return
        request.granted = True
        request.answered.set()

    def _queued(self, message: Queued) -> None:
        request = self._requests.get(message.request)
        if request is None:
            return
        if request.fill:
            self._unfilled.add(_key(request.pool))
            request.answered.set()
            return
        request.pool.blocked_by = message.limit  # (named when its waiters time out)
        if not request.wanted():  # nobody waits any more
            request.answered.set()

    def _shrink(self, message: Shrink) -> None:
        app = self._app
        assert app is not None  # (started before the channel is read)
        pools = _scope_pools(app.registry, message)
        # Connections still waiting for a slot sit in the pools' counts but not in the
        # supervisor's.
        queued = sum(1 for request in self._requests.values()
                     if not request.answered.is_set() and request.pool in pools)
        grace = app.config.limit_shrink_timeout if message.forced else None
        shrink_to(pools, message.target + queued, message.reason, grace)


def _key(pool: "Pool") -> PoolKey:
    return pool.database.name, pool.user.name


def _pool_cap(pool: "Pool") -> int:
    """The pool's size as it applies to the next connection: the reserve counts once its
    clients waited reserve_pool_timeout (0 = unlimited)."""
    return pool.size + pool.reserve if pool.size and pool.reserve_due() else pool.size


def _scope_pools(registry: "Registry", message: Shrink) -> List["Pool"]:
    """This worker's pools in the scope of the message's limit."""
    if message.limit in (POOL_SIZE, MAX_DB):
        database = registry.databases.get(message.database)
        pools = list(database.pools.values()) if database is not None else []
        if message.limit == POOL_SIZE:
            pools = [pool for pool in pools if pool.user.name == message.user]
        return pools
    user = registry.users.get(message.user)
    return list(user.pools.values()) if user is not None else []
