"""A client's named prepared statements in transaction and statement pooling.

A client's statements must follow it from server to server.  Its names map to statements
shared by all clients (:mod:`bouncer.proto.statements`), and the messages naming them are
rewritten, as PgBouncer 1.21+ does:

* Parse of a statement the server has is not sent: the client gets a made-up ParseComplete
  where the server's would have been;
* Bind or Describe of a statement the server lacks is preceded by an injected Parse (and,
  past ``max_prepared_statements``, a Close of the least recently used one) whose replies
  are swallowed;
* Close of a statement forgets the client's name only and is answered by bouncer.

Bind or Describe of a name the client never prepared (or dropped with DEALLOCATE ALL / DISCARD
ALL) and Parse of a name in use end the session, as in PgBouncer: PostgreSQL would answer
with an error, which cannot be placed in a pipeline that bouncer has already rewritten.

Sans-IO: whole messages in, the bytes to send out; what the server owes is recorded in the
linked server's :class:`~bouncer.proto.pipeline.Pipeline`.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List, Optional, Union

from bouncer.errors import ClientError
from bouncer.proto.codec import build_message
from bouncer.proto.constants import Frontend
from bouncer.proto.extended import (STATEMENT, close_statement, describe_statement,
                                    parse_bind_names, parse_parse, parse_target)
from bouncer.proto.pipeline import Pipeline
from bouncer.proto.statements import ADD, REGISTRY, REMOVE, Statement, StatementRegistry

_PARSE, _BIND = Frontend.PARSE, Frontend.BIND
_DESCRIBE, _CLOSE = Frontend.DESCRIBE, Frontend.CLOSE

Bytes = Union[bytes, bytearray, memoryview]


def names_statement(kind: int, data: Bytes, body: int, end: int) -> Optional[bool]:
    """Whether the Parse/Bind/Describe/Close whose body starts at ``data[body]`` names a
    prepared statement, looking no further than ``end``; None when those bytes cannot tell."""
    if body >= end:
        return None
    if kind == _PARSE:
        return data[body] != 0
    if kind == _BIND:  # portal name, then statement name
        for index in range(body, end - 1):
            if data[index] == 0:
                return data[index + 1] != 0
        return None
    if data[body] != STATEMENT:  # Describe or Close of a portal
        return False
    return None if body + 1 >= end else data[body + 1] != 0


def _display(name: bytes) -> str:
    return name.decode("utf-8", "replace")


class PreparedStatements:
    """One client's statement names, and the rewriting of the messages that use them.

    :param capacity: ``max_prepared_statements``, the cap per server connection, read at
        each use so that a SET or RELOAD reaches sessions under way (0 turns tracking off:
        names are then passed on as they are).
    :param stats: counters with ``client_parse_count``, ``server_parse_count`` and
        ``bind_count`` attributes (PgBouncer's ps_* counters).
    """

    def __init__(self, capacity: Callable[[], int], stats: Any,
                 registry: StatementRegistry = REGISTRY) -> None:
        self.capacity = capacity
        self.stats = stats
        self.registry = registry
        #: The client's names.
        self.names: Dict[bytes, Statement] = {}
        #: Replies bouncer owes the client now (a made-up reply with nothing owed before it).
        self.replies: List[bytes] = []

    def rewrite(self, message: bytes, pipeline: Pipeline) -> bytes:
        """What to send the server for a whole message that names a statement.

        :raises ClientError: a name in use or unknown (the session ends).
        :raises ProtocolError: a malformed message.
        """
        kind = message[0]
        if kind == _PARSE:
            return self._parse(message, pipeline)
        if kind == _BIND:
            return self._bind(message, pipeline)
        if kind == _DESCRIBE:
            return self._describe(message, pipeline)
        return self._close(message, pipeline)

    # -- the four messages -------------------------------------------------------------------

    def _parse(self, message: bytes, pipeline: Pipeline) -> bytes:
        name, definition = parse_parse(message[5:])
        if name in self.names:
            raise ClientError("prepared statement name is already in use",
                              detail=f"prepared statement '{_display(name)}' was already "
                                     "prepared")
        self.stats.client_parse_count += 1
        statement = self.registry.get(definition)
        self.names[name] = statement
        forget = partial(self._forget, name, statement)
        if self._on_server_for_sure(statement, pipeline):
            self._reply(pipeline.fake(_PARSE, forget))
            return b""
        return self._prepare(statement, pipeline, forget)

    def _bind(self, message: bytes, pipeline: Pipeline) -> bytes:
        payload = message[5:]
        portal, name, rest = parse_bind_names(payload)
        statement = self._known(name)
        self.stats.bind_count += 1
        prefix = self._ensure_prepared(statement, pipeline)
        pipeline.sent(_BIND)
        return prefix + build_message(_BIND, b"".join((portal, b"\0", statement.name, b"\0",
                                                       payload[rest:])))

    def _describe(self, message: bytes, pipeline: Pipeline) -> bytes:
        statement = self._known(parse_target(message[5:], "Describe")[1])
        prefix = self._ensure_prepared(statement, pipeline)
        pipeline.sent(_DESCRIBE)
        return prefix + describe_statement(statement.name)

    def _close(self, message: bytes, pipeline: Pipeline) -> bytes:
        name = parse_target(message[5:], "Close")[1]  # a statement's: see names_statement()
        # The server keeps the statement for other clients; the client only loses its name.
        statement = self.names.pop(name, None)
        undo = partial(self._restore, name, statement) if statement is not None else None
        self._reply(pipeline.fake(_CLOSE, undo))
        return b""

    # -- decisions shared by them ------------------------------------------------------------

    def _known(self, name: bytes) -> Statement:
        statement = self.names.get(name)
        if statement is None:
            raise ClientError("prepared statement did not exist",
                              detail=f"prepared statement '{_display(name)}' not found")
        return statement

    def _ensure_prepared(self, statement: Statement, pipeline: Pipeline) -> bytes:
        """What to send before a message using ``statement``: nothing, or an injected Parse."""
        if self._on_server_for_sure(statement, pipeline):
            return b""
        return self._prepare(statement, pipeline, None)

    @staticmethod
    def _on_server_for_sure(statement: Statement, pipeline: Pipeline) -> bool:
        """Whether the server has ``statement``, or will unless this sync region fails.

        A Parse unanswered from an earlier region may yet be skipped (an error before it):
        requests after a Sync must not count on it.
        """
        server = pipeline.statements
        if not server.touch(statement):
            return False
        return server.confirmed(statement) or pipeline.expects_in_this_region((ADD, statement))

    def _prepare(self, statement: Statement, pipeline: Pipeline, forget: Any) -> bytes:
        """Parse ``statement`` on the server: the client's own Parse (``forget`` undoes its
        name if it fails), or an injected one (``forget`` is None).

        A Close goes first: after a skipped eviction or an unanswered Parse the server may
        have the statement already, and closing a name it lacks is no error.
        """
        self.stats.server_parse_count += 1
        pipeline.sent_special(_CLOSE, (REMOVE, statement), injected=True)
        pipeline.sent_special(_PARSE, (ADD, statement), forget, injected=forget is None)
        closes = []
        for victim in pipeline.statements.evictions(self.capacity()):
            pipeline.sent_special(_CLOSE, (REMOVE, victim), injected=True)
            closes.append(close_statement(victim.name))
        return close_statement(statement.name) + statement.parse + b"".join(closes)

    def _reply(self, reply: bytes) -> None:
        if reply:
            self.replies.append(reply)

    def _forget(self, name: bytes, statement: Statement) -> None:
        if self.names.get(name) is statement:
            del self.names[name]

    def _restore(self, name: bytes, statement: Statement) -> None:
        self.names.setdefault(name, statement)
