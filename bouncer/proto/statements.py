"""What is prepared where: statement definitions, and each server connection's LRU set.

Each distinct statement (query text plus parameter types) gets one name every server knows
it by, ``BOUNCER_<id>``, as PgBouncer names its own ``PGBOUNCER_<id>``; a server connection
remembers which of them it has prepared, least recently used first, so that the cap
(``max_prepared_statements``) evicts the right one.  The client side is in
:mod:`bouncer.proto.prepared`.
"""
from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from typing import Iterable, Iterator, List, Set, Tuple

from bouncer.proto.extended import parse_message

SERVER_NAME_PREFIX = b"BOUNCER_"

#: CommandComplete tags after which a session has no prepared statements left.
RESET_TAGS = frozenset((b"DISCARD ALL", b"DEALLOCATE ALL"))


# -- statements ------------------------------------------------------------------------------

class Statement:
    """One distinct statement definition and its Parse message for servers."""

    __slots__ = ("id", "name", "parse", "__weakref__")

    def __init__(self, statement_id: int, definition: bytes) -> None:
        self.id = statement_id
        #: The name every server knows it by.
        self.name = SERVER_NAME_PREFIX + str(statement_id).encode()
        self.parse = parse_message(self.name, definition)


class StatementRegistry:
    """Statements by definition, shared by all clients so that servers prepare each once.

    Entries live as long as a client or a server holds them (weak values), like PgBouncer's
    reference-counted global cache.
    """

    def __init__(self) -> None:
        self._by_definition: "weakref.WeakValueDictionary[bytes, Statement]" = \
            weakref.WeakValueDictionary()
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._by_definition)

    def get(self, definition: bytes) -> Statement:
        """The statement for ``definition`` (query text and parameter types, as in Parse)."""
        statement = self._by_definition.get(definition)
        if statement is None:
            statement = Statement(next(self._ids), definition)
            self._by_definition[definition] = statement
        return statement


#: The process-wide registry: ids only need to be unique per server connection, and sharing
#: one registry lets clients of every pool reuse what a server already prepared.
REGISTRY = StatementRegistry()


#: What a request sent to a server does to its statements once it succeeds.
ADD, REMOVE, CLEAR = 1, 2, 3
Effect = Tuple[int, Statement]


class ServerStatements:
    """The statements one server connection has prepared.

    Two views: those the server confirmed (a ParseComplete seen, no CloseComplete or
    DISCARD ALL since), and those expected once the requests on their way succeed, least
    recently used first, which decisions use.  When a request fails or the server skips
    it, the expected view is rebuilt from the confirmed one and the requests still pending.
    """

    __slots__ = ("_expected", "_confirmed")

    def __init__(self) -> None:
        self._expected: "OrderedDict[Statement, None]" = OrderedDict()
        self._confirmed: Set[Statement] = set()

    def __len__(self) -> int:
        return len(self._expected)

    def __iter__(self) -> Iterator[Statement]:
        return iter(self._expected)

    def touch(self, statement: Statement) -> bool:
        """Mark ``statement`` used; False when the server is not expected to have it."""
        try:
            self._expected.move_to_end(statement)
        except KeyError:
            return False
        return True

    def confirmed(self, statement: Statement) -> bool:
        return statement in self._confirmed

    def expect(self, effect: Effect) -> None:
        """A request with ``effect`` was sent."""
        op, statement = effect
        if op == ADD:
            self._expected[statement] = None
        elif op == REMOVE:
            self._expected.pop(statement, None)
        else:
            self._expected.clear()

    def confirm(self, effect: Effect) -> None:
        """A request with ``effect`` succeeded."""
        op, statement = effect
        if op == ADD:
            self._confirmed.add(statement)
        elif op == REMOVE:
            self._confirmed.discard(statement)
        else:
            self._confirmed.clear()

    def rebuild(self, pending: Iterable[Effect]) -> None:
        """Some requests failed or were skipped: expect what was confirmed, then ``pending``."""
        expected = OrderedDict((statement, None) for statement in self._expected
                               if statement in self._confirmed)
        expected.update((statement, None) for statement in self._confirmed)
        self._expected = expected
        for effect in pending:
            self.expect(effect)

    def clear(self) -> None:
        """The server dropped every prepared statement (``server_reset_query``)."""
        self._expected.clear()
        self._confirmed.clear()

    def evictions(self, capacity: int) -> List[Statement]:
        """The least recently used statements beyond ``capacity``."""
        return list(itertools.islice(self._expected, max(0, len(self._expected) - capacity)))
