"""Relaying traffic between a logged-in client and its servers: the hot path.

Bytes are forwarded in the chunks they arrive in (one send per chunk, never per message); only
the 5-byte headers are scanned, to count sync points (Query/Sync) going to the server and
ReadyForQuery coming back.  When every sync point has been answered and the server is idle, the
server is released (transaction and statement modes).  No plugin calls and no per-message
objects here.

With ``max_prepared_statements`` in transaction and statement modes, client chunks also go
through the :mod:`~bouncer.session.prepared` tracker, which rewrites only messages naming a
prepared statement (a chunk without any is sent as it came), and server chunks go through it
only while it has injected or synthetic replies outstanding.

One greenlet serves a client: it waits on the client's and the linked server's sockets at once
(libev watchers), and handles whichever is readable.  Compared with a second "pump" greenlet per
link this saves a greenlet spawn and two switches per transaction, and replies can never
interleave because only this greenlet writes to the client.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Iterator, Optional

from gevent import get_hub
from gevent.hub import Waiter

from bouncer.errors import ClientError, ProtocolError
from bouncer.net.stream import ConnectionLost
from bouncer.proto import sqlstate
from bouncer.proto.constants import TXN_IDLE
from bouncer.proto.scanner import ReplyPosition
from bouncer.proto.scanner import ClientScanner
from bouncer.session.prepared import PreparedTracker
from bouncer.session.statements import is_statement_reset, server_statements
from bouncer.session.varcache import sync_query

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.session.client import ClientSession
    from bouncer.session.server import ServerConnection

log = logging.getLogger(__name__)

CHUNK = 64 * 1024  # below glibc's mmap threshold: a bigger recv buffer costs 3 syscalls
SESSION, TRANSACTION, STATEMENT = "session", "transaction", "statement"
STATEMENT_REFUSAL = "transaction blocks not allowed in statement pooling mode"

# What woke the client's greenlet up.
_CLIENT, _SERVER, _TIMER = 1, 2, 3
_READ = 1  # libev's EV_READ


def serve(client: "ClientSession") -> None:
    """Forward traffic until the client terminates or its connection ends.

    :raises ClientError: the session ends with an error the client is told about.
    """
    client.link = Link(client)
    client.link.run()


def send_chunk(sock, data: bytes) -> None:
    """One ``send``; ``sendall`` only for the rest when the kernel took part of it."""
    sent = sock.send(data)
    if sent != len(data):
        sock.sendall(memoryview(data)[sent:])


def _read(sock) -> bytes:
    """One read of what is there; a broken connection reads as end-of-stream."""
    try:
        return sock.recv(CHUNK)
    except OSError:
        return b""


def _buffered(sock) -> bool:
    """TLS sockets may hold decrypted bytes the fd's readiness does not show."""
    pending = getattr(sock, "pending", None)
    return pending is not None and pending() > 0


class Link:
    """The relay state of one client: its linked server, pending replies and timers."""

    def __init__(self, client: "ClientSession") -> None:
        pool = client.pool
        limits = pool.limits
        self.client = client
        self.pool = pool
        self.stats = pool.database.stats
        self.mode = limits.pool_mode()
        self.releasing = self.mode != SESSION
        self.idle_timeout = limits.client_idle_timeout() or None
        self.idle_xact_timeout = limits.idle_transaction_timeout() or None
        self.query_timeout = limits.query_timeout() or None
        self.hub = get_hub()
        self.client_watch = self.hub.loop.io(client.sock.fileno(), _READ)
        config = client.app.config
        self.scanner = ClientScanner(config.max_packet_size)
        #: Named prepared statements are tracked only where servers change hands.
        self.prepared = (PreparedTracker(config.max_prepared_statements, self.stats,
                                         config.max_packet_size, position_of=_reply_position)
                         if config.max_prepared_statements and self.mode != SESSION else None)
        self.server: Optional["ServerConnection"] = None
        self.pending = 0
        self.query_start = 0.0
        self.xact_start = 0.0

    def run(self) -> None:
        try:
            while True:
                source = self._wait()
                if source == _SERVER:
                    self._from_server()
                elif source == _CLIENT:
                    if not self._from_client():
                        return
                else:
                    raise self._timeout_error()
        finally:
            self.client_watch.close()

    # -- waiting -------------------------------------------------------------------------------

    def _wait(self) -> int:
        server = self.server
        if _buffered(self.client.sock):
            return _CLIENT
        if server is not None and _buffered(server.sock):
            return _SERVER
        waiter = Waiter(self.hub)
        self.client_watch.start(waiter.switch, _CLIENT)
        server_watch = timer = None
        if server is not None:
            server_watch = server.read_watcher()
            server_watch.start(waiter.switch, _SERVER)
        timeout = self._timeout()
        if timeout:
            timer = self.hub.loop.timer(timeout)
            timer.start(waiter.switch, _TIMER)
        try:
            return waiter.get()
        finally:
            self.client_watch.stop()
            if server_watch is not None:
                server_watch.stop()
            if timer is not None:
                timer.close()

    def _timeout(self) -> Optional[float]:
        server = self.server
        if server is None:
            return self.idle_timeout
        if self.pending:
            return self.query_timeout
        if server.scanner.last_status != TXN_IDLE:
            return self.idle_xact_timeout
        return self.idle_timeout  # session mode: linked, but the client is idle

    def _timeout_error(self) -> ClientError:
        server = self.server
        if server is None or (not self.pending and server.scanner.last_status == TXN_IDLE):
            # An idle server stays linked; the session's end gives it back (after the reset).
            return ClientError("client_idle_timeout", sqlstate.ADMIN_SHUTDOWN)
        if self.pending:
            self._drop_server(server, "query timeout")
            return ClientError("query timeout", sqlstate.QUERY_CANCELED)
        self._drop_server(server, "idle transaction timeout")
        return ClientError("idle transaction timeout", sqlstate.IDLE_IN_TRANSACTION_TIMEOUT)

    # -- client -> server ----------------------------------------------------------------------

    def _from_client(self) -> bool:
        """Forward what the client sent; False when the client is done."""
        client = self.client
        data = _read(client.sock)
        if not data:
            client.close_reason = client.close_reason or "client unexpected eof"
            return False
        scanner = self.scanner
        syncs = scanner.feed(data)
        stop = scanner.terminate_at
        if stop is not None:
            data = data[:stop]
        stats = self.stats
        stats.bytes_received += len(data)
        if scanner.parse_count or scanner.bind_count:
            stats.client_parse_count += scanner.parse_count
            stats.bind_count += scanner.bind_count
            scanner.parse_count = scanner.bind_count = 0
        if data:
            self._forward(data, syncs)
        if stop is not None:
            client.close_reason = "client close request"
            return False
        return True

    def _forward(self, data: bytes, syncs: int) -> None:
        server = self.server
        if server is None:
            server = self._link_server()
        if not self.pending:
            now = time.monotonic()
            self.query_start = now
            if not self.xact_start:
                self.xact_start = now
        self.pending += syncs
        if self.prepared is not None:
            data = self._track_request(server, data)
            if not data:
                return
        try:
            send_chunk(server.sock, data)
        except OSError:
            self._server_lost(server)

    def _track_request(self, server: "ServerConnection", data: bytes) -> bytes:
        """Rewrite statement names; answer what needs no server.  Returns what to send."""
        tracker = self.prepared
        try:
            data, replies = tracker.from_client(data)
        except (ProtocolError, ClientError):
            # Earlier chunks of this pipeline may be on the server: it cannot be reused.
            self._drop_server(server, "client sent a bad prepared statement request")
            raise
        if replies:
            self._send_to_client(server, replies)
        if tracker.lost_syncs:
            self._forget_lost_syncs()
        return data

    def _forget_lost_syncs(self) -> None:
        """Sync points the server skipped after an error will never be answered."""
        tracker = self.prepared
        self.pending = max(0, self.pending - tracker.lost_syncs)
        tracker.lost_syncs = 0

    def _link_server(self) -> "ServerConnection":
        client = self.client
        client.request_time = time.time()
        server = self.pool.acquire(client)
        _sync_parameters(client, server)
        client.server = self.server = server
        if self.prepared is not None:
            self.prepared.link(server)
        return server

    # -- server -> client ----------------------------------------------------------------------

    def _from_server(self) -> None:
        server = self.server
        data = _read(server.sock)
        if not data:
            self._server_lost(server)
        scanner = server.scanner
        replies = scanner.feed(data)
        if scanner.param_updates:
            self._apply_param_updates(server)
        if (replies and self.mode == STATEMENT and self.pending <= replies
                and scanner.last_status != TXN_IDLE):
            # PgBouncer drops what the server said (BEGIN's "BEGIN") and sends only the error.
            self._drop_server(server, STATEMENT_REFUSAL)
            raise ClientError(STATEMENT_REFUSAL, sqlstate.FEATURE_NOT_SUPPORTED)
        tracker = self.prepared
        if tracker is not None:
            if tracker.tracked:
                data = tracker.from_server(data)
                if tracker.lost_syncs:
                    self._forget_lost_syncs()
            elif replies:
                tracker.answered(replies)
        if data:
            self._send_to_client(server, data)
        if replies:
            self._count(replies, scanner.last_status)
            if (self.releasing and not self.pending and scanner.last_status == TXN_IDLE
                    and self.scanner.at_sync_point):
                self._release(server)

    def _send_to_client(self, server: "ServerConnection", data: bytes) -> None:
        try:
            send_chunk(self.client.sock, data)
        except OSError as exc:
            self._drop_server(server, "client disconnect while server was not ready")
            raise ConnectionLost(f"client unexpected eof ({exc})") from exc
        self.stats.bytes_sent += len(data)

    def _count(self, replies: int, status: int) -> None:
        now = time.monotonic()
        stats = self.stats
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
        self.unlink_server()
        self.pool.release(server)

    def unlink_server(self) -> None:
        """Forget the linked server (the caller gives it back or closes it)."""
        self.client.server = self.server = None
        if self.prepared is not None:
            self.prepared.unlink()

    # -- failures ------------------------------------------------------------------------------

    def _drop_server(self, server: "ServerConnection", reason: str) -> None:
        self.unlink_server()
        self.pool.close_server(server, reason)

    def _server_lost(self, server: "ServerConnection") -> None:
        """The server went away: close it and end the client's session with PgBouncer's error."""
        log.warning("%s server conn crashed?", self.client.prefix)
        self._drop_server(server, "server conn crashed?")
        raise ClientError("server conn crashed?", sqlstate.CONNECTION_FAILURE)


def _reply_position(server: "ServerConnection") -> ReplyPosition:
    return server.scanner.reply_position()


@contextlib.contextmanager
def _closed_if_interrupted(client: "ClientSession", server: "ServerConnection",
                           reason: str) -> Iterator[None]:
    """A pooler query that does not finish (the greenlet is killed: KILL_CLIENT, an eviction,
    shutdown) leaves its replies unread: cancel it and close the server, so nobody reuses it."""
    finished = False
    try:
        yield
        finished = True
    finally:
        if not finished and not server.closed:
            client.app.cancels.cancel_server(server, client.prefix)
            client.pool.close_server(server, reason)


def _sync_parameters(client: "ClientSession", server: "ServerConnection") -> None:
    """SET the tracked parameters that differ between this client and its new server."""
    query = sync_query(client.vars, server.params)
    if query is None:
        return
    try:
        with _closed_if_interrupted(client, server, "interrupted while setting parameters"):
            server.run_query(query)
    except ClientError as err:
        log.warning("%s could not set parameters on server: %s", client.prefix, err.message)


def fetch_welcome_params(client: "ClientSession") -> None:
    """Log in one server so the pool knows what to tell clients (ParameterStatus)."""
    pool = client.pool
    server = pool.acquire(client)
    if pool.welcome_params is None:
        pool.welcome_params = dict(server.params)
    pool.release(server)


def unlink_on_exit(client: "ClientSession") -> None:
    """The client is leaving: give back (or close) its server."""
    link = client.link
    if link is None or link.server is None:
        return
    server = link.server
    link.unlink_server()
    pool = link.pool
    if link.pending:
        # The backend would run the query to its end before reading our Terminate.
        client.app.cancels.cancel_server(server, client.prefix)
    if (link.pending or server.scanner.last_status != TXN_IDLE
            or not link.scanner.at_sync_point):
        pool.close_server(server, "client disconnect while server was not ready")
    elif link.mode == SESSION or client.app.config.server_reset_query_always:
        _reset_and_release(client, server)
    else:
        pool.release(server)


def _reset_and_release(client: "ClientSession", server: "ServerConnection") -> None:
    reset = client.app.config.server_reset_query
    try:
        if reset:
            with _closed_if_interrupted(client, server, "interrupted in server_reset_query"):
                server.run_query(reset)
    except (ClientError, ConnectionLost) as err:
        client.pool.close_server(server, f"server_reset_query failed: {err}")
        return
    if reset and is_statement_reset(reset):
        server_statements(server).clear()
    client.pool.release(server)
