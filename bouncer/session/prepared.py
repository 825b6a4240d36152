"""A client's named prepared statements in transaction and statement pooling.

A client's statements must follow it from server to server.  Its names map to statements
shared by all clients (:mod:`bouncer.session.statements`), and the messages naming them are
rewritten, as PgBouncer 1.21+ does:

* Parse of a statement the server has is not sent: the client gets a synthetic
  ParseComplete where the server's would have been;
* Bind or Describe of a statement the server lacks is preceded by an injected Parse (and,
  past ``max_prepared_statements``, a Close of the least recently used one) whose replies
  are swallowed;
* Close of a statement forgets the client's name only and is answered synthetically.

Replies must stay in order, so while injected or synthetic replies are outstanding the
tracker keeps a queue of the requests sent to the server and walks the server's replies
(:class:`~bouncer.proto.extended.ReplyFilter`); an ErrorResponse makes the server skip to
the next Sync, which the queue mirrors, undoing what skipped requests would have done.  The
rest of the time only the count of unanswered sync points is kept, and the server's replies
are forwarded raw.  Sans-IO: bytes in, bytes out; the relay reads and writes.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple

from bouncer.errors import ClientError
from bouncer.proto.constants import Frontend
from bouncer.proto.extended import (
    CLOSE_COMPLETE,
    PARSE_COMPLETE,
    PORTAL,
    RequestRewriter,
    close_statement,
    describe_statement,
    parse_bind_names,
    parse_parse,
    parse_target,
    renamed_bind,
)
from bouncer.proto.scanner import ReplyPosition
from bouncer.session.statements import (
    ADD,
    CLEAR,
    REGISTRY,
    REMOVE,
    ServerStatements,
    Statement,
    StatementRegistry,
    resets_statements,
    server_statements,
)
from bouncer.session.request_queue import (
    EXTENDED,
    FAKE,
    FORWARD,
    SKIP,
    SYNC,
    SYNC_KINDS,
    Request,
    RequestQueue,
)

_PARSE, _BIND, _DESCRIBE = Frontend.PARSE, Frontend.BIND, Frontend.DESCRIBE
_CLOSE, _QUERY, _FUNCTION_CALL = Frontend.CLOSE, Frontend.QUERY, Frontend.FUNCTION_CALL


class PreparedTracker:
    """One client's named statements, and the rewriting of its traffic to its server.

    :param capacity: ``max_prepared_statements``, the cap per server connection.
    :param stats: counters with a ``server_parse_count`` attribute.
    :param max_length: ``max_packet_size``.
    :param position_of: where a linked server's reply stream stands (between chunks).
    """

    def __init__(self, capacity: int, stats: Any, max_length: int = 2**31 - 1,
                 registry: StatementRegistry = REGISTRY,
                 position_of: Callable[[Any], ReplyPosition] = lambda server: ReplyPosition()
                 ) -> None:
        self.capacity = capacity
        self.stats = stats
        self.registry = registry
        self.position_of = position_of
        #: The client's statement names.
        self.statements: Dict[bytes, Statement] = {}
        #: Sync points sent that the server skipped (an error before them): the relay
        #: must stop waiting for their ReadyForQuery.
        self.lost_syncs = 0
        #: True while the server's replies must go through :meth:`from_server`.
        self.tracked = False
        # Untracked, the rewriter counts the unanswered sync points and the requests after
        # the last one; tracked, the queue holds every request whose reply is awaited.
        self._requests = RequestRewriter(max_length)
        self._queue: Optional[RequestQueue] = None
        self._connection: Any = None  # the linked server connection
        self._on_server: Optional[ServerStatements] = None  # its statements, once needed
        self._to_client: List[bytes] = []
        self._handlers = {_PARSE: self._parse, _BIND: self._bind, _DESCRIBE: self._describe,
                          _CLOSE: self._close, _QUERY: self._query}

    # -- linking -------------------------------------------------------------------------------

    def link(self, server: Any) -> None:
        """A server connection was linked (per transaction: kept cheap)."""
        self._connection = server
        self._on_server = None

    def unlink(self) -> None:
        """The server was released or dropped: nothing of it is outstanding any more."""
        self._connection = self._on_server = None
        if self.tracked:
            self._stop_tracking(0)
        else:
            self._requests.sync_points = 0
            if self._requests.unsynced:
                self._requests.unsynced.clear()

    @property
    def _server(self) -> ServerStatements:
        """The statements of the linked server."""
        if self._on_server is None:
            self._on_server = server_statements(self._connection)
        return self._on_server

    # -- client -> server ----------------------------------------------------------------------

    def from_client(self, chunk: bytes) -> Tuple[bytes, bytes]:
        """Rewrite a client chunk; return ``(bytes for the server, bytes for the client)``.

        :raises ProtocolError: a malformed message.
        :raises ClientError: a Parse reuses a name the client has not closed.
        """
        to_server = self._requests.feed(chunk, self._on_request)
        if not self.tracked:
            if self._requests.unsynced:
                self._start_queue()  # the replies to unsynced requests must be walked
        else:
            self._settle()
        if not self._to_client:
            return to_server, b""
        to_client = b"".join(self._to_client)
        self._to_client.clear()
        return to_server, to_client

    def _on_request(self, msg_type: int, message: Optional[bytes]) -> Optional[bytes]:
        if self.tracked and self._queue.skipping:
            return self._while_skipping(msg_type)
        if message is None:
            self._expect(msg_type)
            return None
        return self._handlers[msg_type](message)

    def _while_skipping(self, msg_type: int) -> None:
        """The server ignores everything up to Sync: forward it unchanged, expect nothing."""
        if msg_type == SYNC:
            self._queue.skipping = False
            self._expect(msg_type)
        elif msg_type in (_QUERY, _FUNCTION_CALL):
            self.lost_syncs += 1

    def _expect(self, msg_type: int) -> None:
        """Note a request forwarded as it is."""
        if not self.tracked:
            if self._requests.count(msg_type):
                return
            # A Query after unsynced requests is skipped if one of them fails: whether its
            # ReadyForQuery comes depends on the replies, which must be walked.
            self._start_queue()
        if msg_type in SYNC_KINDS or msg_type in EXTENDED:
            self._queue.append(Request(msg_type))

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
        if self._on_server_for_sure(statement):
            self._fake(PARSE_COMPLETE, forget)
            return b""
        return self._prepare(statement, FORWARD, forget)

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
        if not resets_statements(message[5:]):
            self._expect(_QUERY)
            return None
        # DISCARD ALL / DEALLOCATE ALL empties the server and the client's names, as
        # PgBouncer 1.22 does.
        statements = dict(self.statements)
        self.statements.clear()
        self._send(Request(_QUERY, undo=partial(self._restore_all, statements),
                           effect=(CLEAR, None)))
        return None

    # -- decisions shared by the handlers ------------------------------------------------------

    def _ensure_prepared(self, statement: Statement) -> bytes:
        """What to send before a message using ``statement`` on the server: b"" or a Parse."""
        if self._on_server_for_sure(statement):
            return b""
        return self._prepare(statement, SKIP, None)

    def _on_server_for_sure(self, statement: Statement) -> bool:
        """Whether the server has ``statement``, or will unless this sync region fails.

        A Parse unanswered from an earlier region may yet be skipped (an error before it):
        requests after a Sync must not count on it.
        """
        server = self._server
        if not server.touch(statement):
            return False
        return server.confirmed(statement) or (
            self.tracked and self._queue.expects_in_this_region(statement))

    def _prepare(self, statement: Statement, mode: int,
                 forget: Optional[Callable[[], None]]) -> bytes:
        """Parse ``statement`` on the server: the client's own Parse, or injected (SKIP).

        A Close goes first: after a skipped eviction or an unanswered Parse the server may
        have the statement already, and closing a name it lacks is no error.
        """
        self.stats.server_parse_count += 1
        self._send(Request(_CLOSE, SKIP, effect=(REMOVE, statement)))
        self._send(Request(_PARSE, mode, undo=forget, effect=(ADD, statement)))
        return close_statement(statement.name) + statement.parse + self._evict()

    def _evict(self) -> bytes:
        """Close what the server holds beyond the cap (the newest statement is never evicted)."""
        closes = []
        for victim in self._server.evictions(self.capacity):
            self._send(Request(_CLOSE, SKIP, effect=(REMOVE, victim)))
            closes.append(close_statement(victim.name))
        return b"".join(closes)

    def _send(self, request: Request) -> None:
        """Queue a request that changes the server's statements (expected at once)."""
        self._add(request)
        self._server.expect(request.effect)

    def _fake(self, reply: bytes, undo: Optional[Callable[[], None]]) -> None:
        """Answer the client ourselves: now if nothing is on its way to it, else in turn."""
        if not self.tracked:
            if not self._requests.sync_points and not self._requests.unsynced:
                self._to_client.append(reply)
                return
            self._start_queue()  # (which may find the last awaited reply half received)
        if self._queue:
            self._add(Request(_PARSE, FAKE, reply, undo))
        elif not self._queue.send_after_current(reply):
            self._to_client.append(reply)

    def _add(self, request: Request) -> None:
        if not self.tracked:
            self._start_queue()
        self._queue.append(request)

    def _start_queue(self) -> None:
        """Track from here: what was sent before is answered by so many ReadyForQuery."""
        requests = self._requests
        self._queue = RequestQueue(requests.sync_points, requests.unsynced,
                                   self.position_of(self._connection), self._server)
        requests.sync_points = 0
        requests.unsynced.clear()
        requests.report_all = self.tracked = True

    def _settle(self) -> None:
        """Stop tracking once nothing in the queue needs the replies walked."""
        sync_points = self._queue.settled()
        if sync_points is not None:
            self._stop_tracking(sync_points)

    def _stop_tracking(self, sync_points: int) -> None:
        """Back to counting: ``sync_points`` ReadyForQuery messages are still to come."""
        requests = self._requests
        requests.sync_points = sync_points
        requests.unsynced.clear()
        requests.report_all = self.tracked = False
        self._queue = None

    # -- the client's names, when a request fails ----------------------------------------------

    def _forget(self, name: bytes, statement: Statement) -> None:
        if self.statements.get(name) is statement:
            del self.statements[name]

    def _restore(self, name: bytes, statement: Statement) -> None:
        self.statements.setdefault(name, statement)

    def _restore_all(self, statements: Dict[bytes, Statement]) -> None:
        for name, statement in statements.items():
            self.statements.setdefault(name, statement)

    # -- server -> client ----------------------------------------------------------------------

    def answered(self, replies: int) -> None:
        """ReadyForQuery messages relayed untracked."""
        requests = self._requests
        requests.sync_points = max(0, requests.sync_points - replies)

    def from_server(self, chunk: bytes) -> bytes:
        """Filter a server chunk while tracked; return the bytes for the client."""
        queue = self._queue
        out = queue.feed(chunk)
        if queue.lost_syncs:
            self.lost_syncs += queue.lost_syncs
            queue.lost_syncs = 0
        self._settle()
        return out
