"""The extended-query messages that name prepared statements: Parse, Bind, Describe, Close.

Parsers take the payload without the 5-byte header and raise
:class:`~bouncer.errors.ProtocolError` on anything malformed; builders return whole messages.
Names stay ``bytes``: the pooler compares and copies them, it never needs them as text.
"""
from __future__ import annotations

from typing import Tuple

from bouncer.errors import ProtocolError
from bouncer.proto.codec import PayloadReader, build_message
from bouncer.proto.constants import Frontend

STATEMENT = ord("S")
PORTAL = ord("P")

_PARSE, _DESCRIBE, _CLOSE = Frontend.PARSE, Frontend.DESCRIBE, Frontend.CLOSE


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
    """Return ``(portal, statement, offset of what follows the statement name)``.

    (Every Bind of a client with named statements passes here: two ``find`` calls.)
    """
    portal_end = payload.find(b"\0")
    name_end = payload.find(b"\0", portal_end + 1) if portal_end >= 0 else -1
    if name_end < 0:
        raise ProtocolError("malformed Bind message: string not NUL-terminated")
    return payload[:portal_end], payload[portal_end + 1:name_end], name_end + 1


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


def describe_statement(name: bytes) -> bytes:
    return build_message(_DESCRIBE, b"S" + name + b"\0")


def close_statement(name: bytes) -> bytes:
    return build_message(_CLOSE, b"S" + name + b"\0")
