"""The server side of the protocol engine: what one server connection sends, in one buffer.

Sans-IO.  While bouncer itself talks to the server (login, pooler queries) it hands out whole
messages (:meth:`ServerEngine.next_message`); while a client is linked,
:meth:`ServerEngine.receive` walks the 5-byte headers once and returns the bytes for the
client.  On the way it keeps what the pool needs to know: the transaction status of the last
ReadyForQuery, the ParameterStatus values, and, through the connection's
:class:`~bouncer.proto.pipeline.Pipeline`, how many replies are still owed.  Replies to
requests bouncer injected are dropped and replies bouncer made up are inserted where they
belong; a chunk with neither comes back as the same object.

Only the bodies of ReadyForQuery, ParameterStatus and (when prepared statements are tracked)
a CommandComplete that may say ``DISCARD ALL`` are ever looked at; every other body is
skipped by arithmetic, across chunks if need be.
"""
from __future__ import annotations

import struct
from typing import List, Optional, Tuple, Union

from bouncer.errors import ProtocolError
from bouncer.proto.backend import parse_parameter_status
from bouncer.proto.constants import TXN_IDLE, Backend, Frontend
from bouncer.proto.pipeline import FAKE, KIND, SYNC_KINDS, Pipeline
from bouncer.proto.statements import RESET_TAGS

Bytes = Union[bytes, bytearray, memoryview]

_HEADER_LEN = 5
_unpack_length = struct.Struct("!I").unpack_from

_DATA_ROW, _READY = Backend.DATA_ROW, Backend.READY_FOR_QUERY
_PARAMETER_STATUS, _ERROR = Backend.PARAMETER_STATUS, Backend.ERROR_RESPONSE
_COMMAND_COMPLETE, _EMPTY_QUERY = Backend.COMMAND_COMPLETE, Backend.EMPTY_QUERY_RESPONSE
_PORTAL_SUSPENDED = Backend.PORTAL_SUSPENDED
_ROW_DESCRIPTION, _NO_DATA = Backend.ROW_DESCRIPTION, Backend.NO_DATA
_PARSE_COMPLETE, _BIND_COMPLETE = Backend.PARSE_COMPLETE, Backend.BIND_COMPLETE
_CLOSE_COMPLETE = Backend.CLOSE_COMPLETE
_COPY_IN, _COPY_BOTH = Backend.COPY_IN_RESPONSE, Backend.COPY_BOTH_RESPONSE
_EXECUTE = Frontend.EXECUTE
#: The bits of a pipeline entry that say which request it is and whether it was sent.
_HEAD = KIND | FAKE

#: The request each reply completes (other replies complete nothing).
_COMPLETES = {_PARSE_COMPLETE: Frontend.PARSE, _BIND_COMPLETE: Frontend.BIND,
              _CLOSE_COMPLETE: Frontend.CLOSE, _ROW_DESCRIPTION: Frontend.DESCRIBE,
              _NO_DATA: Frontend.DESCRIBE, _EMPTY_QUERY: Frontend.EXECUTE,
              _PORTAL_SUSPENDED: Frontend.EXECUTE}

#: Message types a server may send after login.
_VALID = bytearray(256)
for _kind in b"123ACDEGHINSTVWZcdnstv":
    _VALID[_kind] = 1

_READY_LEN = 5  # ReadyForQuery's length field: itself and the status byte
#: A bigger ParameterStatus is broken or hostile: it would have to be buffered.
_MAX_PARAMETER_STATUS_LEN = 1 << 20
#: Length fields of CommandComplete "DISCARD ALL" and "DEALLOCATE ALL".
_RESET_TAG_LENGTHS = frozenset(4 + len(tag) + 1 for tag in RESET_TAGS)


class ServerProtocolError(ProtocolError):
    """The server sent something no PostgreSQL server sends: the connection is closed."""


class ServerEngine:
    """Everything one server connection sent that is not consumed yet, and what it means.

    :param max_length: ``max_packet_size``.
    :param track_statements: look for DISCARD ALL / DEALLOCATE ALL (prepared statements).
    """

    __slots__ = ("max_length", "track_statements", "pipeline", "status", "ready_count",
                 "param_updates", "_carry", "_need", "_skip", "_keep", "_after")

    def __init__(self, max_length: int = 2**31 - 1, track_statements: bool = False) -> None:
        self.max_length = max_length
        self.track_statements = track_statements
        self.pipeline = Pipeline()
        #: Status byte of the last ReadyForQuery ('I' after login).
        self.status = TXN_IDLE
        #: ReadyForQuery messages in the last chunk received.
        self.ready_count = 0
        #: ``(name, value)`` of each ParameterStatus relayed; the caller drains it.
        self.param_updates: List[Tuple[str, str]] = []
        self._carry = bytearray()
        self._need = 0
        self._skip = 0  # bytes of the current message still to come
        self._keep = True  # whether the current message goes to the client
        self._after = b""  # made-up replies due once the current message has passed

    # -- bouncer's own conversation ---------------------------------------------------------

    def feed(self, data: Bytes) -> None:
        self._carry += data

    def next_message(self) -> Optional[Tuple[int, bytes]]:
        """The next whole message ``(type, payload)``, or None until more bytes arrive.

        :raises ServerProtocolError: a length field below 4 or above ``max_length``.
        """
        carry = self._carry
        if len(carry) < _HEADER_LEN:
            return None
        kind = carry[0]
        length = _unpack_length(carry, 1)[0]
        if not 4 <= length <= self.max_length:
            raise _bad_length(kind, length)
        end = 1 + length
        if len(carry) < end:
            return None
        payload = bytes(carry[_HEADER_LEN:end])
        del carry[:end]
        if kind == _READY:
            self.status = payload[0] if payload else TXN_IDLE
        elif kind == _COMMAND_COMPLETE and payload.rstrip(b"\0") in RESET_TAGS:
            self.pipeline.reset_statements()
        return kind, payload

    @property
    def buffered(self) -> bool:
        """Bytes wait to be walked (left over from bouncer's own conversation)."""
        return len(self._carry) > 0 and len(self._carry) >= self._need

    # -- relaying ---------------------------------------------------------------------------

    @property
    def at_boundary(self) -> bool:
        """Between two messages: nothing half walked."""
        return not self._skip and not self._carry

    @property
    def client_mid_message(self) -> bool:
        """Part of a message went to the client and the rest is still to come."""
        return self._skip > 0 and self._keep

    def receive(self, data: Bytes) -> Bytes:
        """Walk what the server sent; return the bytes for the client.

        :raises ServerProtocolError: a message no server sends, or a bad length.
        """
        self.ready_count = 0
        if self._carry:
            if len(self._carry) + len(data) < self._need:
                self._carry += data
                self.pipeline.mid_reply = True
                return b""
            data = self._carry + data
            self._carry = bytearray()
            self._need = 0
        if self._skip:
            return self._finish_current(data)
        return self._walk(data, 0, 0, None)

    def _finish_current(self, data: Bytes) -> Bytes:
        """The rest of a message cut by the previous chunk's end, then the walk."""
        skip = self._skip
        if skip > len(data):
            self._skip = skip - len(data)
            return data if self._keep else b""
        self._skip = 0
        self.pipeline.mid_reply = False
        # made-up replies promised after this message, or queued while it was cut
        fakes = self._after + self.pipeline.due_fakes()
        self._after = b""
        if self._keep and not fakes:
            return self._walk(data, skip, 0, None)
        out: List[Bytes] = [data[:skip]] if self._keep else []
        if fakes:
            out.append(fakes)
        return self._walk(data, skip, skip, out)

    def _walk(self, data: Bytes, pos: int, raw_from: int, out: Optional[List[Bytes]]) -> Bytes:
        """Walk the headers from ``pos``; ``data[raw_from:pos]`` goes out unchanged, after
        ``out`` (None: nothing decided yet).

        Every server message passes here, so the common ones cost a few comparisons: a reply
        touches the pipeline only when it completes the oldest request owed.
        """
        size = len(data)
        pipeline = self.pipeline
        queue = pipeline.queue
        max_length = self.max_length
        while pos < size:
            if size - pos < _HEADER_LEN:
                self._hold(data, pos, _HEADER_LEN)
                break
            kind = data[pos]
            length = _unpack_length(data, pos + 1)[0]
            end = pos + 1 + length
            if not 4 <= length <= max_length:
                raise _bad_length(kind, length)
            if kind == _DATA_ROW:
                pos = end
                continue
            if kind == _READY or kind == _PARAMETER_STATUS or (
                    kind == _COMMAND_COMPLETE and self.track_statements
                    and length in _RESET_TAG_LENGTHS):
                if end > size:
                    self._hold(data, pos, end - pos)  # its body is needed
                    break
                keep = self._small_message(kind, data, pos + _HEADER_LEN, end)
            elif kind == _COMMAND_COMPLETE:
                if not pipeline.copy_in and not (queue and queue[0] & _HEAD == _EXECUTE):
                    pos = end  # one of a Query's results
                    continue
                keep = pipeline.command_complete()
            elif kind in _COMPLETES:
                if not (queue and queue[0] & _HEAD == _COMPLETES[kind]):
                    pos = end  # part of a Query's replies
                    continue
                keep = pipeline.pop_answered()
            elif kind == _ERROR:
                pipeline.error()
                keep = True
            elif kind == _COPY_IN or kind == _COPY_BOTH:
                pipeline.copy_started()
                pos = end
                continue
            elif _VALID[kind]:
                pos = end  # NoticeResponse, CopyData, ParameterDescription...: forwarded
                continue
            else:
                raise ServerProtocolError(f"unknown pkt from server: {chr(kind)!r}")
            fakes = pipeline.due_fakes() if pipeline.fakes else b""
            if keep and not fakes:
                pos = end
                continue
            # the message is dropped, or made-up replies follow it: the output is cut here
            if out is None:
                out = []
            if raw_from < pos:
                out.append(data[raw_from:pos])
            if end > size:  # the rest of it comes in later chunks
                if keep:
                    out.append(data[pos:size])
                self._skip, self._keep, self._after = end - size, keep, fakes
                pipeline.mid_reply = True
                return b"".join(out)
            if keep:
                out.append(data[pos:end])
            if fakes:
                out.append(fakes)
            pos = raw_from = end
        if pos > size:
            self._skip, self._keep = pos - size, True
            pipeline.mid_reply = True
            pos = size
        else:
            pipeline.mid_reply = bool(self._carry)
        if out is None:
            return data if raw_from == 0 and pos == size else data[raw_from:pos]
        if raw_from < pos:
            out.append(data[raw_from:pos])
        return b"".join(out)

    def _small_message(self, kind: int, data: Bytes, body: int, end: int) -> bool:
        """ReadyForQuery, ParameterStatus or a CommandComplete that may reset statements."""
        if kind == _READY:
            if end - body != _READY_LEN - 4:
                raise _bad_length(kind, end - body + 4)
            self.status = data[body]
            self.ready_count += 1
            pipeline = self.pipeline
            queue = pipeline.queue
            if queue and queue[0] in SYNC_KINDS and not pipeline.skipping:
                queue.popleft()  # the common case: a plain Query or Sync is answered
            else:
                pipeline.ready()
            return True
        if kind == _PARAMETER_STATUS:
            if end - body > _MAX_PARAMETER_STATUS_LEN:
                raise _bad_length(kind, end - body + 4)
            self.param_updates.append(parse_parameter_status(bytes(data[body:end])))
            return True
        keep = self.pipeline.command_complete()
        if bytes(data[body:end - 1]) in RESET_TAGS:
            self.pipeline.reset_statements()
        return keep

    def _hold(self, data: Bytes, pos: int, need: int) -> None:
        self._carry += data[pos:]
        self._need = need


def _bad_length(kind: int, length: int) -> ServerProtocolError:
    return ServerProtocolError(f"invalid length {length} of server message type {chr(kind)!r}")
