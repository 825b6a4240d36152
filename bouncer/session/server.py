"""A connection to a PostgreSQL server: connect, log in, run pooler queries, close.

The relay reads and writes ``server.sock`` directly; this module covers everything else a
server connection does outside a client's traffic (PgBouncer's server.c + the login half of
proto.c).
"""
from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

import gevent

from bouncer.errors import ClientError, ProtocolError
from bouncer.net.stream import ConnectionLost, raw_socket, read_message, send_all
from bouncer.proto import backend, frontend, sqlstate
from bouncer.proto.constants import Backend
from bouncer.proto.server_engine import ServerEngine
from bouncer.session import next_socket_id
from bouncer.session.server_login import ServerLoginError, login

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.pool.pool import Pool

log = logging.getLogger(__name__)

_READ = 1  # libev's EV_READ


class ServerError(ClientError):
    """A server connection failed or misbehaved; the message is for the client."""


class ServerConnection:
    """One logged-in server connection, owned by a pool."""

    def __init__(self, pool: "Pool", sock: socket.socket, host: str, addr: str,
                 port: int) -> None:
        self.pool = pool
        self.id = next_socket_id()
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
        #: Cancel requests sent for this connection that PostgreSQL has not acted on yet.
        self.cancels_in_flight = 0
        #: Opened for one client (replication), never shared, closed when that client leaves.
        self.dedicated = False
        config = pool.limits.config()
        self.engine = ServerEngine(config.max_packet_size,
                                   track_statements=config.max_prepared_statements > 0)
        self.tls = ""
        #: Called (from the hub) when the linked client's relay must read this server.
        self.wake: Optional[Callable[[], None]] = None
        #: Watches the socket for as long as the connection is pooled: it wakes the linked
        #: client's relay, and notices an idle server that closed or spoke out of turn.
        self.watch: Any = None
        #: The OS socket under a plain connection (None with TLS), for the relay.
        self.raw: Any = None
        #: The server's first authentication request at login (an AuthCode; OK means it asked
        #: for nothing), or None before one came: ``bouncer --check --connect`` reports it.
        self.auth_request: Optional[int] = None
        local = sock.getsockname()
        self.local_addr: str
        self.local_port: int
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

    def arm(self) -> None:
        """Start watching the socket: the connection is logged in and goes into the pool."""
        self.raw = raw_socket(self.sock)
        self.watch = gevent.get_hub().loop.io(self.sock.fileno(), _READ)
        self.watch.start(self.readable)

    def readable(self) -> None:
        """The socket is readable (called from the hub's loop)."""
        wake = self.wake
        if wake is not None:
            wake()
            return
        # Idle: PostgreSQL says nothing unasked but a FATAL before it goes away.
        self.watch.stop()
        gevent.spawn(self._close_if_still_idle)

    def _close_if_still_idle(self) -> None:
        # Not if it was taken meanwhile, or if bouncer reads it itself (a check query, an
        # auth_query connection): the reader sees what came.
        if not self.closed and self.wake is None and self in self.pool.idle:
            log.warning("%s server conn crashed?", self.prefix)
            self.pool.close_server(self, "server conn crashed?")

    @contextlib.contextmanager
    def reading_itself(self) -> Iterator[None]:
        """While bouncer reads the server's replies itself, the pool's watch stays quiet."""
        watch = self.watch
        if watch is not None:
            watch.stop()
        try:
            yield
        finally:
            if watch is not None and not self.closed:
                watch.start(self.readable)

    # -- pooler queries --------------------------------------------------------------------------

    def run_query(self, sql: str) -> List[List[Optional[bytes]]]:
        """Run a simple query outside any client's traffic; returns the data rows.

        :raises ServerError: the server answered with an error (the connection stays usable)
            or the connection broke.
        """
        send_all(self.sock, frontend.query(sql))
        return self.read_until_ready()

    def read_until_ready(self) -> List[List[Optional[bytes]]]:
        """Read replies up to ReadyForQuery; returns the data rows.

        :raises ServerError: the server answered with an error.
        """
        with self.reading_itself():
            return self._read_rows()

    def _read_rows(self) -> List[List[Optional[bytes]]]:
        rows: List[List[Optional[bytes]]] = []
        error: Optional[Dict[str, str]] = None
        while True:
            kind, payload = read_message(self.sock, self.engine)
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
        if self.watch is not None:
            self.watch.close()
        self.engine.pipeline.clear()
        self.sock.close()


def connect_server(app: "App", pool: "Pool",
                   on_connected: Optional[Callable[[ServerConnection], None]] = None,
                   startup_params: Optional[Dict[str, str]] = None) -> ServerConnection:
    """Open and log in a new server connection for *pool* (the pool's connector).

    :param on_connected: called with the connection once its socket is open, before the login
        (``bouncer --check --connect`` keeps it to report TLS and the auth request even when
        the login then fails).
    :param startup_params: more startup parameters (a replication client's own).
    :raises ClientError: connect or login failed; the message says why, for the client.
    """
    database = pool.database
    definition = database.definition
    # No host means a unix socket in unix_socket_dir, which PgBouncer uses for both sides.
    host = database.next_host() or app.config.unix_socket_dir or "/tmp"
    port = definition.port
    timeout = app.config.server_connect_timeout or None
    target = f"{host}:{port} (database {database.name})"
    try:
        with gevent.Timeout(timeout, ServerError(
                "server connect timeout", sqlstate.CONNECTION_FAILURE,
                detail=f"{target} did not complete the login within server_connect_timeout "
                       f"({app.config.server_connect_timeout:g} s)", hint=_CONNECT_HINT)):
            sock, addr = _open_socket(app, host, port)
            logged_in = False
            try:
                server = ServerConnection(pool, sock, host, addr, port)
                if on_connected is not None:
                    on_connected(server)
                try:
                    login(app, server, pool, startup_params)
                except ServerLoginError as err:
                    # PgBouncer's closing line for the refused server, in the server's words.
                    server.close(err.message)
                    raise
                logged_in = True
            finally:
                if not logged_in:  # a refused or broken login: nothing else will close it
                    sock.close()
    except ConnectionLost as exc:
        raise ServerError(f"server connection lost during login: {exc}",
                          sqlstate.CONNECTION_FAILURE) from exc
    except ProtocolError as exc:
        # A broken or hostile server answered: that is a refused login, and the clients
        # waiting for it get the error now rather than after query_wait_timeout.
        raise ServerLoginError(f"server sent a malformed message during login: {exc}",
                               sqlstate.PROTOCOL_VIOLATION) from exc
    except OSError as exc:
        _log_connect_failure(app, pool, host, port, exc)
        raise ServerError(f"could not connect to server: {exc.strerror or exc}",
                          sqlstate.CONNECTION_FAILURE, detail=f"bouncer tried {target}",
                          hint=_CONNECT_HINT) from exc
    if app.config.log_connections:
        log.info("%s new connection to server (from %s:%s)", server.prefix,
                 server.local_addr, server.local_port)
    _run_connect_query(server, definition.connect_query)
    server.arm()
    return server


_CONNECT_HINT = ("check that the server runs and accepts connections there, and the host= and "
                 "port= of the database's line; SHOW CHECKS on the admin console and "
                 "bouncer --check --connect show every database's state")


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
    # PgBouncer logs a failed connect as a closed server ("closing because: connect failed"):
    # log_disconnections decides; log_pooler_errors is for the errors sent to clients.
    if app.config.log_disconnections:
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
