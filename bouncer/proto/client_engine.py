"""The client side of the protocol engine: what one client sends, from its first startup
packet to Terminate, in one buffer.

Sans-IO, in the manner of h11's ``Connection``: bytes in, decisions out.  The session feeds it
what it reads; during login it hands out whole startup packets and typed messages (password,
SASL); after login (:meth:`ClientEngine.start_relay`) :meth:`ClientEngine.receive` walks the
5-byte headers once and says what to forward to the server.  Bytes read past one phase (a
query sent with the password) stay in the buffer for the next: nothing creates a fresh reader
mid-connection.

The walk refuses what is not a frontend message (PgBouncer's ``unknown pkt``) before any
server sees it, records in the linked server's :class:`~bouncer.proto.pipeline.Pipeline` what
the server will owe, and hands the messages that name prepared statements to
:class:`~bouncer.proto.prepared.PreparedStatements`.  A chunk with nothing to rewrite comes
back as the same object, to be sent in one ``send``.
"""
from __future__ import annotations

import struct
from enum import IntEnum
from typing import List, Optional, Tuple, Union, cast

from bouncer.errors import ClientError, ProtocolError
from bouncer.proto import sqlstate
from bouncer.proto.constants import Frontend
from bouncer.proto.framing import StartupPacket, parse_startup_packet, startup_packet_length
from bouncer.proto.pipeline import Pipeline
from bouncer.proto.prepared import PreparedStatements, names_statement

Bytes = Union[bytes, bytearray, memoryview]

_HEADER_LEN = 5
_unpack_length = struct.Struct("!I").unpack_from

_QUERY, _SYNC, _FUNCTION_CALL = Frontend.QUERY, Frontend.SYNC, Frontend.FUNCTION_CALL
_PARSE, _BIND, _DESCRIBE = Frontend.PARSE, Frontend.BIND, Frontend.DESCRIBE
_EXECUTE, _CLOSE, _FLUSH = Frontend.EXECUTE, Frontend.CLOSE, Frontend.FLUSH
_COPY_DATA, _COPY_DONE, _COPY_FAIL = Frontend.COPY_DATA, Frontend.COPY_DONE, Frontend.COPY_FAIL
_TERMINATE = Frontend.TERMINATE

#: Messages a logged-in client may send (everything else is ``unknown pkt``).
_VALID = bytearray(256)
for _kind in (_QUERY, _SYNC, _FUNCTION_CALL, _PARSE, _BIND, _DESCRIBE, _EXECUTE, _CLOSE,
              _FLUSH, _COPY_DATA, _COPY_DONE, _COPY_FAIL, _TERMINATE):
    _VALID[_kind] = 1
#: Messages that may name a prepared statement.
_NAMING = frozenset((_PARSE, _BIND, _DESCRIBE, _CLOSE))

#: :meth:`ClientEngine.receive` stopped before a message that needs a server: link one and
#: call :meth:`ClientEngine.receive_pending`.
NEED_SERVER = object()


class Phase(IntEnum):
    """Where a client's conversation stands."""

    STARTUP = 0
    """Untyped startup packets: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage."""
    AUTHENTICATION = 1
    """Typed password / SASL messages, read whole by the login code."""
    READY = 2
    """Logged in: traffic is relayed (or, for the admin console, read whole)."""


def unknown_message(kind: int) -> ClientError:
    """PgBouncer's refusal of a message type no client may send."""
    return ClientError("unknown pkt", sqlstate.PROTOCOL_VIOLATION,
                       log_reason=f"unknown pkt from client: {kind}/{kind:#x}")


class ClientEngine:
    """Everything one client sent that is not consumed yet, and what it means.

    :param max_length: ``max_packet_size``: the longest message accepted (its length field).
    :param prepared: the client's prepared-statement names, when bouncer tracks them.
    :param disable_pqexec: refuse the simple query protocol (PgBouncer's disable_pqexec).
    """

    __slots__ = ("max_length", "prepared", "disable_pqexec", "phase", "pipeline",
                 "terminated", "_carry", "_need", "_skip", "_pending")

    def __init__(self, max_length: int = 2**31 - 1,
                 prepared: Optional[PreparedStatements] = None,
                 disable_pqexec: bool = False) -> None:
        self.max_length = max_length
        self.prepared = prepared
        self.disable_pqexec = disable_pqexec
        self.phase = Phase.STARTUP
        #: What the linked server owes (None while no server is linked).
        self.pipeline: Optional[Pipeline] = None
        #: The client sent Terminate: forward nothing more, end the session.
        self.terminated = False
        #: Bytes received and not yet consumed: a cut header, a message that must be seen
        #: whole, or, during login, whatever came after the last packet handed out.
        self._carry = bytearray()
        #: Size ``_carry`` must reach before it is worth walking again.
        self._need = 0
        #: Body bytes of a message being forwarded that are still to come.
        self._skip = 0
        #: The rest of a chunk that stopped at NEED_SERVER.
        self._pending: bytes = b""

    # -- login -----------------------------------------------------------------------------

    def feed(self, data: Bytes) -> None:
        """Bytes read from the client while logging in (or for the admin console)."""
        self._carry += data

    def next_startup_packet(self) -> Optional[StartupPacket]:
        """The next whole startup packet, or None until more bytes arrive.

        :raises ProtocolError: a bad length or a malformed packet.
        """
        carry = self._carry
        if len(carry) < 4:
            return None
        length = startup_packet_length(bytes(carry[:4]))
        if len(carry) < length:
            return None
        packet = bytes(carry[:length])
        del carry[:length]
        return parse_startup_packet(packet)

    def next_message(self, max_length: Optional[int] = None) -> Optional[Tuple[int, bytes]]:
        """The next whole typed message ``(type, payload)``, or None until more bytes arrive.

        :raises ProtocolError: a length field below 4 or above ``max_length``.
        """
        carry = self._carry
        if len(carry) < _HEADER_LEN:
            return None
        kind = carry[0]
        length = _unpack_length(carry, 1)[0]
        if not 4 <= length <= (max_length or self.max_length):
            raise _bad_length(kind, length)
        end = 1 + length
        if len(carry) < end:
            return None
        payload = bytes(carry[_HEADER_LEN:end])
        del carry[:end]
        return kind, payload

    def start_authentication(self) -> None:
        self.phase = Phase.AUTHENTICATION

    def start_relay(self) -> None:
        """Login is over: what is buffered is the start of the relayed traffic."""
        self.phase = Phase.READY
        self._need = len(self._carry)

    @property
    def buffered(self) -> bool:
        """Whether bytes received earlier wait to be walked (call ``receive(b"")``)."""
        return len(self._carry) > 0 and len(self._carry) >= self._need

    # -- relaying --------------------------------------------------------------------------

    @property
    def at_boundary(self) -> bool:
        """Between two messages: nothing of the client's is half forwarded or held back."""
        return not self._skip and not self._carry and not self._pending

    def receive(self, data: Bytes) -> object:
        """Walk what the client sent; return the bytes to send the server (``data`` itself
        when nothing changed; maybe empty), or :data:`NEED_SERVER`.

        Replies bouncer gives the client itself wait in ``prepared.replies``.

        :raises ClientError: a message no client may send, or a prepared-statement misuse.
        :raises ProtocolError: a bad length or a malformed message.
        """
        if self._carry:
            if len(self._carry) + len(data) < self._need:
                self._carry += data
                return b""
            data = self._carry + data
            self._carry = bytearray()
            self._need = 0
        start = 0
        if self._skip:
            if self._skip >= len(data):
                self._skip -= len(data)
                return data
            start, self._skip = self._skip, 0
        elif self.pipeline is None and start < len(data):
            if data[0] == _TERMINATE:
                self.terminated = True
                return b""
            self._pending = bytes(data)
            return NEED_SERVER
        return self._walk(data, start)

    def receive_pending(self) -> object:
        """Go on with the chunk that stopped at NEED_SERVER, now that a server is linked."""
        data, self._pending = self._pending, b""
        return self._walk(data, 0)

    def _walk(self, data: Bytes, pos: int) -> Bytes:
        """Walk the headers from ``pos``; return what to send the server."""
        size = len(data)
        # A server is linked: without one, receive() answers NEED_SERVER instead.
        pipeline = cast(Pipeline, self.pipeline)
        prepared = self.prepared
        max_length = self.max_length
        out: Optional[List[Bytes]] = None
        raw_from = 0
        while pos < size:
            kind = data[pos]
            if not _VALID[kind]:
                raise unknown_message(kind)
            if size - pos < _HEADER_LEN:
                self._hold(data, pos, _HEADER_LEN)
                break
            length = _unpack_length(data, pos + 1)[0]
            if not 4 <= length <= max_length:
                raise _bad_length(kind, length)
            end = pos + 1 + length
            if kind == _COPY_DATA:
                if not pipeline.copy_rows_sent:
                    pipeline.copy_data_sent()
            elif kind == _FLUSH:
                pass
            elif kind in _NAMING and prepared is not None and not pipeline.skipping:
                named = names_statement(kind, data, pos + _HEADER_LEN, end if end < size else size)
                if named and not prepared.capacity():
                    named = False  # tracking turned off: names go to the server as they are
                if named is None and end <= size:
                    raise ProtocolError(f"malformed message of type {chr(kind)!r}")
                if named is None or (named and end > size):
                    self._hold(data, pos, end - pos)  # to be seen whole
                    break
                if named:
                    if out is None:
                        out = []
                    out.append(data[raw_from:pos])
                    out.append(prepared.rewrite(bytes(data[pos:end]), pipeline))
                    raw_from = end
                else:
                    pipeline.sent(kind)  # an unnamed one
            elif kind == _COPY_DONE or kind == _COPY_FAIL:
                pipeline.copy_end_sent(kind)
            elif kind == _TERMINATE:
                self.terminated = True
                break
            else:  # Query, Sync, FunctionCall, and unnamed extended-protocol messages
                if kind == _QUERY and self.disable_pqexec:
                    raise ClientError("PQexec disallowed",
                                      log_reason='client used "Query" packet type')
                pipeline.sent(kind)
            pos = end
        if pos > size:
            self._skip = pos - size
            pos = size
        if out is None:
            return data if raw_from == 0 and pos == size else data[raw_from:pos]
        out.append(data[raw_from:pos])
        return b"".join(out)

    def _hold(self, data: Bytes, pos: int, need: int) -> None:
        """Keep ``data[pos:]`` until ``need`` bytes of it are there."""
        self._carry += data[pos:]
        self._need = need


def _bad_length(kind: int, length: int) -> ProtocolError:
    if length >= 4:
        return ProtocolError(f"message of type {chr(kind)!r} is {length} bytes long, more "
                             "than max_packet_size allows")
    return ProtocolError(f"invalid length {length} of message type {chr(kind)!r}")
