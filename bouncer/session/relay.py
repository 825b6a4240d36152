"""Relaying traffic between a logged-in client and its servers: the hot path.

The relay only moves bytes; the protocol engines decide (:mod:`bouncer.proto.client_engine`
and :mod:`bouncer.proto.server_engine`): what to forward, what the server still owes, when the
server can go back to the pool.  A server is released (transaction and statement modes) when
nothing is owed, its last ReadyForQuery said idle, and neither side stands inside a message.

One greenlet serves a client.  It waits on the client's socket and on its server's at once:
both have a libev watcher that stays started, whose callback switches to this greenlet when it
waits (and stops the watcher when it does not, say while a send blocks), so a transaction
costs no watcher setup, no waiter object and no syscall beyond one read and one write each
way.  Reads go into one buffer shared by all clients, consumed before the greenlet can yield;
a send that cannot finish at once copies what is left first.  Only this greenlet writes to
its client, so replies never interleave.  No plugin calls and no per-message objects here.

A client that waits idle, with no server linked, has no greenlet: a greenlet blocked in a wait
holds about 7 KiB (its slice of the C stack and a page of Python frames), twice what the rest
of an idle client costs (bench/README.md, "Memory per idle client"). Its watcher (or timer)
wakes it in a spare greenlet (:mod:`bouncer.net.greenlets`), which goes back to the spares
when the client sleeps again, so the wakeup costs one switch, as before.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, NoReturn, Optional, cast

from gevent import get_hub, getcurrent

from bouncer.errors import ClientError
from bouncer.net.greenlets import spare_greenlet
from bouncer.net.stream import ConnectionLost, raw_socket, send_through
from bouncer.proto import sqlstate
from bouncer.proto.client_engine import NEED_SERVER
from bouncer.proto.constants import TXN_IDLE
from bouncer.proto.prepared import PreparedStatements
from bouncer.session.varcache import described, differing, settle, sync_query

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.pool.pool import Pool
    from bouncer.session.client import ClientSession
    from bouncer.session.server import ServerConnection

log = logging.getLogger(__name__)

SESSION, TRANSACTION, STATEMENT = "session", "transaction", "statement"
STATEMENT_REFUSAL = "transaction blocks not allowed in statement pooling mode"

# One read buffer for every relay of this process, of pkt_buf bytes (PgBouncer's buffer size
# and so its largest read): a chunk is consumed (walked and sent) before its greenlet can
# yield, and what must outlive that is copied.
_buffer = bytearray(0)
_view = memoryview(_buffer)

# What woke the client's greenlet up (_ASLEEP: nothing, it sleeps without a greenlet now;
# _THROWN: Link.throw() has an exception for it).
_CLIENT, _SERVER, _TIMER, _ASLEEP, _THROWN = 1, 2, 3, 4, 5
_READ = 1  # libev's EV_READ


def serve(client: "ClientSession") -> bool:
    """Forward traffic until the client terminates, its connection ends or it sleeps.

    :returns: True when the client sleeps (waits idle without a greenlet; the relay serves it
        again in another one), False when the session is over.
    :raises ClientError: the session ends with an error the client is told about.
    """
    client.link = Link(client)
    return client.link.run()


def _size_buffer(size: int) -> None:
    """Make the shared read buffer *size* bytes (pkt_buf cannot change while running)."""
    global _buffer, _view
    if len(_buffer) != size:
        _buffer = bytearray(size)
        _view = memoryview(_buffer)


def _read(sock: Any, raw: Any) -> Optional[Any]:
    """What is there to read, at most pkt_buf bytes: a view of the shared buffer (empty at end
    of stream), or None when the wakeup was spurious."""
    if raw is None:
        try:
            return sock.recv(len(_buffer))
        except OSError:
            return b""
    try:
        return _view[:raw.recv_into(_buffer)]
    except BlockingIOError:
        return None
    except OSError:
        return b""


class Link:
    """The relay state of one client: its linked server, timers and what wakes it."""

    # One per client, read at every wakeup: slots are smaller and quicker to read.
    __slots__ = ("client", "pool", "stats", "mode", "releasing", "engine", "timeouts", "_timed",
                 "_timers", "server", "hub", "greenlet", "_thrown", "closed", "client_raw",
                 "client_watch", "_waiting", "parked", "_on_client", "_on_server",
                 "client_at_boundary", "query_start", "xact_start", "loops")

    def __init__(self, client: "ClientSession") -> None:
        pool = cast("Pool", client.pool)  # a logged-in client has one
        limits = pool.limits
        config = client.app.config
        self.client = client
        self.pool = pool
        self.stats = pool.database.stats
        # A replication client's server is its own for the whole session.
        self.mode = limits.pool_mode() if not client.server else SESSION
        self.releasing = self.mode != SESSION
        self.engine = client.engine
        #: Named prepared statements are tracked only where servers change hands.
        if self.mode != SESSION:
            app = client.app
            self.engine.prepared = PreparedStatements(
                lambda: app.config.max_prepared_statements, self.stats)
        self.engine.disable_pqexec = config.disable_pqexec
        _size_buffer(config.pkt_buf)
        #: sbuf_loopcnt: full reads of one socket in a row before the others are served.
        self.loops = range(config.sbuf_loopcnt or sys.maxsize)
        self.engine.start_relay()
        self.timeouts = {"idle": limits.client_idle_timeout(),
                         "query": limits.query_timeout(),
                         "idle_transaction": limits.idle_transaction_timeout(),
                         "transaction": limits.transaction_timeout()}
        self._timed = any(self.timeouts.values())
        self._timers: Dict[float, Any] = {}
        self.server: Optional["ServerConnection"] = None
        self.hub = get_hub()
        #: The greenlet serving the client (None while it sleeps).
        self.greenlet: Any = getcurrent()
        #: What throw() raises in that greenlet where it waits next.
        self._thrown: Optional[BaseException] = None
        self.closed = False
        self.client_raw = raw_socket(client.sock)
        self.client_watch = self.hub.loop.io(client.sock.fileno(), _READ)
        self._waiting = False
        #: Listed in SHOW FDS for a new process: nothing more is read or written here.
        self.parked = False
        # Bound once: the watchers call them at every wakeup.
        self._on_client: Optional[Callable[[], None]] = self._client_ready
        self._on_server: Optional[Callable[[], None]] = self.server_ready
        #: The client stands between two messages of ours (an error may be sent).
        self.client_at_boundary = True
        self.query_start = 0.0
        self.xact_start = 0.0
        if client.server is not None:  # opened at login (replication)
            self._link(client.server)

    def run(self) -> bool:
        """Relay from login on: True when the client sleeps, False when it is done."""
        if self.engine.buffered:  # sent with the last login message
            if not self._client_bytes(b""):
                return False
        return self._relay(self._wait())

    def resume(self, source: int) -> bool:
        """Go on in the greenlet that woke the client up (as run())."""
        self._waiting = False
        for timer in self._timers.values():
            timer.stop()
        return self._relay(source)

    def _relay(self, source: int) -> bool:
        while source != _ASLEEP:
            if source == _SERVER:
                self._from_server()
            elif source == _CLIENT:
                if not self._from_client():
                    return False
            elif source == _TIMER:
                raise self._timeout_error()
            else:
                raise cast(BaseException, self._thrown)
            source = self._wait()
        return True

    def close(self) -> None:
        """The session is over: its watcher and timers go, and throw() does nothing more.

        The references that make the client, its Link and the bound callbacks a cycle go
        too: reference counting frees a session at once then, where the cycle collector
        ran every few dozen logins of a connection storm to find each one."""
        self.closed = True
        self.client_watch.close()
        for timer in self._timers.values():
            timer.close()
        self._on_client = self._on_server = None
        self.client.link = None

    # -- waiting -------------------------------------------------------------------------------

    def _wait(self) -> int:
        """Wait for what wakes the client's greenlet up, or sleep (_ASLEEP) when idle."""
        server = self.server
        if self.client_raw is None and self.client.sock.pending():
            return _CLIENT  # TLS: decrypted bytes the fd's readiness does not show
        if server is not None:
            if server.raw is None and _tls_pending(server.sock):
                return _SERVER
            if not server.watch.active:
                server.watch.start(self._on_server)
        if not self.client_watch.active:
            self.client_watch.start(self._on_client)
        timer = self._timer() if self._timed else None
        if timer is not None:
            timer.again(self._timer_fired)  # (a stopped timer's start() keeps its old deadline)
        self._waiting = True
        if server is None and self._thrown is None:
            # Idle: the greenlet ends (see the module's docstring); resume() goes on.
            self.client.greenlet = self.greenlet = None
            return _ASLEEP
        try:
            return self.hub.switch()
        finally:
            self._waiting = False
            if timer is not None:
                timer.stop()

    def parked_idle(self) -> bool:
        """Waiting for the client's next message, no server linked (a handover may take it)."""
        return self._waiting and self.server is None

    def park(self) -> None:
        """Read nothing more from the client: every wakeup is ignored from now, until its
        greenlet is killed (the client was handed over to a new process) or unparked."""
        self.parked = True
        self._waiting = False
        self.client_watch.stop()

    def unpark(self) -> None:
        """Serve the client again (the online restart that parked it did not happen)."""
        self.parked = False
        self._waiting = True
        self.client_watch.start(self._on_client)

    def _client_ready(self) -> None:
        if self._waiting:
            self._switch(_CLIENT)
        else:  # busy (a send or a pooler query waits): look again when waiting
            self.client_watch.stop()

    def server_ready(self) -> None:
        """The linked server's socket is readable (its watch calls this from the hub)."""
        if self._waiting:
            self.greenlet.switch(_SERVER)
        else:  # (only a linked server's watch calls this)
            cast("ServerConnection", self.server).watch.stop()

    def _timer_fired(self) -> None:
        if self._waiting:
            self._switch(_TIMER)

    def _switch(self, source: int) -> None:
        """From the hub: to the greenlet that waits, or a spare one when the client sleeps."""
        greenlet = self.greenlet
        if greenlet is None:
            greenlet = spare_greenlet()
            self.client.greenlet = self.greenlet = greenlet
            greenlet.switch(self.client.run_woken, (self.resume, source))
        else:
            greenlet.switch(source)

    def throw(self, exc: BaseException) -> None:
        """Raise *exc* in the client's greenlet where it waits (KILL, a timeout, shutdown, a
        handover), as ``kill(block=False)`` does; a sleeping client is woken for it."""
        self._thrown = exc  # (and it does not go to sleep before)
        self.hub.loop.run_callback(self._deliver)

    def _deliver(self) -> None:
        """Decided in the hub, when the exception is due: which greenlet serves the client
        then is known only now."""
        if self.closed:
            return
        greenlet = self.greenlet
        if greenlet is None:
            self._switch(_THROWN)
        else:
            greenlet.throw(self._thrown)

    def _timer(self) -> Optional[Any]:
        """The timer of the timeout that applies now, if one is set."""
        seconds = self.timeouts[self._timeout_kind()]
        left = self._transaction_left()
        if left is not None and (not seconds or left < seconds):
            # The transaction's own deadline comes first: a timer of its own, made only when
            # transaction_timeout is set and a transaction is open.
            return self.hub.loop.timer(left, left)
        if not seconds:
            return None
        timer = self._timers.get(seconds)
        if timer is None:
            timer = self._timers[seconds] = self.hub.loop.timer(seconds, seconds)
        return timer

    def _transaction_left(self) -> Optional[float]:
        """Seconds until transaction_timeout ends the open transaction (None: no limit)."""
        limit = self.timeouts["transaction"]
        if not limit or not self.xact_start or self.server is None:
            return None
        return max(0.001, limit - (time.monotonic() - self.xact_start))

    def _timeout_kind(self) -> str:
        server = self.server
        if server is None:
            return "idle"
        if len(server.engine.pipeline):
            return "query"
        if server.engine.status != TXN_IDLE:
            return "idle_transaction"
        return "idle"  # session mode: linked, but the client is idle

    def _timeout_error(self) -> ClientError:
        kind = self._timeout_kind()
        # Every kind but "idle" implies a linked server, and so does an open transaction.
        server = cast("ServerConnection", self.server)
        limit = self.timeouts["transaction"]
        if limit and self.xact_start and time.monotonic() - self.xact_start >= limit:
            self._drop_server(server, "transaction timeout")
            return ClientError("transaction timeout", sqlstate.PROTOCOL_VIOLATION)  # PgBouncer's
        if kind == "idle":
            # An idle server stays linked; the session's end gives it back (after the reset).
            return ClientError("client_idle_timeout", sqlstate.ADMIN_SHUTDOWN)
        if kind == "query":
            self._drop_server(server, "query timeout")
            return ClientError("query timeout", sqlstate.QUERY_CANCELED)
        self._drop_server(server, "idle transaction timeout")
        # PgBouncer's SQLSTATE, not PostgreSQL's 25P03: drivers raise the same exception class.
        return ClientError("idle transaction timeout", sqlstate.PROTOCOL_VIOLATION)

    # -- client -> server ----------------------------------------------------------------------

    def _from_client(self) -> bool:
        """Forward what the client sent; False when the client is done."""
        for _ in self.loops:
            data = _read(self.client.sock, self.client_raw)
            if data is None:
                return True
            if not data:
                self.client.close_reason = self.client.close_reason or "client unexpected eof"
                return False
            self.stats.bytes_received += len(data)
            if not self._client_bytes(data):
                return False
            if not self._more_waiting(data, self.client_raw):
                return True
        return True

    @staticmethod
    def _more_waiting(data: Any, raw: Any) -> bool:
        """A read that filled the buffer likely left more behind: read again before waiting
        (not through TLS, whose recv would block rather than say there is nothing)."""
        return raw is not None and len(data) == len(_buffer)

    def _client_bytes(self, data: Any) -> bool:
        engine = self.engine
        server = self.server
        idle_before = server is None or not server.engine.pipeline.queue
        out = engine.receive(data)
        if out is NEED_SERVER:
            self._link_server()
            out = engine.receive_pending()
        if out:
            if idle_before:
                self._start_clock()
            self._to_server(out)
        prepared = engine.prepared
        if prepared is not None and prepared.replies:
            replies = b"".join(prepared.replies)
            prepared.replies.clear()
            self._to_client(replies)
        if engine.terminated:
            self.client.close_reason = "client close request"
            return False
        server = self.server
        if server is not None and not server.engine.pipeline.queue:
            self._release_if_done()  # nothing to answer: a Flush, a CopyDone after an error
        return True

    def _start_clock(self) -> None:
        now = time.monotonic()
        self.query_start = now
        if not self.xact_start:
            self.xact_start = now

    def _to_server(self, data: Any) -> None:
        server = cast("ServerConnection", self.server)  # the engine asked for one first
        try:
            send_through(server.sock, server.raw, data)
        except OSError:
            self._server_lost(server)

    def _link_server(self) -> None:
        client = self.client
        client.request_time = time.time()
        server = self.pool.acquire(client)
        # SHOW STATS counts here, where a client's traffic gets a server: not the login-time
        # parameter fetch (a session client is one assignment, as in PgBouncer), nor bouncer's
        # own auth_query lookups.
        self.stats.server_assignment_count += 1
        self._link(server)
        if not client.vars.items() <= server.params.items():  # (checked in C)
            _sync_parameters(client, server)
        if server.engine.buffered:  # PostgreSQL says nothing after ReadyForQuery unasked
            self._drop_server(server, "server sent data after ReadyForQuery")
            raise ClientError("server conn crashed?", sqlstate.CONNECTION_FAILURE)

    def _link(self, server: "ServerConnection") -> None:
        server.wake = self._on_server
        server.watch.callback = self._on_server  # straight here, not through server.readable
        self.client.server = self.server = server
        pipeline = server.engine.pipeline
        self.engine.pipeline = pipeline
        if self.engine.prepared is not None:
            pipeline.names = self.engine.prepared.names

    # -- server -> client ----------------------------------------------------------------------

    def _from_server(self) -> None:
        server = cast("ServerConnection", self.server)  # _wait() said it is readable
        for _ in self.loops:
            data = _read(server.sock, server.raw)
            if data is None:
                return
            self._server_bytes(server, data)
            if self.server is not server or not self._more_waiting(data, server.raw):
                return

    def _server_bytes(self, server: "ServerConnection", data: Any) -> None:
        if not data:
            self._server_lost(server)
        engine = server.engine
        out = engine.receive(data)
        if engine.param_updates:
            self._apply_param_updates(server)
        ready = engine.ready_count
        if ready and self.mode == STATEMENT and engine.status != TXN_IDLE:
            # PgBouncer drops what the server said (BEGIN's "BEGIN") and sends only the error.
            self._drop_server(server, STATEMENT_REFUSAL)
            raise ClientError(STATEMENT_REFUSAL, sqlstate.PROTOCOL_VIOLATION)
        if out:
            self._to_client(out)
        if ready:
            self._count(ready, engine.status)
            self._release_if_done()

    def _to_client(self, data: Any) -> None:
        client = self.client
        self.client_at_boundary = False
        try:
            send_through(client.sock, self.client_raw, data)
        except OSError as exc:
            server = self.server
            if server is not None:
                self._drop_server(server, "client disconnect while server was not ready")
            raise ConnectionLost(f"client unexpected eof ({exc})") from exc
        server = self.server
        self.client_at_boundary = server is None or not server.engine.client_mid_message
        self.stats.bytes_sent += len(data)

    def _count(self, replies: int, status: int) -> None:
        now = time.monotonic()
        stats = self.stats
        stats.query_count += replies
        stats.query_time += int((now - self.query_start) * 1e6)
        self.query_start = now
        if status == TXN_IDLE and self.xact_start:
            stats.xact_count += 1
            stats.xact_time += int((now - self.xact_start) * 1e6)
            self.xact_start = 0.0

    def _apply_param_updates(self, server: "ServerConnection") -> None:
        """A SET of a tracked parameter: the client now expects it on every server."""
        for name, value in server.engine.param_updates:
            server.params[name] = value
            if name in self.client.vars:
                self.client.vars[name] = value
        server.engine.param_updates.clear()

    # -- giving the server back ----------------------------------------------------------------

    def _release_if_done(self) -> None:
        """Transaction and statement modes: release the server once it owes nothing."""
        server = self.server
        if server is None or not self.releasing:
            return
        engine = server.engine
        if (engine.status == TXN_IDLE and engine.pipeline.idle and engine.at_boundary
                and self.engine.at_boundary):
            self.unlink_server()
            self.pool.release(server)

    def unlink_server(self) -> None:
        """Forget the linked server (the caller gives it back or closes it)."""
        server = self.server
        if server is None:
            return
        server.wake = None
        if not server.closed:
            server.watch.callback = server.readable
        server.engine.pipeline.names = None
        self.engine.pipeline = None
        self.client.server = self.server = None

    # -- failures ------------------------------------------------------------------------------

    def _drop_server(self, server: "ServerConnection", reason: str) -> None:
        self.unlink_server()
        self.pool.close_server(server, reason)

    def _server_lost(self, server: "ServerConnection") -> NoReturn:
        """The server went away: close it and end the client's session with PgBouncer's error."""
        log.warning("%s server conn crashed?", self.client.prefix)
        self._drop_server(server, "server conn crashed?")
        raise ClientError("server conn crashed?", sqlstate.CONNECTION_FAILURE)


def _tls_pending(sock: Any) -> bool:
    pending = getattr(sock, "pending", None)
    return pending is not None and pending() > 0


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
            cast("Pool", client.pool).close_server(server, reason)


def _sync_parameters(client: "ClientSession", server: "ServerConnection") -> None:
    """SET the tracked parameters that differ between this client and its new server."""
    changes = differing(client.vars, server.params)
    if not changes:
        return
    if log.isEnabledFor(logging.DEBUG):  # described() is not built when nobody reads it
        log.debug("%s varcache_apply: %s", client.prefix, described(changes))
    try:
        with _closed_if_interrupted(client, server, "interrupted while setting parameters"):
            server.run_query(sync_query(changes))
    except ClientError as err:
        log.warning("%s could not set parameters on server: %s", client.prefix, err.message)
        return
    for name, value, canonical in settle(client.vars, server.params, changes):
        log.debug("%s varcache_set_canonical: setting %s to its canonical version %s -> %s",
                  client.prefix, name, value, canonical)


def fetch_welcome_params(client: "ClientSession") -> None:
    """Log in one server so the pool knows what to tell clients (ParameterStatus)."""
    pool = cast("Pool", client.pool)  # (logged in)
    server = pool.acquire(client)
    if pool.welcome_params is None:
        pool.welcome_params = dict(server.params)
    pool.release(server, served=False)


def unlink_on_exit(client: "ClientSession") -> None:
    """The client is leaving: give back (or close) its server, with PgBouncer's reasons."""
    link = client.link
    if link is None:
        return
    try:
        if link.server is not None:
            _give_back(client, link, link.server)
    finally:
        link.close()  # only now: a KILL_CLIENT during the reset query must still reach us


def _give_back(client: "ClientSession", link: Link, server: "ServerConnection") -> None:
    engine = server.engine
    link.unlink_server()
    pool = link.pool
    if len(engine.pipeline):
        # The backend would run the query to its end before reading our Terminate.
        client.app.cancels.cancel_server(server, client.prefix)
    if server.dedicated:
        pool.close_server(server, "replication client disconnected")
    elif engine.status != TXN_IDLE or len(engine.pipeline):
        pool.close_server(server, "client disconnect while server was not ready")
    elif not (engine.pipeline.idle and engine.at_boundary and link.engine.at_boundary):
        pool.close_server(server, "client disconnect before everything was sent to the server")
    elif link.mode == SESSION or client.app.config.server_reset_query_always:
        _reset_and_release(client, server)
    else:
        pool.release(server)


def _reset_and_release(client: "ClientSession", server: "ServerConnection") -> None:
    pool = cast("Pool", client.pool)  # (logged in)
    reset = client.app.config.server_reset_query
    try:
        if reset:
            with _closed_if_interrupted(client, server, "interrupted in server_reset_query"):
                server.run_query(reset)
    except (ClientError, ConnectionLost) as err:
        pool.close_server(server, f"server_reset_query failed: {err}")
        return
    pool.release(server)
