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
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple, Type

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


def server_prefix(ident: int, pool: "Pool", addr: str, port: int) -> str:
    """``S-0x...: db/user@addr:port`` for log lines, as PgBouncer prints it."""
    host = f"[{addr}]" if ":" in addr else addr
    return f"S-{ident:#x}: {pool.database.name}/{pool.user.name}@{host}:{port}"


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
        #: Counted by the supervisor's slots (workers): the pool returns the slot on close.
        self.holds_slot = False
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
        return server_prefix(id(self), self.pool, self.addr, self.port)

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

    The hosts of a comma list are tried in the order the database gives; one that does not
    resolve or take the connection gives way to the next at once (PgBouncer waits for
    server_login_retry first, keeping clients waiting although another host could serve).

    :param on_connected: called with the connection once its socket is open, before the login
        (``bouncer --check --connect`` keeps it to report TLS and the auth request even when
        the login then fails).
    :param startup_params: more startup parameters (a replication client's own).
    :raises ClientError: connect or login failed; the message says why, for the client.
    """
    # No host means a unix socket in unix_socket_dir, which PgBouncer uses for both sides.
    *others, last = pool.database.hosts_in_order() or [app.config.unix_socket_dir or "/tmp"]
    for host in others:
        try:
            return _connect_host(app, pool, host, on_connected, startup_params)
        except _Unreachable:
            pass  # logged; the next host is tried
    return _connect_host(app, pool, last, on_connected, startup_params)


class _Unreachable(ServerError):
    """The host did not resolve or did not take the connection: no server was talked to."""


def _connect_host(app: "App", pool: "Pool", host: str,
                  on_connected: Optional[Callable[[ServerConnection], None]],
                  startup_params: Optional[Dict[str, str]]) -> ServerConnection:
    try:
        server = _open_and_log_in(app, pool, host, on_connected, startup_params)
    except ClientError:
        pool.database.host_failed(host)  # load_balance_hosts=disable moves on only now
        raise
    if app.config.log_connections:
        log.info("%s new connection to server (from %s:%s)", server.prefix,
                 server.local_addr, server.local_port)
    _run_connect_query(server, pool.database.definition.connect_query)
    server.arm()
    return server


def _open_and_log_in(app: "App", pool: "Pool", host: str,
                     on_connected: Optional[Callable[[ServerConnection], None]],
                     startup_params: Optional[Dict[str, str]]) -> ServerConnection:
    """Connect and log in, both within server_connect_timeout."""
    port = pool.database.definition.port
    # Our own Timeout instance, so that a timeout of the caller's is not taken for ours.
    timer = gevent.Timeout(app.config.server_connect_timeout or None)
    timer.start()
    try:
        sock, addr = _reach(app, pool, host, port, timer)
        server = ServerConnection(pool, sock, host, addr, port)
        _log_in(app, server, on_connected, startup_params, timer)
        return server
    finally:
        timer.close()


def _reach(app: "App", pool: "Pool", host: str, port: int,
           timer: gevent.Timeout) -> Tuple[socket.socket, str]:
    """Open the socket.  A failure is logged as PgBouncer logs it, as a server closing."""
    attempt = _Attempt()
    try:
        return _open_socket(app, host, port)
    except socket.gaierror as exc:
        reason = f"server DNS lookup failed: {_why(exc)}"
        error = _connect_error(_Unreachable, pool, host, port, exc)
    except OSError as exc:
        reason = f"connect failed: {_why(exc)}"
        error = _connect_error(_Unreachable, pool, host, port, exc)
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        reason = "connect failed: timed out"
        error = _timeout_error(_Unreachable, app, pool, host, port)
    if app.config.log_disconnections:
        log.info("%s closing because: %s (age=%ds)", server_prefix(id(attempt), pool, host, port),
                 reason, attempt.age())
    raise error


def _log_in(app: "App", server: ServerConnection,
            on_connected: Optional[Callable[[ServerConnection], None]],
            startup_params: Optional[Dict[str, str]], timer: gevent.Timeout) -> None:
    logged_in = False
    try:
        if on_connected is not None:
            on_connected(server)
        login(app, server, server.pool, startup_params)
        logged_in = True
    except ServerLoginError as err:
        server.close(err.message)  # PgBouncer's closing line, in the server's words
        raise
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        # Connected but not logged in in time: a network-type failure (clients wait on
        # while bouncer retries), closed with the line of PgBouncer's janitor.
        server.close("connect timeout")
        raise _timeout_error(ServerError, app, server.pool, server.host, server.port) from None
    except ConnectionLost as exc:
        raise ServerError(f"server connection lost during login: {exc}",
                          sqlstate.CONNECTION_FAILURE) from exc
    except ProtocolError as exc:
        # A broken or hostile server answered: that is a refused login, and the clients
        # waiting for it get the error now rather than after query_wait_timeout.
        raise ServerLoginError(f"server sent a malformed message during login: {exc}",
                               sqlstate.PROTOCOL_VIOLATION) from exc
    except OSError as exc:  # a broken connection, or TLS refused
        server.close(f"connect failed: {_why(exc)}")
        raise _connect_error(ServerError, server.pool, server.host, server.port, exc) from exc
    finally:
        if not logged_in:  # nothing else will close it
            server.sock.close()


class _Attempt:
    """Stands for the server object PgBouncer has before the socket connects: its id is the
    pointer of the log line, as PgBouncer logs a failed connect as a server closing."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.started


def _target(pool: "Pool", host: str, port: int) -> str:
    return f"{host}:{port} (database {pool.database.name})"


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _connect_error(cls: Type[ServerError], pool: "Pool", host: str, port: int,
                   exc: OSError) -> ServerError:
    return cls(f"could not connect to server: {_why(exc)}", sqlstate.CONNECTION_FAILURE,
               detail=f"bouncer tried {_target(pool, host, port)}", hint=_CONNECT_HINT)


def _timeout_error(cls: Type[ServerError], app: "App", pool: "Pool", host: str,
                   port: int) -> ServerError:
    return cls("server connect timeout", sqlstate.CONNECTION_FAILURE,
               detail=f"{_target(pool, host, port)} did not complete the login within "
                      f"server_connect_timeout ({app.config.server_connect_timeout:g} s)",
               hint=_CONNECT_HINT)


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
        except BaseException:  # the connect timeout: nothing else will close the socket
            sock.close()
            raise
        addr = sockaddr[0] if isinstance(sockaddr, tuple) else "unix"
        return sock, addr
    raise last_error or OSError(f"no address for {host}")


def _run_connect_query(server: ServerConnection, connect_query: Optional[str]) -> None:
    """``connect_query`` runs once per new connection; PgBouncer only logs its errors."""
    if not connect_query:
        return
    try:
        server.run_query(connect_query)
    except ServerError as err:
        log.warning("%s connect_query failed: %s", server.prefix, err.message)
