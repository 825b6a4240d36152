"""A connection to a PostgreSQL server: connect, log in, run pooler queries, close.

The relay reads and writes ``server.sock`` directly; this module covers everything else a
server connection does outside a client's traffic (PgBouncer's server.c + the login half of
proto.c).
"""
from __future__ import annotations

import itertools
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import gevent
from gevent import monkey

from bouncer.errors import ClientError, ProtocolError
from bouncer.net.stream import ConnectionLost, read_message, send_all
from bouncer.proto import backend, frontend, sqlstate
from bouncer.proto.constants import Backend
from bouncer.proto.framing import MessageReader
from bouncer.proto.scanner import ServerScanner
from bouncer.session.server_login import login

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.pool.pool import Pool

log = logging.getLogger(__name__)

#: Unique ids for SHOW SERVERS' ``id`` column (shared numbering with nothing else).
_ids = itertools.count(1)

# A zero-timeout poll must not go through gevent's hub: it would wait for an event.
_select = monkey.get_original("select", "select")


class ServerError(ClientError):
    """A server connection failed or misbehaved; the message is for the client."""


class ServerConnection:
    """One logged-in server connection, owned by a pool."""

    def __init__(self, pool: "Pool", sock: socket.socket, host: str, addr: str,
                 port: int) -> None:
        self.pool = pool
        self.id = next(_ids)
        self.sock = sock
        #: The configured host name (for TLS verify-full) and the address connected to.
        self.host = host
        self.addr = addr
        self.port = port
        self.params: Dict[str, str] = {}
        self.cancel_key: Tuple[int, int] = (0, 0)
        self.connect_time = time.time()
        self.created = time.monotonic()
        self.last_used = self.created
        self.link: Any = None
        self.close_needed = False
        self.close_reason = ""
        self.closed = False
        self.scanner = ServerScanner(pool.limits.config().max_packet_size)
        self.tls = ""
        self._read_watch: Any = None
        local = sock.getsockname()
        self.local_addr, self.local_port = (local[0], local[1]) if isinstance(local, tuple) \
            else ("unix", 0)

    @property
    def prefix(self) -> str:
        """``S-0x...: db/user@addr:port`` for log lines, as PgBouncer prints it."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return (f"S-{id(self):#x}: {self.pool.database.name}/{self.pool.user.name}"
                f"@{host}:{self.port}")

    def age(self) -> float:
        return time.monotonic() - self.created

    def idle_for(self) -> float:
        return time.monotonic() - self.last_used

    def read_watcher(self) -> Any:
        """A libev read watcher on this socket, made once (the relay waits on it)."""
        if self._read_watch is None:
            self._read_watch = gevent.get_hub().loop.io(self.sock.fileno(), 1)
        return self._read_watch

    def is_usable(self) -> bool:
        """False if the server closed the connection (or sent something) while idle."""
        if self.closed:
            return False
        try:
            readable, _, _ = _select([self.sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    # -- pooler queries --------------------------------------------------------------------------

    def run_query(self, sql: str) -> List[List[Optional[bytes]]]:
        """Run a simple query outside any client's traffic; returns the data rows.

        :raises ServerError: the server answered with an error (the connection stays usable)
            or the connection broke.
        """
        send_all(self.sock, frontend.query(sql))
        return self.read_until_ready()

    def read_until_ready(self) -> List[List[Optional[bytes]]]:
        reader = MessageReader()
        rows: List[List[Optional[bytes]]] = []
        error: Optional[Dict[str, str]] = None
        while True:
            kind, payload = read_message(self.sock, reader)
            if kind == Backend.DATA_ROW:
                rows.append(backend.parse_data_row(payload))
            elif kind == Backend.ERROR_RESPONSE:
                error = backend.parse_error_fields(payload)
            elif kind == Backend.PARAMETER_STATUS:
                name, value = backend.parse_parameter_status(payload)
                self.params[name] = value
            elif kind == Backend.READY_FOR_QUERY:
                break
        if error is not None:
            raise ServerError(error.get("M", "server error"),
                              error.get("C") or sqlstate.CONNECTION_FAILURE, "ERROR")
        return rows

    # -- closing ---------------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """Say Terminate (best effort) and close; logs PgBouncer's ``closing because`` line."""
        if self.closed:
            return
        self.closed = True
        if self.pool.limits.config().log_disconnections:
            log.info("%s closing because: %s (age=%ds)", self.prefix, reason, self.age())
        try:
            self.sock.sendall(frontend.terminate())
        except OSError:
            pass  # the server may be gone already; closing is all that is left to do
        if self._read_watch is not None:
            self._read_watch.close()
        self.sock.close()


def connect_server(app: "App", pool: "Pool") -> ServerConnection:
    """Open and log in a new server connection for *pool* (the pool's connector).

    :raises ClientError: connect or login failed; the message says why, for the client.
    """
    database = pool.database
    definition = database.definition
    # No host means a unix socket in unix_socket_dir, which PgBouncer uses for both sides.
    host = database.next_host() or app.config.unix_socket_dir or "/tmp"
    port = definition.port
    timeout = app.config.server_connect_timeout or None
    try:
        with gevent.Timeout(timeout, ServerError("server connect timeout",
                                                 sqlstate.CONNECTION_FAILURE)):
            sock, addr = _open_socket(app, host, port)
            server = ServerConnection(pool, sock, host, addr, port)
            login(app, server, pool)
    except ConnectionLost as exc:
        raise ServerError(f"server connection lost during login: {exc}",
                          sqlstate.CONNECTION_FAILURE) from exc
    except ProtocolError as exc:  # a broken or hostile server: refuse it like a failed login
        raise ServerError(f"server sent a malformed message during login: {exc}",
                          sqlstate.PROTOCOL_VIOLATION) from exc
    except OSError as exc:
        _log_connect_failure(app, pool, host, port, exc)
        raise ServerError(f"could not connect to server: {exc.strerror or exc}",
                          sqlstate.CONNECTION_FAILURE) from exc
    if app.config.log_connections:
        log.info("%s new connection to server (from %s:%s)", server.prefix,
                 server.local_addr, server.local_port)
    _run_connect_query(server, definition.connect_query)
    return server


def _open_socket(app: "App", host: str, port: int) -> Tuple[socket.socket, str]:
    last_error: Optional[OSError] = None
    for family, sockaddr in app.resolver.resolve(host, port):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                app.tune_socket(sock)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        addr = sockaddr[0] if isinstance(sockaddr, tuple) else "unix"
        return sock, addr
    raise last_error or OSError(f"no address for {host}")


def _log_connect_failure(app: "App", pool: "Pool", host: str, port: int, exc: OSError) -> None:
    if app.config.log_pooler_errors:
        log.warning("S-: %s/%s@%s:%s connect failed: %s", pool.database.name, pool.user.name,
                    host, port, exc)


def _run_connect_query(server: ServerConnection, connect_query: Optional[str]) -> None:
    """``connect_query`` runs once per new connection; PgBouncer only logs its errors."""
    if not connect_query:
        return
    try:
        server.run_query(connect_query)
    except ServerError as err:
        log.warning("%s connect_query failed: %s", server.prefix, err.message)
