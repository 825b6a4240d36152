"""A tiny, independent PostgreSQL v3 client for tests that need to see the raw protocol.

Deliberately written apart from ``bouncer.proto``: a test that parsed replies with the code
under test would share its bugs.  Covers what the startup tests look at: startup and request
packets, reading typed messages, ErrorResponse fields, and a cleartext/md5 login.
"""
from __future__ import annotations

import hashlib
import socket
import struct
import time
from typing import Dict, List, Optional, Tuple

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL = 0, 3, 5, 10

Message = Tuple[bytes, bytes]


def packet(code: int, body: bytes = b"") -> bytes:
    """An untyped startup-phase packet: length, 32-bit code, body."""
    return struct.pack("!II", 8 + len(body), code) + body


def startup(params: Dict[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    """A StartupMessage carrying ``params`` (name/value pairs) for ``protocol``."""
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return packet(protocol, body)


def cancel_request(pid: int, secret: int) -> bytes:
    return packet(CANCEL_REQUEST, struct.pack("!II", pid, secret))


def typed(kind: bytes, body: bytes = b"") -> bytes:
    """A typed message (after the startup phase): type byte, length, body."""
    return kind + struct.pack("!I", 4 + len(body)) + body


def query(sql: str) -> bytes:
    return typed(b"Q", sql.encode() + b"\0")


def password(secret: str) -> bytes:
    return typed(b"p", secret.encode() + b"\0")


def md5_answer(user: str, plain: str, salt: bytes) -> str:
    """PostgreSQL's md5 challenge answer: md5(md5(password + user) + salt)."""
    inner = hashlib.md5((plain + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


def connect(host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """TCP to ``host``, or, as libpq reads a ``host`` starting with ``/``, the unix socket in
    that directory."""
    if not host.startswith("/"):
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.settimeout(timeout)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(f"{host}/.s.PGSQL.{port}")
    return sock


def backend_key(messages: List[Message]) -> Tuple[int, int]:
    """The (pid, secret) of the BackendKeyData among a login's messages."""
    payload = next(payload for kind, payload in messages if kind == b"K")
    pid, secret = struct.unpack("!II", payload)
    return pid, secret


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    """``count`` bytes; raises EOFError when the peer closes first."""
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def read_message(sock: socket.socket) -> Message:
    kind = recv_exactly(sock, 1)
    (length,) = struct.unpack("!I", recv_exactly(sock, 4))
    return kind, recv_exactly(sock, length - 4)


def read_until(sock: socket.socket, kinds: bytes) -> List[Message]:
    """Messages up to and including the first whose type is in ``kinds`` (e.g. ``b"ZE"``)."""
    messages: List[Message] = []
    while True:
        message = read_message(sock)
        messages.append(message)
        if message[0] in kinds:
            return messages


def auth_code(payload: bytes) -> int:
    return struct.unpack("!I", payload[:4])[0]


def error_fields(payload: bytes) -> Dict[str, str]:
    """ErrorResponse/NoticeResponse fields by their one-letter code (S, C, M, ...)."""
    fields = {}
    for item in payload.split(b"\0"):
        if item:
            fields[chr(item[0])] = item[1:].decode("utf-8", "replace")
    return fields


def first_error(messages: List[Message]) -> Optional[Dict[str, str]]:
    for kind, payload in messages:
        if kind == b"E":
            return error_fields(payload)
    return None


def parameter_status(messages: List[Message]) -> Dict[str, str]:
    """The ParameterStatus values among ``messages``."""
    found = {}
    for kind, payload in messages:
        if kind == b"S":
            name, value = payload.split(b"\0")[:2]
            found[name.decode()] = value.decode()
    return found


def data_rows(messages: List[Message]) -> List[List[Optional[str]]]:
    """The DataRow values among ``messages`` (NULL as None)."""
    rows = []
    for kind, payload in messages:
        if kind != b"D":
            continue
        (count,), pos, row = struct.unpack("!H", payload[:2]), 2, []
        for _ in range(count):
            (size,) = struct.unpack("!i", payload[pos:pos + 4])
            pos += 4
            row.append(None if size < 0 else payload[pos:pos + size].decode())
            pos += max(size, 0)
        rows.append(row)
    return rows


def run_query(sock: socket.socket, sql: str) -> List[Message]:
    """Send a simple Query and read its replies up to ReadyForQuery."""
    sock.sendall(query(sql))
    return read_until(sock, b"Z")


def login(sock: socket.socket, user: str, plain: Optional[str]) -> List[Message]:
    """Answer cleartext or md5 requests with ``plain``; returns messages up to ReadyForQuery
    or the first ErrorResponse."""
    messages: List[Message] = []
    while True:
        kind, payload = message = read_message(sock)
        messages.append(message)
        if kind in b"ZE":
            return messages
        if kind == b"R" and auth_code(payload) == AUTH_CLEARTEXT:
            sock.sendall(password(plain or ""))
        elif kind == b"R" and auth_code(payload) == AUTH_MD5:
            sock.sendall(password(md5_answer(user, plain or "", payload[4:8])))
        elif kind == b"R" and auth_code(payload) != AUTH_OK:
            raise AssertionError(f"login() cannot answer auth request {auth_code(payload)}")


def open_session(host: str, port: int, user: str, plain: Optional[str],
                 database: str = "testdb", params: Optional[Dict[str, str]] = None,
                 protocol: int = PROTOCOL_3_0) -> Tuple[socket.socket, List[Message]]:
    """A logged-in raw connection and the messages up to its first ReadyForQuery."""
    sock = connect(host, port)
    sock.sendall(startup({"user": user, "database": database, **(params or {})}, protocol))
    messages = login(sock, user, plain)
    if messages[-1][0] != b"Z":
        sock.close()
        raise AssertionError(f"login failed: {first_error(messages)}")
    return sock, messages


def messages_until_closed(sock: socket.socket, timeout: float) -> List[Message]:
    """Everything the peer sends until it closes; fails if it is still open after ``timeout``."""
    sock.settimeout(timeout)
    messages: List[Message] = []
    try:
        while True:
            messages.append(read_message(sock))
    except (EOFError, ConnectionResetError):
        return messages
    except socket.timeout:
        raise AssertionError(f"still open after {timeout}s; got {messages}") from None


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True when the peer closes ``sock`` within ``timeout`` (any bytes before EOF are read)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
