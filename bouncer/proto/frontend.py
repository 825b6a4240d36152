"""Messages a PostgreSQL client sends: builders (to talk to servers) and parsers (from clients).

Builders return complete wire bytes; constant messages are built once at import.  Parsers
take the payload without the 5-byte header and raise
:class:`~bouncer.errors.ProtocolError` on anything malformed.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from bouncer.proto.codec import (
    INT16,
    INT32,
    UINT32,
    PayloadReader,
    build_message,
    cstring,
)
from bouncer.proto.constants import (
    CANCEL_REQUEST_CODE,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    Frontend,
)

_DESCRIBE_PORTAL = b"P"
_ALL_TEXT_FORMAT = INT16.pack(0)  # "zero format codes": every value is text
_NO_SASL_DATA = -1


def _untyped(payload: bytes) -> bytes:
    """A startup-phase packet: int32 length (itself included), no type byte."""
    return INT32.pack(len(payload) + 4) + payload


SSL_REQUEST = _untyped(INT32.pack(SSL_REQUEST_CODE))
SYNC = build_message(Frontend.SYNC)
TERMINATE = build_message(Frontend.TERMINATE)


# --- builders ------------------------------------------------------------------------

def startup_message(params: Dict[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    pairs = b"".join(cstring(name) + cstring(value) for name, value in params.items())
    return _untyped(INT32.pack(protocol) + pairs + b"\0")


def ssl_request() -> bytes:
    return SSL_REQUEST


def cancel_request(pid: int, secret: int) -> bytes:
    return _untyped(INT32.pack(CANCEL_REQUEST_CODE) + UINT32.pack(pid) + UINT32.pack(secret))


def password_message(data: bytes) -> bytes:
    """PasswordMessage with ``data`` as the raw body (text passwords include their NUL)."""
    return build_message(Frontend.PASSWORD, data)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return build_message(Frontend.PASSWORD,
                         cstring(mechanism) + INT32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return build_message(Frontend.PASSWORD, data)


def query(sql: str) -> bytes:
    return build_message(Frontend.QUERY, cstring(sql))


def parse(stmt: str, sql: str, param_oids: Sequence[int] = ()) -> bytes:
    oids = b"".join(UINT32.pack(oid) for oid in param_oids)
    return build_message(Frontend.PARSE,
                         cstring(stmt) + cstring(sql) + INT16.pack(len(param_oids)) + oids)


def bind(portal: str, stmt: str, params: Sequence[Optional[bytes]]) -> bytes:
    """Bind with every parameter and result column in text format; None is SQL NULL."""
    values = b"".join(INT32.pack(-1) if value is None else INT32.pack(len(value)) + value
                      for value in params)
    payload = (cstring(portal) + cstring(stmt) + _ALL_TEXT_FORMAT
               + INT16.pack(len(params)) + values + _ALL_TEXT_FORMAT)
    return build_message(Frontend.BIND, payload)


def describe_portal(portal: str) -> bytes:
    return build_message(Frontend.DESCRIBE, _DESCRIBE_PORTAL + cstring(portal))


def execute(portal: str, max_rows: int = 0) -> bytes:
    """Execute; ``max_rows`` 0 means no limit."""
    return build_message(Frontend.EXECUTE, cstring(portal) + INT32.pack(max_rows))


def sync() -> bytes:
    return SYNC


def terminate() -> bytes:
    return TERMINATE


# --- parsers -------------------------------------------------------------------------

def parse_password_message(payload: bytes) -> bytes:
    """The password (cleartext or ``md5...`` response) without its NUL terminator."""
    reader = PayloadReader(payload, "PasswordMessage")
    password = reader.cstring_bytes()
    reader.expect_end()
    return password


def parse_sasl_initial_response(payload: bytes) -> Tuple[str, bytes]:
    """Return ``(mechanism, initial client data)``; absent data (length -1) gives ``b""``."""
    reader = PayloadReader(payload, "SASLInitialResponse")
    mechanism = reader.cstring()
    length = reader.int32()
    if length < _NO_SASL_DATA:
        raise reader.error(f"invalid data length {length}")
    data = b"" if length == _NO_SASL_DATA else reader.raw(length)
    reader.expect_end()
    return mechanism, data


def parse_query(payload: bytes) -> str:
    reader = PayloadReader(payload, "Query")
    sql = reader.cstring()
    reader.expect_end()
    return sql

