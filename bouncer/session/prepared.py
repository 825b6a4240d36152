"""Named prepared statements in transaction and statement pooling (``max_prepared_statements``).

A client's named statements must follow it from server to server.  As PgBouncer 1.21 does,
each distinct statement (query text plus parameter types) gets one server-side name,
``BOUNCER_<id>``, shared by every client; each server connection remembers which of those it
has prepared (an LRU list capped at ``max_prepared_statements``), and each client which of
its names stands for which statement.  Client messages naming a statement are rewritten:

* Parse of a statement the server has is not sent: the client gets a synthetic
  ParseComplete where the server's would have been;
* Bind or Describe of a statement the server lacks is preceded by an injected Parse (and,
  past the cap, a Close of the least recently used one) whose replies are swallowed;
* Close of a statement forgets the client's name only and is answered synthetically.

Replies must stay in order, so while injected or synthetic replies are outstanding the
tracker keeps a queue of the requests sent to the server and walks the server's replies
(:class:`~bouncer.proto.extended.ReplyFilter`); an ErrorResponse makes the server skip to
the next Sync, which the queue mirrors, undoing what skipped requests would have done.
The rest of the time only the client stream is walked and the count of unanswered sync
points kept, so the server's replies are forwarded raw.

Sans-IO: bytes in, bytes out; the relay does the reading and writing.
"""
from __future__ import annotations

import itertools
import re
import weakref
from collections import OrderedDict, deque
from functools import partial
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from bouncer.errors import ClientError
from bouncer.proto.constants import Backend, Frontend
from bouncer.proto.extended import (
    CLOSE_COMPLETE,
    PARSE_COMPLETE,
    PORTAL,
    ReplyFilter,
    ReplyPosition,
    RequestRewriter,
    close_statement,
    describe_statement,
    parse_bind_names,
    parse_message,
    parse_parse,
    parse_target,
    renamed_bind,
)

_PARSE, _BIND, _DESCRIBE = Frontend.PARSE, Frontend.BIND, Frontend.DESCRIBE
_EXECUTE, _CLOSE, _SYNC = Frontend.EXECUTE, Frontend.CLOSE, Frontend.SYNC
_QUERY, _FUNCTION_CALL = Frontend.QUERY, Frontend.FUNCTION_CALL
_ERROR, _READY = Backend.ERROR_RESPONSE, Backend.READY_FOR_QUERY
#: Stands for the replies to everything sent before the queue started: so many
#: ReadyForQuery messages (not a type byte, so no client message can pass for it).
_BARRIER = -1
#: Requests answered up to a ReadyForQuery, errors included.
_SYNC_KINDS = frozenset((_SYNC, _QUERY, _FUNCTION_CALL, _BARRIER))
#: Extended-protocol requests: an error ends them and makes the server skip to Sync.
_EXTENDED = frozenset((_PARSE, _BIND, _DESCRIBE, _EXECUTE, _CLOSE))
#: The reply that completes each extended request (besides ErrorResponse).
_ENDS = {
    _PARSE: (Backend.PARSE_COMPLETE,),
    _BIND: (Backend.BIND_COMPLETE,),
    _CLOSE: (Backend.CLOSE_COMPLETE,),
    _DESCRIBE: (Backend.ROW_DESCRIPTION, Backend.NO_DATA),
    _EXECUTE: (Backend.COMMAND_COMPLETE, Backend.EMPTY_QUERY_RESPONSE,
               Backend.PORTAL_SUSPENDED),
}
_FORWARD, _SKIP, _FAKE = 0, 1, 2  # what happens to a request's reply
SERVER_NAME_PREFIX = b"BOUNCER_"

#: The commands that drop every prepared statement of a session, sent alone.
_RESET = re.compile(rb"\s*(?:discard\s+all|deallocate\s+(?:prepare\s+)?all)\s*;?\s*\x00",
                    re.IGNORECASE)


def is_statement_reset(sql: str) -> bool:
    """True when ``sql`` (say ``server_reset_query``) drops all prepared statements."""
    return _RESET.fullmatch(sql.encode() + b"\0") is not None


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


class ServerStatements:
    """The statements one server connection has prepared, least recently used first."""

    __slots__ = ("_lru", "unknown")

    def __init__(self) -> None:
        self._lru: "OrderedDict[Statement, None]" = OrderedDict()
        #: Set when a DISCARD ALL / DEALLOCATE ALL failed: what the server holds is unknown,
        #: so the connection must not be reused.
        self.unknown = False

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, statement: Statement) -> bool:
        return statement in self._lru

    def touch(self, statement: Statement) -> bool:
        """Mark ``statement`` used; False when the server does not have it."""
        try:
            self._lru.move_to_end(statement)
        except KeyError:
            return False
        return True

    def add(self, statement: Statement) -> None:
        self._lru[statement] = None

    def restore(self, statement: Statement) -> None:
        """Take back an eviction the server skipped: the statement is still the oldest."""
        self._lru[statement] = None
        self._lru.move_to_end(statement, last=False)

    def discard(self, statement: Statement) -> None:
        self._lru.pop(statement, None)

    def clear(self) -> None:
        """The server dropped every prepared statement (DISCARD ALL, DEALLOCATE ALL)."""
        self._lru.clear()
        self.unknown = False

    def evict(self, capacity: int) -> List[Statement]:
        """Forget the least recently used statements beyond ``capacity``; return them."""
        victims = []
        while len(self._lru) > capacity:
            victims.append(self._lru.popitem(last=False)[0])
        return victims


def server_statements(server: Any) -> ServerStatements:
    """The statements ``server`` has prepared (kept on the connection object)."""
    statements = getattr(server, "prepared", None)
    if statements is None:
        statements = server.prepared = ServerStatements()
    return statements


def prepared_count(server: Any) -> int:
    """How many statements bouncer has prepared on ``server`` (SHOW SERVERS)."""
    statements = getattr(server, "prepared", None)
    return len(statements) if statements is not None else 0


def statements_unknown(server: Any) -> bool:
    """True when a failed reset left ``server``'s prepared statements unknown."""
    statements = getattr(server, "prepared", None)
    return statements is not None and statements.unknown


# -- the request queue -----------------------------------------------------------------------

class _Request:
    """A request sent to the server (or answered for it), in the order of its replies."""

    __slots__ = ("kind", "mode", "reply", "undo", "special", "waiting")

    def __init__(self, kind: int, mode: int = _FORWARD, reply: bytes = b"",
                 undo: Optional[Callable[[], None]] = None, waiting: int = 0) -> None:
        self.kind = kind
        self.mode = mode
        self.reply = reply  # the synthetic reply of a _FAKE request
        #: Reverts what the tracker assumed when the request fails or the server skips it.
        self.undo = undo
        #: Needs the replies walked: swallowed, synthetic, or with something to undo.
        self.special = mode != _FORWARD or undo is not None
        self.waiting = waiting  # ReadyForQuery messages a barrier still waits for


class PreparedTracker:
    """One client's named statements, and the rewriting of its traffic to its server.

    :param capacity: ``max_prepared_statements``, the cap per server connection.
    :param stats: counters with a ``server_parse_count`` attribute.
    :param max_length: ``max_packet_size``.
    """

    def __init__(self, capacity: int, stats: Any, max_length: int = 2**31 - 1,
                 registry: StatementRegistry = REGISTRY) -> None:
        self.capacity = capacity
        self.stats = stats
        self.registry = registry
        #: The client's statement names.
        self.statements: Dict[bytes, Statement] = {}
        #: Sync points sent that the server skipped (an error before them): the relay
        #: must stop waiting for their ReadyForQuery.
        self.lost_syncs = 0
        self._requests = RequestRewriter(max_length)
        self._server: Optional[ServerStatements] = None
        self._position_of: Callable[[], ReplyPosition] = ReplyPosition
        # Untracked: unanswered sync points, and extended requests after the last one.
        self._outstanding = 0
        self._tail: List[int] = []
        # Tracked: the queue, the reply walker, requests in it that need it, and whether
        # the server is skipping messages until the client's next Sync.
        self._queue: Optional[Deque[_Request]] = None
        self._replies: Optional[ReplyFilter] = None
        self._specials = 0
        self._skipping = False
        self._to_client: List[bytes] = []
        self._handlers = {_PARSE: self._parse, _BIND: self._bind, _DESCRIBE: self._describe,
                          _CLOSE: self._close, _QUERY: self._query}

    @property
    def tracked(self) -> bool:
        """True while the server's replies must go through :meth:`from_server`."""
        return self._queue is not None

    # -- linking -------------------------------------------------------------------------------

    def link(self, server: ServerStatements, position_of: Callable[[], ReplyPosition]) -> None:
        """A server was linked; ``position_of()`` tells where its reply stream stands."""
        self._server = server
        self._position_of = position_of

    def unlink(self) -> None:
        """The server was released or dropped: nothing of it is outstanding any more."""
        self._server = None
        self._outstanding = 0
        self._tail.clear()
        self._queue = self._replies = None
        self._specials = 0
        self._skipping = False

    # -- client -> server ----------------------------------------------------------------------

    def from_client(self, chunk: bytes) -> Tuple[bytes, bytes]:
        """Rewrite a client chunk; return ``(bytes for the server, bytes for the client)``.

        :raises ProtocolError: a malformed message.
        :raises ClientError: a Parse reuses a name the client has not closed.
        """
        to_server = self._requests.feed(chunk, self._on_request)
        if self._queue is None and self._tail:
            self._start_queue()  # the replies to unsynced requests must be walked
        self._settle()
        to_client = b"".join(self._to_client)
        self._to_client.clear()
        return to_server, to_client

    def _on_request(self, msg_type: int, message: Optional[bytes]) -> Optional[bytes]:
        if self._skipping:
            return self._while_skipping(msg_type)
        if message is None:
            self._expect(msg_type)
            return None
        return self._handlers[msg_type](message)

    def _while_skipping(self, msg_type: int) -> None:
        """The server ignores everything up to Sync: forward it unchanged, expect nothing."""
        if msg_type == _SYNC:
            self._skipping = False
            self._expect(msg_type)
        elif msg_type in (_QUERY, _FUNCTION_CALL):
            self.lost_syncs += 1

    def _expect(self, msg_type: int) -> None:
        """Note a request forwarded as it is."""
        queue = self._queue
        if queue is None:
            if msg_type in _EXTENDED:
                self._tail.append(msg_type)
                return
            if msg_type not in _SYNC_KINDS:
                return
            if msg_type == _SYNC or not self._tail:
                self._outstanding += 1
                self._tail.clear()
                return
            # A Query after unsynced requests is skipped if one of them fails: whether its
            # ReadyForQuery comes depends on the replies, which must be walked.
            self._start_queue()
            queue = self._queue
        if msg_type in _SYNC_KINDS or msg_type in _EXTENDED:
            queue.append(_Request(msg_type))

    def _parse(self, message: bytes) -> Optional[bytes]:
        name, definition = parse_parse(message[5:])
        if not name:
            self._expect(_PARSE)
            return None
        if name in self.statements:
            raise ClientError(f"prepared statement \"{name.decode(errors='replace')}\" already "
                              "exists", "42P05")
        statement = self.registry.get(definition)
        self.statements[name] = statement
        forget = partial(self._forget, name, statement)
        server = self._server
        if server.touch(statement):
            self._fake(PARSE_COMPLETE, forget)
            return b""
        self.stats.server_parse_count += 1
        server.add(statement)
        self._add(_Request(_PARSE, undo=_both(forget, partial(server.discard, statement))))
        return statement.parse + self._evict()

    def _bind(self, message: bytes) -> Optional[bytes]:
        payload = message[5:]
        _, name, _ = parse_bind_names(payload)
        statement = self.statements.get(name)
        if statement is None:  # unnamed, or unknown: the server says what PostgreSQL says
            self._expect(_BIND)
            return None
        prefix = self._ensure_prepared(statement)
        self._expect(_BIND)
        return prefix + renamed_bind(payload, statement.name)

    def _describe(self, message: bytes) -> Optional[bytes]:
        kind, name = parse_target(message[5:], "Describe")
        statement = self.statements.get(name) if kind != PORTAL else None
        if statement is None:
            self._expect(_DESCRIBE)
            return None
        prefix = self._ensure_prepared(statement)
        self._expect(_DESCRIBE)
        return prefix + describe_statement(statement.name)

    def _close(self, message: bytes) -> Optional[bytes]:
        kind, name = parse_target(message[5:], "Close")
        if kind == PORTAL or not name:
            self._expect(_CLOSE)
            return None
        # The server keeps the statement for other clients; the client only loses its name.
        statement = self.statements.pop(name, None)
        self._fake(CLOSE_COMPLETE,
                   partial(self._restore, name, statement) if statement is not None else None)
        return b""

    def _query(self, message: bytes) -> None:
        if _RESET.fullmatch(message, 5) is None:
            self._expect(_QUERY)
            return None
        # DISCARD ALL / DEALLOCATE ALL empties the server and the client's names, as
        # PgBouncer 1.22 does; should it fail, the server's state is unknown.
        server, statements = self._server, dict(self.statements)
        self.statements.clear()
        server.clear()
        self._add(_Request(_QUERY, undo=partial(self._reset_failed, server, statements)))
        return None

    # -- decisions shared by the handlers ------------------------------------------------------

    def _ensure_prepared(self, statement: Statement) -> bytes:
        """What to send before a message using ``statement`` on the server: b"" or a Parse."""
        server = self._server
        if server.touch(statement):
            return b""
        self.stats.server_parse_count += 1
        server.add(statement)
        self._add(_Request(_PARSE, _SKIP, undo=partial(server.discard, statement)))
        return statement.parse + self._evict()

    def _evict(self) -> bytes:
        """Close what the server holds beyond the cap (the newest statement is never evicted)."""
        server = self._server
        closes = []
        for victim in server.evict(self.capacity):
            self._add(_Request(_CLOSE, _SKIP, undo=partial(server.restore, victim)))
            closes.append(close_statement(victim.name))
        return b"".join(closes)

    def _fake(self, reply: bytes, undo: Optional[Callable[[], None]]) -> None:
        """Answer the client ourselves: now if nothing is on its way to it, else in turn."""
        if self._queue is None:
            if not self._outstanding and not self._tail:
                self._to_client.append(reply)
                return
            self._start_queue()  # (which may find the last awaited reply half received)
        if self._queue:
            self._add(_Request(_PARSE, _FAKE, reply, undo))
        elif not self._replies.send_after_current(reply):
            self._to_client.append(reply)

    def _add(self, request: _Request) -> None:
        if self._queue is None:
            self._start_queue()
        self._queue.append(request)
        self._specials += request.special

    def _start_queue(self) -> None:
        """Track from here: what was sent before is answered by so many ReadyForQuery."""
        queue: Deque[_Request] = deque()
        if self._outstanding:
            queue.append(_Request(_BARRIER, waiting=self._outstanding))
        queue.extend(_Request(kind) for kind in self._tail)
        self._outstanding = 0
        self._tail.clear()
        self._queue = queue
        self._replies = ReplyFilter()
        self._replies.adopt(self._position_of(), self._on_reply)

    def _settle(self) -> None:
        """Stop tracking once nothing in the queue needs the replies walked."""
        queue = self._queue
        if queue is None or self._specials or self._skipping or not self._replies.at_boundary:
            return
        unsynced = False
        for request in queue:
            if request.kind == _SYNC:
                unsynced = False
            elif request.kind in _EXTENDED:
                unsynced = True
            elif unsynced:  # a Query the server skips if a request before it fails
                return
        if unsynced:
            return  # their replies could not be found again
        self._outstanding = sum(request.waiting or 1 for request in queue
                                if request.kind in _SYNC_KINDS)
        self._queue = self._replies = None

    # -- undo ------------------------------------------------------------------------------------

    def _forget(self, name: bytes, statement: Statement) -> None:
        if self.statements.get(name) is statement:
            del self.statements[name]

    def _restore(self, name: bytes, statement: Statement) -> None:
        self.statements.setdefault(name, statement)

    def _reset_failed(self, server: ServerStatements, statements: Dict[bytes, Statement]) -> None:
        server.unknown = True
        for name, statement in statements.items():
            self.statements.setdefault(name, statement)

    # -- server -> client ----------------------------------------------------------------------

    def answered(self, replies: int) -> None:
        """ReadyForQuery messages relayed untracked."""
        self._outstanding = max(0, self._outstanding - replies)

    def from_server(self, chunk: bytes) -> bytes:
        """Filter a server chunk while tracked; return the bytes for the client."""
        out = self._replies.feed(chunk, self._on_reply)
        self._settle()
        return out

    def _on_reply(self, msg_type: int) -> Tuple[bool, bytes]:
        queue = self._queue
        if not queue:
            return True, b""  # asynchronous (NOTICE, ParameterStatus) or unexpected
        head = queue[0]
        if msg_type == _READY:
            self._ready()
        elif head.kind in _SYNC_KINDS:
            if msg_type == _ERROR and head.undo is not None:
                head.undo()
                head.undo = None
            return True, b""
        elif msg_type == _ERROR:
            self._failed()
        elif msg_type in _ENDS[head.kind]:
            self._pop()
            return head.mode != _SKIP, self._due_fakes()
        else:
            return True, b""
        return True, self._due_fakes()

    def _ready(self) -> None:
        """ReadyForQuery: anything still expected before the sync point was skipped."""
        queue = self._queue
        skipped = []
        while queue and queue[0].kind not in _SYNC_KINDS:
            skipped.append(self._pop())
        self._undo(skipped)
        self._skipping = False
        if not queue:
            return
        head = queue[0]
        if head.kind == _BARRIER:
            head.waiting -= 1
            if head.waiting:
                return
        self._pop()

    def _failed(self) -> None:
        """An extended request failed: the server skips the rest up to the next Sync."""
        queue = self._queue
        dropped = [self._pop()]
        while queue and queue[0].kind != _SYNC:
            request = self._pop()
            self.lost_syncs += request.kind in _SYNC_KINDS
            dropped.append(request)
        self._undo(dropped)
        self._skipping = not queue

    def _pop(self) -> _Request:
        request = self._queue.popleft()
        self._specials -= request.special
        return request

    @staticmethod
    def _undo(requests: List[_Request]) -> None:
        for request in reversed(requests):  # latest first: they may touch the same names
            if request.undo is not None:
                request.undo()

    def _due_fakes(self) -> bytes:
        """The synthetic replies that are next in line."""
        queue = self._queue
        replies = []
        while queue and queue[0].mode == _FAKE:
            replies.append(self._pop().reply)
        return b"".join(replies)


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def undo() -> None:
        first()
        second()
    return undo
