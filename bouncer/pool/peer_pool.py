"""The cancel requests being forwarded to one peer (PgBouncer's peer pool): at most
``pool_size`` connections to the peer at a time, later requests waiting their turn in arrival
order, so that a burst of cancels (a slow or dead PostgreSQL brings them) cannot open
connections without bound.  Its counts are SHOW PEER_POOLS'."""
from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING, Deque, Iterator

from gevent.event import Event

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.config import Config
    from bouncer.config.model import PeerDef


def peer_pool_size(config: "Config", peer: "PeerDef") -> int:
    """A ``[peers]`` entry's ``pool_size``, ``default_pool_size`` when unset; 0 = unlimited."""
    return config.default_pool_size if peer.pool_size is None else peer.pool_size


class PeerPool:
    """Forwarding slots for one peer, created on its first forwarded cancel."""

    def __init__(self, peer_id: int) -> None:
        self.peer_id = peer_id
        #: Forwards holding a slot: their connection to the peer is open or opening.
        self.active = 0
        self._size = 0
        self._queue: Deque[Event] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @contextlib.contextmanager
    def turn(self, size: int) -> Iterator[None]:
        """Run the block in a slot of a pool of ``size`` (0: unlimited), waiting for one.

        The size comes with each request, so a RELOAD that changes it applies from the next
        one on.  A timeout while queued leaves the queue (or the slot just handed over).
        """
        self._size = size
        ticket = Event()
        self._queue.append(ticket)
        self._admit()
        try:
            ticket.wait()
        except BaseException:
            if ticket.is_set():
                self._leave()
            else:
                self._queue.remove(ticket)
            raise
        try:
            yield
        finally:
            self._leave()

    def _admit(self) -> None:
        # A slot is handed to the oldest waiter directly: a newcomer cannot slip in between.
        while self._queue and (not self._size or self.active < self._size):
            self.active += 1
            self._queue.popleft().set()

    def _leave(self) -> None:
        self.active -= 1
        self._admit()
