"""Field-level encoding shared by the message builders and parsers.

Builders assemble a payload and wrap it with :func:`build_message`; parsers walk a payload
with :class:`PayloadReader`, which turns every short read or missing terminator into a
:class:`~bouncer.errors.ProtocolError` (never ``IndexError`` or ``struct.error``).

Text coming from a peer is decoded as UTF-8 with ``surrogateescape`` and encoded back the
same way, so a value in another client encoding (say a LATIN1 ``application_name``)
survives a round trip byte for byte instead of killing the connection.
"""
from __future__ import annotations

import struct

from bouncer.errors import ProtocolError

TEXT_ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"

_HEADER = struct.Struct("!BI")
INT16 = struct.Struct("!h")
INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")


def build_message(msg_type: int, payload: bytes = b"") -> bytes:
    """Return a typed message: type byte, int32 length (itself included), payload."""
    return _HEADER.pack(msg_type, len(payload) + 4) + payload


def cstring(text: str) -> bytes:
    """Encode ``text`` as a NUL-terminated string.

    :raises ValueError: ``text`` contains NUL, which would silently cut the field short
        and desynchronise the peer: a bug in the caller, not in the peer.
    """
    data = encode_text(text)
    if b"\0" in data:
        raise ValueError(f"NUL byte in protocol string {text!r}")
    return data + b"\0"


def encode_text(text: str) -> bytes:
    """Encode text for the wire; the inverse of :func:`decode_text`."""
    return text.encode(TEXT_ENCODING, TEXT_ERRORS)


def decode_text(data: bytes) -> str:
    """Decode peer text so that :func:`cstring` gives the same bytes back."""
    return data.decode(TEXT_ENCODING, TEXT_ERRORS)


class PayloadReader:
    """A bounds-checked cursor over one message payload."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        """:param what: the message name, used in error messages."""
        self._data = data
        self._pos = 0
        self._what = what

    def error(self, problem: str) -> ProtocolError:
        """Build the ProtocolError for a malformed payload of this message."""
        return ProtocolError(f"malformed {self._what} message: {problem}")

    def _take(self, size: int) -> int:
        """Advance by ``size`` bytes and return the old position."""
        start = self._pos
        if size < 0 or start + size > len(self._data):
            raise self.error("truncated")
        self._pos = start + size
        return start

    def int16(self) -> int:
        return INT16.unpack_from(self._data, self._take(2))[0]

    def int32(self) -> int:
        return INT32.unpack_from(self._data, self._take(4))[0]

    def uint32(self) -> int:
        return UINT32.unpack_from(self._data, self._take(4))[0]

    def byte(self) -> int:
        return self._data[self._take(1)]

    def raw(self, size: int) -> bytes:
        start = self._take(size)
        return bytes(self._data[start:self._pos])

    def cstring_bytes(self) -> bytes:
        """Read up to the next NUL; return the bytes without it."""
        end = self._data.find(b"\0", self._pos)
        if end < 0:
            raise self.error("string not NUL-terminated")
        value = bytes(self._data[self._pos:end])
        self._pos = end + 1
        return value

    def cstring(self) -> str:
        return decode_text(self.cstring_bytes())

    def rest(self) -> bytes:
        """Return every byte not read yet."""
        value = bytes(self._data[self._pos:])
        self._pos = len(self._data)
        return value

    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def expect_end(self) -> None:
        """Trailing bytes mean the peer and we disagree on the format: refuse them."""
        if not self.at_end():
            raise self.error(f"{len(self._data) - self._pos} unexpected trailing bytes")
