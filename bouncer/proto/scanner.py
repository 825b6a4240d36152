"""Header-only scanning of relayed chunks: the relay's hot path.

The relay forwards every chunk unchanged; these scanners only walk the 5-byte message
headers to learn what the pooler must know: how many ReadyForQuery messages to expect
(client side), when one arrives and with which transaction status (server side), and
which ParameterStatus values the server reported.

How it stays cheap: one offset loop per chunk with ``struct.unpack_from``, no per-message
objects, and bodies skipped by arithmetic: a body that runs past the chunk end becomes a
byte count to skip at the start of the next chunk.  Only two state fragments survive
between chunks: a header split by the chunk boundary (< 5 bytes) and, on the server side,
the tiny bodies of ReadyForQuery and ParameterStatus, the only bodies ever copied.
"""
from __future__ import annotations

import struct
from typing import List, NamedTuple, Optional, Tuple

from bouncer.errors import ProtocolError
from bouncer.proto.backend import parse_parameter_status
from bouncer.proto.constants import TXN_IDLE, Backend, Frontend

_HEADER_LEN = 5
_unpack_length = struct.Struct("!I").unpack_from

_READY_FOR_QUERY = Backend.READY_FOR_QUERY
_PARAMETER_STATUS = Backend.PARAMETER_STATUS
#: ReadyForQuery's length field: itself plus the one status byte.
_READY_FOR_QUERY_LEN = 5
#: A server sending a bigger ParameterStatus is broken or hostile: we would buffer it.
_MAX_PARAMETER_STATUS_LEN = 1 << 20

_QUERY = Frontend.QUERY
_SYNC = Frontend.SYNC
_FUNCTION_CALL = Frontend.FUNCTION_CALL
_PARSE = Frontend.PARSE
_BIND = Frontend.BIND
_TERMINATE = Frontend.TERMINATE


def bad_length(msg_type: int, length: int) -> ProtocolError:
    if length >= 4:
        return ProtocolError(f"message of type {chr(msg_type)!r} is {length} bytes long, more "
                             "than max_packet_size allows")
    return ProtocolError(f"invalid length {length} of message type {chr(msg_type)!r}")


class ReplyPosition(NamedTuple):
    """Where a server stream stands between two chunks, for a :class:`ReplyFilter` that
    takes over from plain header scanning.  At most one field is set."""

    #: Bytes still to come of a message whose header has passed.
    skip: int = 0
    #: Type of that message when it matters to the caller (ReadyForQuery), else 0.
    msg_type: int = 0
    #: The first 1-4 bytes of a header, already forwarded.
    head: bytes = b""


class HeaderScanner:
    """State shared by every stream walker (both scanners here, and the prepared-statement
    rewriter in :mod:`bouncer.proto.extended`): bytes left to skip and a split header."""

    __slots__ = ("_skip", "_head", "max_length")

    def __init__(self, max_length: int = 2**31 - 1) -> None:
        #: Longest message let through (``max_packet_size``), header length field included.
        self.max_length = max_length
        #: Body bytes of the current message still to come in later chunks.
        self._skip = 0
        #: First 1-4 bytes of a header cut by the previous chunk's end.
        self._head = b""

    def _take_skip(self) -> int:
        """Where scanning resumes: past the pending skip (it may lie beyond this chunk,
        in which case ``feed`` turns the excess back into a skip)."""
        pos, self._skip = self._skip, 0
        return pos

    def _complete_header(self, chunk: bytes, size: int) -> Optional[Tuple[int, int, int]]:
        """Join a split header with the start of ``chunk``.

        :return: ``(type, length, body start in chunk)``, or None when ``chunk`` is still
            too short to finish the header (it has been absorbed).
        """
        missing = _HEADER_LEN - len(self._head)
        if size < missing:
            self._head += chunk
            return None
        header = self._head + chunk[:missing]
        self._head = b""
        length = _unpack_length(header, 1)[0]
        if not 4 <= length <= self.max_length:
            raise bad_length(header[0], length)
        return header[0], length, missing


class ServerScanner(HeaderScanner):
    """Scan server-to-client chunks for ReadyForQuery and ParameterStatus."""

    __slots__ = ("last_status", "param_updates", "_body_type", "_body", "_body_missing")

    def __init__(self, max_length: int = 2**31 - 1) -> None:
        super().__init__(max_length)
        #: Status byte of the last ReadyForQuery seen.  Starts at ``TXN_IDLE``: scanning
        #: begins after login, which always ends with ReadyForQuery 'I'.
        self.last_status = TXN_IDLE
        #: ``(name, value)`` of each completed ParameterStatus; the caller drains it.
        self.param_updates: List[Tuple[str, str]] = []
        self._body_type = 0
        #: Body collected so far of a ReadyForQuery/ParameterStatus cut by a chunk end.
        self._body: Optional[bytearray] = None
        self._body_missing = 0

    def feed(self, chunk: bytes) -> int:
        """Scan one chunk; return how many ReadyForQuery messages ended in it."""
        size = len(chunk)
        pos, ready = self._resume(chunk, size)
        unpack_length = _unpack_length
        max_length = self.max_length
        while pos < size:
            if size - pos < _HEADER_LEN:
                self._head = chunk[pos:]
                return ready
            msg_type = chunk[pos]
            length = unpack_length(chunk, pos + 1)[0]
            if not 4 <= length <= max_length:
                raise bad_length(msg_type, length)
            if msg_type == _READY_FOR_QUERY or msg_type == _PARAMETER_STATUS:
                pos, found = self._small_message(msg_type, length, chunk, pos + _HEADER_LEN)
                ready += found
            else:
                pos += 1 + length
        self._skip = pos - size
        return ready

    def _resume(self, chunk: bytes, size: int) -> Tuple[int, int]:
        """Finish what the previous chunk left open.

        :return: ``(scan position, ReadyForQuery messages completed on the way)``.
        """
        if self._skip:
            return self._take_skip(), 0
        if self._body is not None:
            return self._continue_body(self._body, chunk, size)
        if not self._head:
            return 0, 0
        header = self._complete_header(chunk, size)
        if header is None:
            return size, 0
        msg_type, length, start = header
        if msg_type == _READY_FOR_QUERY or msg_type == _PARAMETER_STATUS:
            return self._small_message(msg_type, length, chunk, start)
        return start + length - 4, 0

    def _small_message(self, msg_type: int, length: int, chunk: bytes,
                       start: int) -> Tuple[int, int]:
        """Handle a ReadyForQuery/ParameterStatus whose body begins at ``start``.

        :return: ``(position after it, 1 if a ReadyForQuery completed else 0)``; a body
            cut by the chunk end is buffered and the position is the chunk end.
        """
        if msg_type == _READY_FOR_QUERY:
            if length != _READY_FOR_QUERY_LEN:
                raise bad_length(msg_type, length)
        elif length > _MAX_PARAMETER_STATUS_LEN:
            raise bad_length(msg_type, length)
        end = start + length - 4
        size = len(chunk)
        if end > size:
            self._body_type = msg_type
            self._body = bytearray(chunk[start:])
            self._body_missing = end - size
            return size, 0
        return end, self._handle_body(msg_type, chunk[start:end])

    def _continue_body(self, body: bytearray, chunk: bytes, size: int) -> Tuple[int, int]:
        """Add the start of ``chunk`` to a buffered small body; handle it once complete."""
        taken = min(self._body_missing, size)
        self._body_missing -= taken
        body += chunk[:taken]
        if self._body_missing:
            return size, 0
        self._body = None
        return taken, self._handle_body(self._body_type, bytes(body))

    def _handle_body(self, msg_type: int, body: bytes) -> int:
        """Act on a complete ReadyForQuery/ParameterStatus body; return 1 for ReadyForQuery."""
        if msg_type == _READY_FOR_QUERY:
            self.last_status = body[0]
            return 1
        self.param_updates.append(parse_parameter_status(body))
        return 0

    def reply_position(self) -> ReplyPosition:
        """Where the stream stands between two chunks: inside a body still to skip, inside a
        small body being collected, or at (part of) a header.  The prepared-statement tracker
        starts walking replies from here."""
        if self._skip:
            return ReplyPosition(skip=self._skip)
        if self._body is not None:
            return ReplyPosition(skip=self._body_missing, msg_type=self._body_type)
        return ReplyPosition(head=self._head)


class ClientScanner(HeaderScanner):
    """Scan client-to-server chunks for sync points, Parse/Bind counts and Terminate."""

    __slots__ = ("terminate_at", "parse_count", "bind_count", "last_type")

    def __init__(self, max_length: int = 2**31 - 1) -> None:
        super().__init__(max_length)
        #: Type of the last message that started; a sync point means nothing is outstanding.
        self.last_type = _SYNC
        #: Offset of a Terminate message in the chunk last fed; forward only what precedes it.
        self.terminate_at: Optional[int] = None
        self.parse_count = 0
        self.bind_count = 0

    def feed(self, chunk: bytes) -> int:
        """Scan one chunk; return how many ReadyForQuery the server will answer for it.

        Query, Sync and FunctionCall each end in exactly one ReadyForQuery.  A message is
        counted as soon as its type byte is seen, even if its header is cut by the chunk
        end: the caller forwards the chunk anyway, and a header never changes its type.
        """
        size = len(chunk)
        pos = self._resume(chunk, size)
        syncs = 0
        unpack_length = _unpack_length
        max_length = self.max_length
        while pos < size:
            msg_type = chunk[pos]
            if msg_type == _TERMINATE:  # not forwarded: it leaves last_type as it was
                self.terminate_at = pos
                return syncs
            self.last_type = msg_type
            if msg_type == _QUERY or msg_type == _SYNC or msg_type == _FUNCTION_CALL:
                syncs += 1
            elif msg_type == _PARSE:
                self.parse_count += 1
            elif msg_type == _BIND:
                self.bind_count += 1
            if size - pos < _HEADER_LEN:
                self._head = chunk[pos:]
                return syncs
            length = unpack_length(chunk, pos + 1)[0]
            if not 4 <= length <= max_length:
                raise bad_length(msg_type, length)
            pos += 1 + length
        self._skip = pos - size
        return syncs

    @property
    def at_sync_point(self) -> bool:
        """True at a message boundary with no message sent since the last sync point: a
        server this client leaves now holds nothing of it and can serve someone else."""
        return (not self._skip and not self._head
                and self.last_type in (_QUERY, _SYNC, _FUNCTION_CALL))

    def _resume(self, chunk: bytes, size: int) -> int:
        """Finish a skip or split header left by the previous chunk; return the scan position."""
        if self._skip:
            return self._take_skip()
        if not self._head:
            return 0
        header = self._complete_header(chunk, size)
        if header is None:
            return size
        _, length, start = header
        return start + length - 4
