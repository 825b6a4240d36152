"""Messages a PostgreSQL server sends: builders (for our clients) and parsers (from servers).

Builders return complete wire bytes.  Parsers take the payload without the 5-byte header
and raise :class:`~bouncer.errors.ProtocolError` on anything malformed.  Integers that are
opaque 32-bit keys (backend pid, cancel secret) are treated as unsigned.
"""
from __future__ import annotations

import functools
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from bouncer.proto.codec import (
    INT16,
    INT32,
    UINT32,
    PayloadReader,
    build_message,
    cstring,
    encode_text,
)
from bouncer.proto.constants import AuthCode, Backend

#: typlen of the fixed-size types the admin console returns; everything else is -1
#: (variable length), which is what PostgreSQL reports for text-like types.
_TYPE_SIZES = {16: 1, 20: 8, 21: 2, 23: 4, 26: 4, 700: 4, 701: 8}
#: Bytes after the column name in a RowDescription field: table oid, attnum, type oid,
#: typlen, typmod, format.
_FIELD_TAIL_LEN = 18
_NULL_LENGTH = -1
_EMPTY_QUERY_RESPONSE = build_message(Backend.EMPTY_QUERY_RESPONSE)


# --- builders ------------------------------------------------------------------------

def authentication(code: int, data: bytes = b"") -> bytes:
    """Authentication* message: ``code`` (see :class:`AuthCode`) followed by its data."""
    return build_message(Backend.AUTHENTICATION, INT32.pack(code) + data)


def authentication_sasl(mechanisms: Iterable[str]) -> bytes:
    """AuthenticationSASL listing the mechanisms we offer."""
    names = b"".join(cstring(name) for name in mechanisms)
    return authentication(AuthCode.SASL, names + b"\0")


@functools.lru_cache(maxsize=1024)
def parameter_status(name: str, value: str) -> bytes:
    """ParameterStatus.  Cached: every login sends a pool's same dozen or so of them."""
    return build_message(Backend.PARAMETER_STATUS, cstring(name) + cstring(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return build_message(Backend.BACKEND_KEY_DATA, UINT32.pack(pid) + UINT32.pack(secret))


def ready_for_query(status: int) -> bytes:
    """ReadyForQuery; ``status`` is the int byte (``TXN_IDLE`` etc.)."""
    return build_message(Backend.READY_FOR_QUERY, bytes((status,)))


def error_response(severity: str, sqlstate: str, message: str,
                   detail: Optional[str] = None, hint: Optional[str] = None) -> bytes:
    """ErrorResponse with fields S, V (same as S: not localised), C, M and optional D, H."""
    return build_message(Backend.ERROR_RESPONSE,
                         _notice_fields(severity, sqlstate, message, detail, hint))


def notice_response(severity: str, sqlstate: str, message: str,
                    detail: Optional[str] = None, hint: Optional[str] = None) -> bytes:
    """NoticeResponse; same fields as :func:`error_response`."""
    return build_message(Backend.NOTICE_RESPONSE,
                         _notice_fields(severity, sqlstate, message, detail, hint))


def _notice_fields(severity: str, sqlstate: str, message: str,
                   detail: Optional[str], hint: Optional[str]) -> bytes:
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message),
              ("D", detail), ("H", hint)]
    body = b"".join(code.encode() + cstring(value) for code, value in fields
                    if value is not None)
    return body + b"\0"


def negotiate_protocol_version(newest_minor: int, unrecognized: Sequence[str]) -> bytes:
    """NegotiateProtocolVersion: our newest minor version and the ``_pq_.*`` options we ignore."""
    names = b"".join(cstring(name) for name in unrecognized)
    payload = INT32.pack(newest_minor) + INT32.pack(len(unrecognized)) + names
    return build_message(Backend.NEGOTIATE_PROTOCOL_VERSION, payload)


def row_description(columns: Sequence[Tuple[str, int]]) -> bytes:
    """RowDescription for ``(name, type oid)`` columns, text format, typmod -1."""
    fields = b"".join(
        cstring(name)
        + INT32.pack(0) + INT16.pack(0)  # not a table column
        + INT32.pack(type_oid) + INT16.pack(_TYPE_SIZES.get(type_oid, -1))
        + INT32.pack(-1) + INT16.pack(0)  # typmod, text format
        for name, type_oid in columns)
    return build_message(Backend.ROW_DESCRIPTION, INT16.pack(len(columns)) + fields)


def data_row(values: Sequence[Optional[str]]) -> bytes:
    """DataRow of text values; None is SQL NULL."""
    parts = [INT16.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(INT32.pack(_NULL_LENGTH))
        else:
            data = encode_text(value)
            parts.append(INT32.pack(len(data)) + data)
    return build_message(Backend.DATA_ROW, b"".join(parts))


def command_complete(tag: str) -> bytes:
    return build_message(Backend.COMMAND_COMPLETE, cstring(tag))


def empty_query_response() -> bytes:
    return _EMPTY_QUERY_RESPONSE


# --- parsers -------------------------------------------------------------------------

def parse_authentication(payload: bytes) -> Tuple[int, bytes]:
    """Return ``(auth code, data after the code)``."""
    reader = PayloadReader(payload, "Authentication")
    return reader.int32(), reader.rest()


def parse_sasl_mechanisms(data: bytes) -> List[str]:
    """Mechanism names from the data of an AuthenticationSASL message."""
    reader = PayloadReader(data, "AuthenticationSASL")
    names = []
    while True:
        name = reader.cstring()
        if not name:
            break
        names.append(name)
    reader.expect_end()
    return names


def parse_parameter_status(payload: bytes) -> Tuple[str, str]:
    reader = PayloadReader(payload, "ParameterStatus")
    name, value = reader.cstring(), reader.cstring()
    reader.expect_end()
    return name, value


def parse_backend_key_data(payload: bytes) -> Tuple[int, int]:
    """Return ``(pid, secret)``; only the 4-byte secret of protocol 3.0 is accepted."""
    reader = PayloadReader(payload, "BackendKeyData")
    pid, secret = reader.uint32(), reader.uint32()
    reader.expect_end()
    return pid, secret


def parse_error_fields(payload: bytes) -> Dict[str, str]:
    """Fields of an ErrorResponse or NoticeResponse: field code char -> value."""
    reader = PayloadReader(payload, "ErrorResponse")
    fields = {}
    while True:
        code = reader.byte()
        if code == 0:
            break
        fields[chr(code)] = reader.cstring()
    reader.expect_end()
    return fields


def parse_row_description(payload: bytes) -> List[str]:
    """Column names of a RowDescription."""
    reader = PayloadReader(payload, "RowDescription")
    count = reader.int16()
    if count < 0:
        raise reader.error(f"negative column count {count}")
    names = []
    for _ in range(count):
        names.append(reader.cstring())
        reader.raw(_FIELD_TAIL_LEN)
    reader.expect_end()
    return names


def parse_data_row(payload: bytes) -> List[Optional[bytes]]:
    """Raw column values of a DataRow; None is SQL NULL."""
    reader = PayloadReader(payload, "DataRow")
    count = reader.int16()
    if count < 0:
        raise reader.error(f"negative column count {count}")
    values: List[Optional[bytes]] = []
    for _ in range(count):
        length = reader.int32()
        if length < _NULL_LENGTH:
            raise reader.error(f"invalid value length {length}")
        values.append(None if length == _NULL_LENGTH else reader.raw(length))
    reader.expect_end()
    return values


def parse_command_complete(payload: bytes) -> str:
    reader = PayloadReader(payload, "CommandComplete")
    tag = reader.cstring()
    reader.expect_end()
    return tag
