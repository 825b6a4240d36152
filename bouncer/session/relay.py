"""Relaying traffic between a logged-in client and its servers: the hot path.

Bytes are forwarded in the chunks they arrive in (one send per chunk, never per message); only
the 5-byte headers are scanned, to count sync points (Query/Sync) going to the server and
ReadyForQuery coming back.  When every sync point has been answered and the server is idle, the
server is released (transaction mode), or the client must have left a transaction (statement
mode).  No plugin calls and no per-message objects here.

Two greenlets serve a linked client: the client's own reads client->server, and a *pump*
reads server->client.  Only the pump writes to the client while a server is linked, so replies
never interleave; it releases the server only after its last write, so the next server's pump
cannot overtake it.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Optional

import gevent

from bouncer.errors import ClientError
from bouncer.net.stream import ConnectionLost
from bouncer.proto import sqlstate
from bouncer.proto.constants import TXN_IDLE
from bouncer.proto.scanner import ClientScanner
from bouncer.session.varcache import sync_query

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.session.client import ClientSession
    from bouncer.session.server import ServerConnection

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
SESSION, TRANSACTION, STATEMENT = "session", "transaction", "statement"


class ClientGone(Exception):
    """Raised in the pump when the client side broke: the client greenlet cleans up."""


def serve(client: "ClientSession") -> None:
    """Forward client traffic until the client terminates or the connection ends."""
    sock = client.sock
    pool = client.pool
    stats = pool.database.stats
    scanner = ClientScanner()
    client.link = Link(client)
    idle_timeout = pool.limits.client_idle_timeout() or None
    while True:
        sock.settimeout(client.link.read_timeout(idle_timeout))
        try:
            data = sock.recv(CHUNK)
        except socket.timeout:
            raise client.link.timeout_error() from None
        except OSError as exc:
            raise ConnectionLost(str(exc)) from exc
        if not data:
            client.close_reason = client.close_reason or "client unexpected eof"
            return
        syncs = scanner.feed(data)
        stop = scanner.terminate_at
        if stop is not None:
            data = data[:stop]
        stats.bytes_received += len(data)
        stats.client_parse_count += scanner.parse_count
        stats.bind_count += scanner.bind_count
        scanner.parse_count = scanner.bind_count = 0
        if data:
            client.link.forward(data, syncs)
        if stop is not None:
            client.close_reason = "client close request"
            return


class Link:
    """The relay state of one client: its linked server, pending replies and timers."""

    def __init__(self, client: "ClientSession") -> None:
        self.client = client
        self.pool = client.pool
        self.mode = self.pool.limits.pool_mode()
        self.server: Optional["ServerConnection"] = None
        self.pump: Optional[gevent.Greenlet] = None
        self.pending = 0
        self.query_start = 0.0
        self.xact_start = 0.0
        self.error: Optional[ClientError] = None

    # -- client -> server ----------------------------------------------------------------------

    def read_timeout(self, idle_timeout: Optional[float]) -> Optional[float]:
        """How long the client may stay silent: idle_transaction_timeout inside a transaction."""
        server = self.server
        if server is not None and self.pending == 0 and server.scanner.last_status != TXN_IDLE:
            return self.pool.limits.idle_transaction_timeout() or None
        return idle_timeout if server is None else None

    def timeout_error(self) -> ClientError:
        if self.server is not None:
            return ClientError("idle transaction timeout", sqlstate.IDLE_IN_TRANSACTION_TIMEOUT)
        return ClientError("client_idle_timeout", sqlstate.ADMIN_SHUTDOWN)

    def forward(self, data: bytes, syncs: int) -> None:
        server = self.server
        if server is None:
            server = self._link_server()
        if self.pending == 0:
            now = time.monotonic()
            self.query_start = now
            if not self.xact_start:
                self.xact_start = now
        self.pending += syncs
        try:
            server.sock.sendall(data)
        except OSError:
            self._server_lost(server)

    def _link_server(self) -> "ServerConnection":
        if self.error is not None:
            raise self.error
        client = self.client
        client.request_time = time.time()
        server = self.pool.acquire(client, self.pool.limits.query_wait_timeout())
        client.server = self.server = server
        _sync_parameters(client, server)
        self.pump = gevent.spawn(self._pump, server)
        return server

    # -- server -> client ----------------------------------------------------------------------

    def _pump(self, server: "ServerConnection") -> None:
        client_sock = self.client.sock
        server_sock = server.sock
        scanner = server.scanner
        stats = self.pool.database.stats
        query_timeout = self.pool.limits.query_timeout() or None
        releasing = self.mode != SESSION
        while True:
            if query_timeout:
                server_sock.settimeout(query_timeout if self.pending else None)
            try:
                data = server_sock.recv(CHUNK)
            except socket.timeout:
                return self._query_timeout(server)
            except OSError:
                data = b""
            if not data:
                return self._server_lost(server)
            replies = scanner.feed(data)
            if scanner.param_updates:
                self._apply_param_updates(server)
            try:
                client_sock.sendall(data)
            except OSError:
                return self._client_gone(server)
            stats.bytes_sent += len(data)
            if replies:
                self._count(replies, scanner.last_status, stats)
                if releasing and self.pending == 0:
                    if scanner.last_status == TXN_IDLE:
                        return self._release(server)
                    if self.mode == STATEMENT:
                        return self._fail(server, ClientError(
                            "transaction blocks not allowed in statement pooling mode",
                            sqlstate.FEATURE_NOT_SUPPORTED))

    def _count(self, replies: int, status: int, stats) -> None:
        now = time.monotonic()
        self.pending = max(0, self.pending - replies)
        stats.query_count += replies
        stats.query_time += int((now - self.query_start) * 1e6)
        self.query_start = now
        if status == TXN_IDLE and self.xact_start:
            stats.xact_count += 1
            stats.xact_time += int((now - self.xact_start) * 1e6)
            self.xact_start = 0.0

    def _apply_param_updates(self, server: "ServerConnection") -> None:
        """A SET of a tracked parameter: the client now expects it on every server."""
        for name, value in server.scanner.param_updates:
            server.params[name] = value
            if name in self.client.vars:
                self.client.vars[name] = value
        server.scanner.param_updates.clear()

    def _release(self, server: "ServerConnection") -> None:
        self.client.server = self.server = None
        self.pump = None
        self.pool.release(server)

    # -- failures ------------------------------------------------------------------------------

    def _server_lost(self, server: "ServerConnection") -> None:
        if self.server is not server:
            return
        log.warning("%s server conn crashed?", self.client.prefix)
        self._fail(server, ClientError("server conn crashed?", sqlstate.CONNECTION_FAILURE))

    def _query_timeout(self, server: "ServerConnection") -> None:
        self._fail(server, ClientError("query timeout", sqlstate.QUERY_CANCELED))

    def _client_gone(self, server: "ServerConnection") -> None:
        self.pool.close_server(server, "client disconnect while server was not ready")
        self.client.server = self.server = None
        self._wake_client("client unexpected eof")

    def _fail(self, server: "ServerConnection", err: ClientError) -> None:
        """Tell the client, close the server, and end the client's session (once)."""
        if self.server is not server:
            return  # the other greenlet already handled this server's end
        self.client.server = self.server = None
        pump, self.pump = self.pump, None
        if pump is not None and pump is not gevent.getcurrent():
            pump.kill(block=True)
        self.pool.close_server(server, err.message)
        self.error = err
        self.client.fail(err)
        self._wake_client(err.message)

    def _wake_client(self, reason: str) -> None:
        """Make the client greenlet's blocked recv return, so it ends the session."""
        self.client.close_reason = self.client.close_reason or reason
        try:
            self.client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already disconnected


def _sync_parameters(client: "ClientSession", server: "ServerConnection") -> None:
    """SET the tracked parameters that differ between this client and its new server."""
    query = sync_query(client.vars, server.params)
    if query is None:
        return
    try:
        server.run_query(query)
    except ClientError as err:
        log.warning("%s could not set parameters on server: %s", client.prefix, err.message)


def fetch_welcome_params(client: "ClientSession") -> None:
    """Log in one server so the pool knows what to tell clients (ParameterStatus)."""
    pool = client.pool
    server = pool.acquire(client, pool.limits.query_wait_timeout())
    if pool.welcome_params is None:
        pool.welcome_params = dict(server.params)
    pool.release(server)


def unlink_on_exit(client: "ClientSession") -> None:
    """The client is leaving: stop its pump and give back (or close) its server."""
    link = client.link
    if link is None:
        return
    server = link.server
    if link.pump is not None and link.pump is not gevent.getcurrent():
        link.pump.kill(block=True)
    link.server = client.server = None
    if server is None:
        return
    pool = link.pool
    if link.pending or server.scanner.last_status != TXN_IDLE:
        pool.close_server(server, "client disconnect while server was not ready")
    elif link.mode == SESSION or client.app.config.server_reset_query_always:
        _reset_and_release(client, server)
    else:
        pool.release(server)


def _reset_and_release(client: "ClientSession", server: "ServerConnection") -> None:
    reset = client.app.config.server_reset_query
    try:
        if reset:
            server.run_query(reset)
    except (ClientError, ConnectionLost) as err:
        client.pool.close_server(server, f"server_reset_query failed: {err}")
        return
    client.pool.release(server)
