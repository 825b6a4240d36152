"""The extended-query messages that name prepared statements: Parse, Bind, Describe, Close.

Parsers take the payload without the 5-byte header and raise
:class:`~bouncer.errors.ProtocolError` on anything malformed; builders return whole messages.
Names stay ``bytes``: the pooler compares and copies them, it never needs them as text.

:class:`RequestRewriter` walks the client-to-server byte stream message by message and lets
a callback replace whole messages, while everything else stays the original bytes (a chunk
nothing was replaced in comes back as the same object).  :class:`ReplyFilter` walks the
server-to-client stream and lets a callback drop replies and add synthetic ones after them.
"""
from __future__ import annotations

import struct
from typing import Callable, List, Optional, Tuple

from bouncer.proto.codec import PayloadReader, build_message
from bouncer.proto.constants import Backend, Frontend
from bouncer.proto.scanner import HeaderScanner, ReplyPosition, bad_length

STATEMENT = ord("S")
PORTAL = ord("P")
PARSE_COMPLETE = build_message(Backend.PARSE_COMPLETE)
CLOSE_COMPLETE = build_message(Backend.CLOSE_COMPLETE)

_HEADER_LEN = 5
_unpack_length = struct.Struct("!I").unpack_from
_pack_header = struct.Struct("!BI").pack
_PARSE, _BIND, _DESCRIBE = Frontend.PARSE, Frontend.BIND, Frontend.DESCRIBE
_EXECUTE, _CLOSE, _SYNC = Frontend.EXECUTE, Frontend.CLOSE, Frontend.SYNC
_QUERY, _FUNCTION_CALL = Frontend.QUERY, Frontend.FUNCTION_CALL
#: Extended-protocol requests: the server answers each, or skips it after an error.
_EXTENDED = frozenset((_PARSE, _BIND, _DESCRIBE, _EXECUTE, _CLOSE))
#: Messages that may name a prepared statement.
_NAMING = frozenset((_PARSE, _BIND, _DESCRIBE, _CLOSE))
#: Queries up to this length (length field) are shown whole to the callback: long enough
#: for ``DISCARD ALL`` with some whitespace, short enough to cost nothing on big queries.
SHORT_QUERY_LEN = 40


# --- parsers -------------------------------------------------------------------------

def parse_parse(payload: bytes) -> Tuple[bytes, bytes]:
    """Return ``(statement name, definition)``; the definition is the rest of the payload
    (query text and parameter types), kept as raw bytes to be forwarded unchanged."""
    reader = PayloadReader(payload, "Parse")
    name = reader.cstring_bytes()
    start = len(name) + 1
    reader.cstring_bytes()
    count = reader.int16()
    if count < 0:
        raise reader.error(f"negative parameter type count {count}")
    reader.raw(4 * count)
    reader.expect_end()
    return name, bytes(payload[start:])


def parse_bind_names(payload: bytes) -> Tuple[bytes, bytes, int]:
    """Return ``(portal, statement, offset of what follows the statement name)``."""
    reader = PayloadReader(payload, "Bind")
    portal = reader.cstring_bytes()
    statement = reader.cstring_bytes()
    return portal, statement, len(portal) + len(statement) + 2


def parse_target(payload: bytes, what: str) -> Tuple[int, bytes]:
    """Describe or Close: ``(STATEMENT or PORTAL, name)``."""
    reader = PayloadReader(payload, what)
    kind = reader.byte()
    if kind not in (STATEMENT, PORTAL):
        raise reader.error(f"invalid target type {kind!r}")
    name = reader.cstring_bytes()
    reader.expect_end()
    return kind, name


# --- builders ------------------------------------------------------------------------

def parse_message(name: bytes, definition: bytes) -> bytes:
    """Parse of ``definition`` (as returned by :func:`parse_parse`) under ``name``."""
    return build_message(_PARSE, name + b"\0" + definition)


def renamed_bind(payload: bytes, statement: bytes) -> bytes:
    """The Bind of ``payload`` with its statement name replaced by ``statement``."""
    portal, _, rest = parse_bind_names(payload)
    return build_message(_BIND, portal + b"\0" + statement + b"\0" + payload[rest:])


def describe_statement(name: bytes) -> bytes:
    return build_message(_DESCRIBE, b"S" + name + b"\0")


def close_statement(name: bytes) -> bytes:
    return build_message(_CLOSE, b"S" + name + b"\0")


# --- client stream -------------------------------------------------------------------

def _bind_names_statement(data: bytes, body: int, end: int) -> bool:
    """A Bind with a named portal: whether a statement name follows the portal's (True
    too when the bytes available end before that can be told)."""
    portal_end = data.find(b"\0", body, end)
    return portal_end < 0 or portal_end + 1 >= end or data[portal_end + 1] != 0


#: Called with ``(type, whole message or None)`` for the client messages a
#: :class:`RequestRewriter` does not account for itself; returns the bytes to send instead,
#: or None to send the message unchanged.
OnRequest = Callable[[int, Optional[bytes]], Optional[bytes]]


class RequestRewriter(HeaderScanner):
    """Walk client-to-server chunks, replacing the messages a callback asks to replace.

    The callback sees whole the messages that name a prepared statement and short Query
    messages (when a chunk cuts one, it is held back, bounded by ``max_length``); the rest
    is forwarded as it arrives, bodies skipped by arithmetic.

    For those it forwards unchanged, the rewriter itself counts what the server will owe:
    ``sync_points`` (Sync, Query, FunctionCall: one ReadyForQuery each) and ``unsynced``
    (the extended-protocol requests after the last Sync).  A Query or FunctionCall after
    unsynced requests goes to the callback instead (the server skips it if one of them
    fails), and while ``report_all`` is set every message does: the caller keeps the
    account.  This keeps the common message at one comparison chain, no call.
    """

    __slots__ = ("report_all", "sync_points", "unsynced", "_held", "_held_missing")

    def __init__(self, max_length: int = 2**31 - 1) -> None:
        super().__init__(max_length)
        self.report_all = False
        self.sync_points = 0
        self.unsynced: List[int] = []
        self._held: Optional[bytearray] = None  # a message the callback must see whole
        self._held_missing = 0

    @property
    def at_boundary(self) -> bool:
        """True between messages: nothing is held back or half forwarded."""
        return not self._skip and not self._head and self._held is None

    def count(self, msg_type: int) -> bool:
        """Account for a request forwarded unchanged; False when the caller must instead."""
        if msg_type == _SYNC:
            self.sync_points += 1
            self.unsynced.clear()
        elif msg_type in _EXTENDED:
            self.unsynced.append(msg_type)
        elif msg_type == _QUERY or msg_type == _FUNCTION_CALL:
            if self.unsynced:
                return False
            self.sync_points += 1
        return True

    def feed(self, chunk: bytes, on_request: OnRequest) -> bytes:
        """Return what to send for ``chunk`` (``chunk`` itself when nothing changed)."""
        out: List[bytes] = []
        size = len(chunk)
        if self._skip or self._head or self._held is not None:
            pos, raw_from = self._resume(chunk, size, out, on_request)
        else:
            pos = raw_from = 0
        max_length = self.max_length
        unsynced = self.unsynced
        while pos < size:
            if size - pos < _HEADER_LEN:
                self._head = chunk[pos:]
                break
            msg_type = chunk[pos]
            length = _unpack_length(chunk, pos + 1)[0]
            if not 4 <= length <= max_length:
                raise bad_length(msg_type, length)
            end = pos + 1 + length
            if msg_type in _NAMING:  # whole when it may name a statement (not unnamed)
                body = pos + _HEADER_LEN
                available = end if end < size else size
                if body + 1 >= available:
                    whole = True  # too little of it here to tell
                elif msg_type == _PARSE:
                    whole = chunk[body] != 0
                elif msg_type == _BIND:  # portal name, then statement name
                    whole = (chunk[body + 1] != 0 if chunk[body] == 0
                             else _bind_names_statement(chunk, body, available))
                else:  # Describe, Close: target type, then name
                    whole = chunk[body] == STATEMENT and chunk[body + 1] != 0
            else:
                whole = msg_type == _QUERY and length <= SHORT_QUERY_LEN
            if not whole:
                # Forwarded as it is, possibly across chunks.  count() inlined for the
                # two commonest cases: this loop runs for every message of the client.
                if self.report_all:
                    on_request(msg_type, None)
                elif msg_type == _SYNC:
                    self.sync_points += 1
                    unsynced.clear()
                elif msg_type in _EXTENDED:
                    unsynced.append(msg_type)
                elif not self.count(msg_type):
                    on_request(msg_type, None)
                pos = end
                continue
            if end > size:
                self._held = bytearray(chunk[pos:])
                self._held_missing = end - size
                break
            replacement = on_request(msg_type, chunk[pos:end])
            if replacement is not None:
                out.append(chunk[raw_from:pos])
                out.append(replacement)
                raw_from = end
            pos = end
        if pos > size:
            self._skip = pos - size
            pos = size
        if not out and raw_from == 0 and pos == size:
            return chunk
        out.append(chunk[raw_from:pos])
        return b"".join(out)

    def _resume(self, chunk: bytes, size: int, out: List[bytes],
                on_request: OnRequest) -> Tuple[int, int]:
        """Finish what the previous chunk left open.

        :return: ``(scan position, start of the bytes to forward unchanged)``; output already
            decided for the bytes before that start is appended to ``out``.
        """
        pos = raw_from = 0
        if self._head:
            pos = raw_from = self._join_head(chunk, size, out, on_request)
        if self._held is not None:
            pos = raw_from = self._continue_held(self._held, chunk, pos, size, out, on_request)
        elif self._skip:
            taken = min(self._skip, size - pos)
            self._skip -= taken
            pos += taken
        return pos, raw_from

    def _join_head(self, chunk: bytes, size: int, out: List[bytes],
                   on_request: OnRequest) -> int:
        """Complete a cut header with the start of ``chunk``; return the bytes it took."""
        joined = self._complete_header(chunk, size)
        if joined is None:
            return size
        msg_type, length, missing = joined
        header = _pack_header(msg_type, length)
        if (msg_type == _QUERY and length <= SHORT_QUERY_LEN) or msg_type in _NAMING:
            # the header alone cannot tell whether it names a statement
            self._held = bytearray(header)
            self._held_missing = length - 4
        else:
            if self.report_all or not self.count(msg_type):
                on_request(msg_type, None)
            out.append(header)
            self._skip = length - 4
        return missing

    def _continue_held(self, held: bytearray, chunk: bytes, pos: int, size: int,
                       out: List[bytes], on_request: OnRequest) -> int:
        """Add the start of ``chunk[pos:]`` to the held message; hand it over once whole."""
        taken = min(self._held_missing, size - pos)
        held += chunk[pos:pos + taken]
        self._held_missing -= taken
        if self._held_missing:
            return size
        self._held = None
        message = bytes(held)
        replacement = on_request(message[0], message)
        out.append(message if replacement is None else replacement)
        return pos + taken


# --- server stream -------------------------------------------------------------------

#: Called at the start of every server message with its type; returns ``(keep, after)``:
#: whether to forward the message, and bytes to send to the client once it has passed.
OnReply = Callable[[int], Tuple[bool, bytes]]


class ReplyFilter:
    """Walk server-to-client chunks, dropping replies and adding synthetic ones.

    Messages are never held back: a forwarded message goes out as its bytes arrive.  Only a
    header cut by the chunk end waits (up to 4 bytes) until its type is known.
    """

    __slots__ = ("_skip", "_keep", "_after", "_head", "_head_sent")

    def __init__(self) -> None:
        self._skip = 0  # bytes of the current message still to come
        self._keep = True  # whether the current message is forwarded
        self._after = b""  # synthetic replies due once the current message has passed
        self._head = b""
        self._head_sent = 0  # bytes of ``_head`` forwarded before this filter took over

    @property
    def at_boundary(self) -> bool:
        """True between messages (nothing half forwarded, nothing due after one)."""
        return not self._skip and not self._head

    def send_after_current(self, data: bytes) -> bool:
        """Have ``data`` sent once the message the client is receiving has passed.

        :return: False when the client is between messages (send ``data`` now).
        """
        if not self._skip and not self._head_sent:
            return False
        self._after += data
        return True

    def adopt(self, position: ReplyPosition, on_reply: OnReply) -> None:
        """Start in the middle of the stream; what has passed was forwarded unchanged."""
        if position.head:
            self._head = position.head
            self._head_sent = len(position.head)
        elif position.skip:
            if position.msg_type:
                on_reply(position.msg_type)  # for its bookkeeping: the message is on its way
            self._skip = position.skip

    def feed(self, chunk: bytes, on_reply: OnReply) -> bytes:
        """Return what to send to the client for ``chunk``."""
        out: List[bytes] = []
        size = len(chunk)
        pos = 0
        if self._head:
            pos = self._join_head(chunk, size, out, on_reply)
        elif self._skip:
            pos = self._pass_current(chunk, 0, size, out)
        while pos < size:
            if size - pos < _HEADER_LEN:
                self._head = chunk[pos:]
                break
            self._start(chunk[pos], _unpack_length(chunk, pos + 1)[0], on_reply)
            pos = self._pass_current(chunk, pos, size, out)
        return b"".join(out)

    def _start(self, msg_type: int, length: int, on_reply: OnReply) -> None:
        if length < 4:
            raise bad_length(msg_type, length)
        self._keep, after = on_reply(msg_type)
        self._after += after  # after what an adopted, half-forwarded header was promised
        self._skip = 1 + length

    def _pass_current(self, chunk: bytes, pos: int, size: int, out: List[bytes]) -> int:
        """Forward or drop the current message's bytes in ``chunk``; return where it ends."""
        end = min(size, pos + self._skip)
        self._skip -= end - pos
        if self._keep:
            out.append(chunk[pos:end])
        if not self._skip and self._after:
            out.append(self._after)
            self._after = b""
        return end

    def _join_head(self, chunk: bytes, size: int, out: List[bytes], on_reply: OnReply) -> int:
        missing = _HEADER_LEN - len(self._head)
        if size < missing:
            self._head += chunk
            return size
        header = self._head + chunk[:missing]
        sent, self._head, self._head_sent = self._head_sent, b"", 0
        self._start(header[0], _unpack_length(header, 1)[0], on_reply)
        self._keep = self._keep or bool(sent)  # forwarded bytes cannot be taken back
        self._skip -= sent
        self._pass_current(header, sent, _HEADER_LEN, out)
        return self._pass_current(chunk, missing, size, out)
