"""Message boundaries: the untyped startup packet and the typed ``(type, length, payload)`` stream.

Sans-IO: the caller reads bytes from wherever it likes and hands them over; nothing here
blocks.  Length fields come from untrusted peers, so every length is checked against a cap
before anything is buffered on its behalf, and :class:`MessageReader` keeps its buffer work
linear in the bytes fed (see its docstring).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

from bouncer.errors import ProtocolError
from bouncer.proto.codec import UINT32
from bouncer.proto.constants import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    SSL_REQUEST_CODE,
)

#: PostgreSQL's own cap on a startup packet (MAX_STARTUP_PACKET_LENGTH in pqcomm.h).
MAX_STARTUP_PACKET_LEN = 10000

_SUPPORTED_MAJOR = 3
#: Request codes live in the "protocol version" slot under this fake major number.
_REQUEST_CODE_MAJOR = 1234
_CANCEL_REQUEST_LEN = 16
_BARE_REQUEST_LEN = 8


@dataclass(frozen=True)
class StartupMessage:
    """A client's StartupMessage: protocol version and its name/value parameters."""

    protocol: int
    params: Dict[str, str]

    @property
    def minor_version(self) -> int:
        """Minor protocol version; above 0 the caller answers NegotiateProtocolVersion."""
        return self.protocol & 0xFFFF


@dataclass(frozen=True)
class SSLRequest:
    """The client asks to switch to TLS before the StartupMessage."""


@dataclass(frozen=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption (bouncer always answers 'N')."""


@dataclass(frozen=True)
class CancelRequest:
    """A cancel key sent on a fresh connection: cancel the query of that backend."""

    pid: int
    secret: int


StartupPacket = Union[StartupMessage, SSLRequest, GSSENCRequest, CancelRequest]


def startup_packet_length(header: bytes) -> int:
    """Return the total length of a startup packet from its first 4 bytes.

    :raises ProtocolError: fewer than 4 bytes, or a length outside 8..MAX_STARTUP_PACKET_LEN.
    """
    if len(header) < 4:
        raise ProtocolError("incomplete startup packet")
    length = UINT32.unpack_from(header)[0]
    if length < _BARE_REQUEST_LEN or length > MAX_STARTUP_PACKET_LEN:
        raise ProtocolError("invalid length of startup packet")
    return length


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Parse a whole startup packet, its 4-byte length included.

    :raises ProtocolError: bad length, unknown request code, unsupported protocol major,
        or a malformed parameter list.
    """
    if startup_packet_length(packet) != len(packet):
        raise ProtocolError("startup packet length does not match its length field")
    code = UINT32.unpack_from(packet, 4)[0]
    if code == SSL_REQUEST_CODE:
        _expect_length(packet, _BARE_REQUEST_LEN, "SSLRequest")
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        _expect_length(packet, _BARE_REQUEST_LEN, "GSSENCRequest")
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        _expect_length(packet, _CANCEL_REQUEST_LEN, "CancelRequest")
        pid, secret = UINT32.unpack_from(packet, 8)[0], UINT32.unpack_from(packet, 12)[0]
        return CancelRequest(pid, secret)
    major, minor = code >> 16, code & 0xFFFF
    if major == _REQUEST_CODE_MAJOR:
        raise ProtocolError(f"unsupported request code {major}.{minor}")
    if major != _SUPPORTED_MAJOR:
        raise ProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0")
    return StartupMessage(code, _parse_startup_params(packet[8:]))


def _expect_length(packet: bytes, length: int, name: str) -> None:
    if len(packet) != length:
        raise ProtocolError(f"invalid length of {name} packet")


def _parse_startup_params(body: bytes) -> Dict[str, str]:
    """Parse ``name\\0value\\0 ... \\0`` into a dict (the final extra NUL is required)."""
    if not body.endswith(b"\0\0") and body != b"\0":
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    # Dropping the final NUL leaves NUL-terminated strings; split leaves one empty tail.
    strings = body[:-1].split(b"\0")[:-1]
    if len(strings) % 2:
        raise ProtocolError(f"startup parameter {strings[-1]!r} has no value")
    params: Dict[str, str] = {}
    for raw_name, raw_value in zip(strings[::2], strings[1::2]):
        name, value = _decode_startup_string(raw_name), _decode_startup_string(raw_value)
        if not name:
            raise ProtocolError("empty startup parameter name")
        if name in params:
            raise ProtocolError(f"duplicate startup parameter {name!r}")
        params[name] = value
    return params


def _decode_startup_string(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("startup packet is not valid UTF-8") from None


class MessageReader:
    """Split a byte stream into typed messages ``(type byte, payload)``.

    Used where bouncer reads another pooler's admin console (online restart); a client's
    and a server's own bytes are buffered by their protocol engines.

    Cost guarantee: bytes are appended to one ``bytearray`` and consumed by moving an
    offset; the consumed prefix is dropped only once it is at least half of the buffer,
    so every byte is moved at most a constant number of times (O(n) overall, no
    quadratic re-slicing).  A length field above ``max_length`` is refused before any
    of its body is awaited, so a hostile peer cannot make us buffer more than that.
    """

    __slots__ = ("max_length", "_buf", "_pos")

    def __init__(self, max_length: int = 2**31 - 1) -> None:
        """:param max_length: largest accepted length field (counting itself, not the type byte)."""
        self.max_length = max_length
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def next_message(self) -> Optional[Tuple[int, bytes]]:
        """Return the next complete ``(type, payload)``, or None until more bytes arrive.

        :raises ProtocolError: a length field below 4 or above ``max_length``.
        """
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 5:
            return None
        msg_type = buf[pos]
        length = UINT32.unpack_from(buf, pos + 1)[0]
        if length < 4 or length > self.max_length:
            raise ProtocolError(f"invalid length {length} of message type {chr(msg_type)!r}")
        end = pos + 1 + length
        if end > len(buf):
            return None
        self._pos = end
        return msg_type, bytes(buf[pos + 5:end])
