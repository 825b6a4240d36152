"""A hostile PostgreSQL server for tests: it speaks just enough of the protocol to log bouncer in
(or not) and then says what the test wants, malformed or absurd.

Each accepted connection runs ``script(conn)`` in a thread of its own; :class:`FakeConnection`
has the few moves a script needs.  Built on :mod:`tests.support.pgwire`, apart from bouncer's
own protocol code.
"""
from __future__ import annotations

import socket
import struct
import threading
from typing import Callable, Dict, List, Optional

from tests.support import pgwire

AUTH_SASL_CONTINUE = 11


class FakeConnection:
    """One connection from bouncer, after its StartupMessage was read."""

    def __init__(self, sock: socket.socket, startup: Dict[str, str]) -> None:
        self.sock = sock
        self.startup = startup

    def send(self, kind: bytes, body: bytes = b"") -> None:
        self.sock.sendall(pgwire.typed(kind, body))

    def read(self) -> pgwire.Message:
        return pgwire.read_message(self.sock)

    def auth_request(self, code: int, data: bytes = b"") -> None:
        self.send(b"R", struct.pack("!I", code) + data)

    def error(self, fields: Dict[str, str], terminated: bool = True) -> None:
        """An ErrorResponse with exactly *fields* (none added), optionally malformed."""
        body = b"".join(code.encode() + value.encode() + b"\0" for code, value in fields.items())
        self.send(b"E", body + (b"\0" if terminated else b""))

    def welcome(self) -> None:
        """AuthenticationOk, a few parameters, BackendKeyData and ReadyForQuery."""
        self.auth_request(pgwire.AUTH_OK)
        for name, value in (("server_version", "16.0"), ("client_encoding", "UTF8"),
                            ("DateStyle", "ISO, MDY"), ("TimeZone", "UTC"),
                            ("standard_conforming_strings", "on"),
                            ("integer_datetimes", "on")):
            self.send(b"S", name.encode() + b"\0" + value.encode() + b"\0")
        self.send(b"K", struct.pack("!II", 4242, 1234))
        self.ready()

    def ready(self) -> None:
        self.send(b"Z", b"I")


Script = Callable[[FakeConnection], None]


class FakeServer:
    """Listens on 127.0.0.1 (a free port) and runs *script* for every connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: List[FakeConnection] = []
        self.errors: List[BaseException] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        with sock:
            try:
                length, code = struct.unpack("!II", pgwire.recv_exactly(sock, 8))
                if code == pgwire.SSL_REQUEST:
                    sock.sendall(b"N")
                    length, code = struct.unpack("!II", pgwire.recv_exactly(sock, 8))
                fields = pgwire.recv_exactly(sock, length - 8).split(b"\0")
                startup = {fields[i].decode(): fields[i + 1].decode()
                           for i in range(0, len(fields) - 2, 2) if fields[i]}
                conn = FakeConnection(sock, startup)
                self.connections.append(conn)
                self.script(conn)
            except (EOFError, OSError) as exc:  # bouncer hung up: what a script may expect
                self.errors.append(exc)

    def close(self) -> None:
        self.listener.close()


def parse_sasl_initial_response(payload: bytes) -> bytes:
    """The client-first-message inside a SASLInitialResponse body."""
    mechanism_end = payload.index(b"\0")
    (length,) = struct.unpack("!i", payload[mechanism_end + 1:mechanism_end + 5])
    return payload[mechanism_end + 5:mechanism_end + 5 + length]


def client_nonce(client_first: bytes) -> Optional[bytes]:
    for attribute in client_first.split(b",")[2:]:
        if attribute.startswith(b"r="):
            return attribute[2:]
    return None
