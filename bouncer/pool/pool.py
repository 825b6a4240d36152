"""One pool of server connections for a (database, user) pair, and the clients waiting on it.

As in PgBouncer, a server connection's state *is* the collection it sits in: ``login``
(connecting), ``idle`` (ready), ``active`` (linked to a client), ``tested`` (running the check
query) or ``being_canceled`` (released while cancel requests for it are still on their way:
given to nobody until they are done, or a late cancel would hit the next client's query).

The pool never touches sockets: it opens connections through the ``connector`` it is given,
checks them through ``server.run_query()`` and closes them through ``server.close()``.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import (TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Set, Tuple,
                    cast)

import gevent
from gevent import get_hub
from gevent.event import Event
from gevent.hub import Waiter as HubWaiter

from bouncer.errors import BouncerError, ClientError
from bouncer.pool.limits import PoolLimits
from bouncer.proto import sqlstate

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.pool.registry import DatabaseState, UserState
    from bouncer.slots.client import SlotClient

log = logging.getLogger(__name__)


class WaitTimeout(ClientError):
    """PgBouncer's ``query_wait_timeout`` (or ``query_timeout``, which counts the wait too),
    with why the client waited and what to change."""

    def __init__(self, detail: str, hint: str, setting: str = "query_wait_timeout") -> None:
        super().__init__(setting, sqlstate.CONNECTION_FAILURE, "FATAL", detail=detail,
                         hint=hint)


class LoginFailing(ClientError):
    """A client refused at once because server logins fail (PgBouncer's check_fast_fail)."""

    def __init__(self, cause: ClientError, retry_in: float) -> None:
        super().__init__(
            f"server login has been failing, cached error: {cause.message} (server_login_retry)",
            cause.sqlstate, "FATAL",
            detail=f"bouncer's last login to the server failed; it tries again in "
                   f"{retry_in:.0f} s (server_login_retry) or when a server connection exists",
            hint="SHOW CHECKS on the admin console shows the failure and when it happened; fix "
                 "the server, or its [databases] line and RELOAD")


_STILL_WAITING = object()  # what the query_wait_notify timer wakes a waiter with


class Waiter:
    """A client waiting for a server; ``since`` drives maxwait and the reserve pool.

    The hand-over goes through gevent's low-level hub waiter (a callback and one switch),
    which is much cheaper than an AsyncResult on the path every queued transaction takes.
    """

    __slots__ = ("_hub_waiter", "client", "since", "done", "server")

    def __init__(self, client: Any) -> None:
        self._hub_waiter = HubWaiter()
        self.client = client
        self.since = time.monotonic()
        #: Set once an outcome is on its way, so a server and a timeout never both arrive.
        self.done = False
        self.server: Any = None

    def wait(self, notify_after: float = 0.0, notify: Callable[[], None] = lambda: None) -> Any:
        """The server handed over; after *notify_after* seconds (0: never) of waiting,
        *notify* is called once, in the waiting greenlet, and the wait goes on."""
        if not notify_after:
            return self._hub_waiter.get()
        timer = get_hub().loop.timer(notify_after)
        timer.start(self._hub_waiter.switch, _STILL_WAITING)
        try:
            outcome = self._hub_waiter.get()
        finally:
            timer.close()
        if outcome is not _STILL_WAITING:
            return outcome
        notify()
        # A server handed over meanwhile is kept by the hub waiter: get() returns it at once.
        return self._hub_waiter.get()

    def give(self, server: Any) -> None:
        self.done = True
        self.server = server
        get_hub().loop.run_callback(self._hub_waiter.switch, server)

    def fail(self, error: BaseException) -> None:
        self.done = True
        get_hub().loop.run_callback(self._hub_waiter.throw, error)


class Pool:
    """Server connections of one (database, user) pair."""

    def __init__(self, database: "DatabaseState", user: "UserState", *,
                 connector: Callable[["Pool"], Any], limits: PoolLimits,
                 cross_pool_limit: Callable[["Pool"], Optional[str]],
                 slots: Optional["SlotClient"] = None) -> None:
        self.database = database
        self.user = user
        self.limits = limits
        self._connector = connector
        self._cross_pool_limit = cross_pool_limit
        #: With workers, where a slot is asked for before a server connection opens (so the
        #: limits hold across workers) and returned when it closes; None in one process.
        self._slots = slots
        self.idle: Deque[Any] = deque()
        self.active: Set[Any] = set()
        self.tested: Set[Any] = set()
        self.being_canceled: Set[Any] = set()
        self.login: Set[Any] = set()
        #: Set when a server closes: a client waiting for room for a connection of its own
        #: (replication) looks again.
        self._room = Event()
        self.waiters: Deque[Waiter] = deque()
        #: Clients held by PAUSE before they queue for a server, and since when (monotonic).
        self.held: Dict[Any, float] = {}
        self.clients: Set[Any] = set()
        #: ParameterStatus values a server sent at login: what new clients are told.
        self.welcome_params: Optional[Dict[str, str]] = None
        #: (monotonic time, error) of the last failed server login, for server_login_retry.
        self.last_login_failure: Optional[Tuple[float, ClientError]] = None
        #: For SHOW CHECKS: (wall-clock time, error) of the latest failed server connect or
        #: login, kept after a success, and the wall-clock time of the latest success.
        self.last_failure: Optional[Tuple[float, ClientError]] = None
        self.last_success: Optional[float] = None
        #: Credentials and SCRAM keys used to log in to servers (set by client logins).
        self.server_credentials: Any = None
        self.scram_keys: Optional[tuple] = None
        self.blocked_by: Optional[str] = None
        #: Effective size, cached: release() checks it per transaction.  Refreshed by the
        #: janitor, on reload and when the admin console changes a limit.
        self.size = limits.pool_size()
        self.reserve = limits.reserve_size()
        self.round_robin = limits.round_robin()
        self.lifetime = limits.server_lifetime()
        self.check_query, self.check_delay = limits.server_check()
        #: When a server was last closed for its lifetime (monotonic), to spread such closings.
        self.last_lifetime_close = 0.0
        #: Since when (monotonic) the janitor has seen the pool without clients and servers.
        self.unused_since: Optional[float] = None

    # -- names and counts ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"{self.database.name}/{self.user.name}"

    def server_count(self) -> int:
        return (len(self.idle) + len(self.active) + len(self.tested) + len(self.login)
                + len(self.being_canceled))

    def unused(self) -> bool:
        """No client, nobody waiting, no server: the pool could be freed (pool_idle_timeout)."""
        return not (self.clients or self.waiters or self.held or self.server_count())

    def all_servers(self) -> List[Any]:
        """Connected servers (those still logging in have nothing to show yet)."""
        return [*self.active, *self.idle, *self.tested, *self.being_canceled]

    def refuse_waiting(self, error: ClientError) -> None:
        """Fail every client waiting for a server or for RESUME with *error* (shutdown)."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done:
                waiter.fail(error)
        for client in list(self.held):
            client.end(error)

    def max_wait(self) -> float:
        if not self.waiters:
            return 0.0
        return time.monotonic() - self.waiters[0].since

    def waiting_clients(self) -> Dict[Any, float]:
        """Every client waiting (for a server, or for RESUME) and since when: SHOW's
        ``waiting``."""
        waiting = dict(self.held)
        waiting.update((waiter.client, waiter.since) for waiter in self.waiters)
        return waiting

    # -- acquiring and releasing ---------------------------------------------------------------

    def acquire(self, client: Any) -> Any:
        """Link a server to *client*, waiting in FIFO order.

        ``query_wait_timeout`` is enforced by the janitor (:meth:`expire_waiters`), as in
        PgBouncer, so a wait costs no timer of its own.

        :raises WaitTimeout: no server became free in time.
        :raises ClientError: server login is failing (the server's own error is passed on).
        """
        if self.last_login_failure is not None:
            self._fail_fast_if_login_failing()
        if not self.database.resumed.is_set():
            self._wait_for_resume(client)
        if self.idle and not self.waiters:  # the common case, once per transaction
            # (An idle server that went away was closed when its socket said so.)
            server = self.idle.popleft() if self.round_robin else self.idle.pop()
            if not self._check_due(server):
                return self._activate(server, client)
            self._start_check(server)  # this client waits for it, or for another server
        waiter = Waiter(client)
        self.waiters.append(waiter)
        self.launch_if_needed()
        received = False
        try:
            server = waiter.wait(self.limits.wait_notify(), client.tell_queued)
            received = True
        finally:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            if not received and waiter.server is not None:
                # Killed (KILL_CLIENT, shutdown) after a server was handed over: give it back.
                self.release(waiter.server)
        waited = int((time.monotonic() - waiter.since) * 1e6)
        client.wait_time_us += waited
        self.database.stats.wait_time += waited
        self.database.registry.client_waited(self, waited / 1e6)
        return server

    def expire_waiters(self) -> None:
        """Fail clients that waited longer than query_timeout or query_wait_timeout (0: no
        limit); as in PgBouncer's janitor, query_timeout is looked at first."""
        limits = [(timeout, setting) for timeout, setting in (
            (self.limits.query_timeout(), "query_timeout"),
            (self.limits.query_wait_timeout(), "query_wait_timeout")) if timeout]
        now = time.monotonic()
        while self.waiters:
            waited = now - self.waiters[0].since
            expired = next(((t, name) for t, name in limits if waited > t), None)
            if expired is None:
                return  # the others came later
            waiter = self.waiters.popleft()
            if not waiter.done:
                waiter.fail(self._no_server_in_time(*expired))

    def _no_server_in_time(self, timeout: float, setting: str) -> WaitTimeout:
        blocked = f"; no new one may open: {self.blocked_by} reached" if self.blocked_by else ""
        return WaitTimeout(
            f"no server connection of pool {self.name} became free within {setting} "
            f"({timeout:g} s): {len(self.active)} in use, {len(self.login)} being opened, "
            f"pool_size {self.size}{blocked}",
            f"raise pool_size (or the limit named) or {setting}, or shorten the transactions "
            "that hold servers; SHOW POOLS and SHOW CHECKS on the admin console show the pool "
            "and its server logins", setting)

    def _wait_for_resume(self, client: Any) -> None:
        """PAUSE: hold the client until RESUME (or until query_wait_timeout)."""
        if self.database.refusal is not None:
            raise self.database.refusal
        self.held[client] = time.monotonic()
        try:
            resumed = self.database.resumed.wait(self.limits.query_wait_timeout() or None)
        finally:
            del self.held[client]
        if not resumed:
            raise WaitTimeout(
                f"database {self.database.name} is paused (PAUSE, KILL or SUSPEND on the admin "
                "console, or a shutdown waiting for its servers)",
                "RESUME on the admin console (with the database's name if only it was paused) "
                "lets its clients through")

    def _activate(self, server: Any, client: Any) -> Any:
        self.active.add(server)
        server.link = client
        return server

    def release(self, server: Any, served: bool = True) -> None:
        """Return a server that finished its transaction/session, or hand it to a waiter.

        :param served: False when it only told a new client the server's parameters: that is
            not a use that server_lifetime counts.
        """
        self.active.discard(server)
        server.link = None
        if server.close_needed or (self.size and self.over_size()):
            self.close_server(server, server.close_reason or "too many servers in pool")
            return
        if served and self.lifetime_close_due(server):  # on release too, as in PgBouncer
            self.close_server(server, "server lifetime over")
            return
        server.last_used = time.monotonic()
        if server.cancels_in_flight:
            self.being_canceled.add(server)
            return
        self.give(server)

    def cancels_done(self, server: Any) -> None:
        """The last cancel request for *server* was answered: it may serve someone else."""
        if server in self.being_canceled:
            self.being_canceled.discard(server)
            self.give(server)

    def give(self, server: Any) -> None:
        """Hand a ready server to the first waiter, or keep it idle (or close it if a lowered
        limit or RECONNECT marked it while it was busy)."""
        if server.close_needed:
            self.close_server(server, server.close_reason or "close needed")
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.done:
                continue
            self._activate(server, waiter.client)
            waiter.give(server)
            return
        self.idle.append(server)

    def refresh_limits(self) -> None:
        self.size = self.limits.pool_size()
        self.reserve = self.limits.reserve_size()
        self.round_robin = self.limits.round_robin()
        self.lifetime = self.limits.server_lifetime()
        self.check_query, self.check_delay = self.limits.server_check()

    # -- server_check_query ----------------------------------------------------------------------

    def _check_due(self, server: Any) -> bool:
        """As in PgBouncer, a server idle for server_check_delay (0: any released server) is
        checked when a client wants it, not while nobody does."""
        return self.check_query is not None and server.idle_for() >= self.check_delay

    def _start_check(self, server: Any) -> None:
        self.tested.add(server)
        gevent.spawn(self._run_check, server)

    def _run_check(self, server: Any) -> None:
        try:
            server.run_query(self.check_query)
        except BouncerError as err:  # an error reply, or the connection broke
            self.close_server(server, f"server check query failed: {err}")
            self.launch_if_needed()
            return
        self.tested.discard(server)
        self.give(server)

    def lifetime_close_due(self, server: Any) -> bool:
        """*server* is older than server_lifetime (0: it served once), and no other server of
        the pool was closed for its age less than lifetime / pool_size ago: PgBouncer spreads
        these closings so that a pool opened at once is not reopened at once.  True counts as
        such a closing: the caller closes the server."""
        if server.age() < self.lifetime:
            return False
        now = time.monotonic()
        if now - self.last_lifetime_close < (self.lifetime / self.size if self.size else 0.0):
            return False
        self.last_lifetime_close = now
        return True

    def over_size(self) -> bool:
        size = self.size
        return bool(size) and self.server_count() > size + self.reserve

    # -- opening server connections ------------------------------------------------------------

    def launch_if_needed(self) -> None:
        """Open server connections for waiters that no connection in progress will serve."""
        while (len(self.waiters) > len(self.login) + len(self.tested)
               and self.may_open_another()):
            self.launch()

    def may_open_another(self) -> bool:
        if self._retry_pending():
            return False
        if self.login and self._probing():
            return False
        size = self.size
        from_reserve = False
        if size:
            count = self.server_count()
            if count >= size:
                from_reserve = count < size + self.reserve and self.reserve_due()
                if not from_reserve:
                    return False
        self.blocked_by = self._cross_pool_limit(self)
        if self.blocked_by is not None:
            return False
        if from_reserve:  # PgBouncer's line, for the client waiting longest
            log.warning("%s taking connection from reserve_pool", self.waiters[0].client.prefix)
        return True

    def reserve_due(self) -> bool:
        """Clients waited reserve_pool_timeout: the pool may open up to pool_size + reserve."""
        return bool(self.waiters) and self.max_wait() >= self.limits.reserve_timeout()

    def _probing(self) -> bool:
        """No connection has worked yet, or the last one failed: then one connects at a time
        (PgBouncer's rule at all times), so that clients arriving at a server that is down,
        or at a host list's bad entry, cost one failed attempt, not one each."""
        return self.welcome_params is None or self.last_login_failure is not None

    def launch(self) -> None:
        placeholder = _Connecting()
        self.login.add(placeholder)
        gevent.spawn(self._connect, placeholder)

    def _connect(self, placeholder: "_Connecting") -> None:
        slots = self._slots
        if slots is not None and not slots.acquire(self):
            self.login.discard(placeholder)  # nobody waits for it any more, or it was a fill
            self.launch_if_needed()  # for clients that came while a fill was refused
            return
        try:
            server = self._connector(self)
        except ClientError as err:
            self.login.discard(placeholder)
            if slots is not None:
                slots.release(self)
            self._login_failed(err)
            return
        self.login.discard(placeholder)
        server.holds_slot = slots is not None
        self.last_login_failure = None
        self.last_success = time.time()
        if self.welcome_params is None:
            self.welcome_params = dict(server.params)
        self.give(server)
        self.launch_if_needed()  # for the waiters held back while this one probed

    def _login_failed(self, err: ClientError) -> None:
        """A connection could not be opened.  New ones are tried again after
        server_login_retry (:meth:`may_open_another`), while the clients waiting now wait on
        within their query_wait_timeout, unless the server refused the login itself: then
        they get its error at once, as from PgBouncer."""
        self.last_login_failure = (time.monotonic(), err)
        self.last_failure = (time.time(), err)
        if not getattr(err, "fails_waiters", False) or self._usable_server_left():
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done:
                waiter.fail(err)

    def _usable_server_left(self) -> bool:
        """A server that will serve a waiter: idle, or active and not to close when released
        (RECONNECT, a changed config).  PgBouncer counts a pool tagged dirty as having none."""
        return bool(self.idle) or any(not server.close_needed for server in self.active)

    def _fail_fast_if_login_failing(self) -> None:
        retry_in = self.refusing_logins_for()
        failure = self.last_login_failure
        if retry_in > 0 and failure is not None:  # (a retry_in implies a failure)
            raise LoginFailing(failure[1], retry_in)

    def _retry_pending(self) -> bool:
        """The last connection failed less than server_login_retry ago."""
        failure = self.last_login_failure
        return (failure is not None
                and time.monotonic() - failure[0] < self.limits.login_retry())

    def refusing_logins_for(self) -> float:
        """Seconds during which new clients still get the cached login error (0: none)."""
        if self.last_login_failure is None or self.idle:
            return 0.0
        when, _ = self.last_login_failure
        return max(0.0, self.limits.login_retry() - (time.monotonic() - when))

    # -- closing -------------------------------------------------------------------------------

    def close_server(self, server: Any, reason: str) -> None:
        """Forget *server* and close its connection; waiters may get a new one."""
        for collection in (self.active, self.tested, self.being_canceled):
            collection.discard(server)
        if server in self.idle:
            self.idle.remove(server)
        server.link = None
        server.close(reason)
        if server.holds_slot:
            server.holds_slot = False  # (closing twice returns it once)
            cast("SlotClient", self._slots).release(self)
        self._room.set()
        self.database.registry.server_closed(self)

    # -- connections of their own (replication) ---------------------------------------------------

    def reserve_dedicated(self) -> "_Connecting":
        """Room for a connection that one client keeps to itself (replication, as in PgBouncer).

        It counts towards pool_size: an idle server is evicted to make room (the one idle the
        longest), or the client waits, within query_wait_timeout, for a server to close (and,
        with workers, for a slot).  The caller opens the connection, then calls
        :meth:`adopt_dedicated` or :meth:`unreserve`.

        :raises WaitTimeout: no room became free in time.
        """
        wait = self.limits.query_wait_timeout()
        deadline = time.monotonic() + wait if wait else None
        while self.size and self.server_count() >= self.size:
            if self.idle:
                self.close_server(self.idle[0], "evicted")
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._no_server_in_time(wait, "query_wait_timeout")
            self._room.clear()
            self._room.wait(remaining)
        placeholder = _Connecting()
        self.login.add(placeholder)
        if self._slots is not None and not self._slots.acquire_dedicated(self, deadline):
            self.login.discard(placeholder)
            raise self._no_server_in_time(wait, "query_wait_timeout")
        return placeholder

    def adopt_dedicated(self, placeholder: "_Connecting", server: Any, client: Any) -> None:
        """The connection is open: it serves *client* alone, and closes when it leaves."""
        self.login.discard(placeholder)
        server.dedicated = True
        server.holds_slot = self._slots is not None
        self._activate(server, client)
        self.database.stats.server_assignment_count += 1

    def unreserve(self, placeholder: "_Connecting") -> None:
        """The connection could not be opened."""
        self.login.discard(placeholder)
        if self._slots is not None:
            self._slots.release(self)
        self._room.set()

    def close_idle(self, predicate: Callable[[Any], Optional[str]]) -> None:
        """Close idle servers for which *predicate* returns a reason (janitor's sweeps)."""
        for server in list(self.idle):
            reason = predicate(server)
            if reason:
                self.close_server(server, reason)

    def evict(self, count: int, reason: str, grace: Optional[float]) -> int:
        """Close *count* server connections because a limit was lowered.

        Idle servers go first, then those being tested, then active ones, most recently
        active first: an active server is closed when its client releases it, or, after
        *grace* seconds (None: never), at once, with its client told *reason*.

        :return: how many servers were chosen (fewer than *count* if the pool is smaller).
        """
        chosen = 0
        while chosen < count and self.idle:
            self.close_server(self.idle.pop(), reason)
            chosen += 1
        for server in list(self.tested)[:count - chosen]:
            server.close_needed, server.close_reason = True, reason
            chosen += 1
        recent_first = sorted((s for s in self.active if not s.close_needed),
                              key=lambda s: s.link.request_time if s.link else 0, reverse=True)
        for server in recent_first[:count - chosen]:
            server.close_needed, server.close_reason = True, reason
            if grace is not None:
                gevent.spawn_later(grace, self._force_close, server, reason)
            chosen += 1
        return chosen

    def _force_close(self, server: Any, reason: str) -> None:
        """The grace period is over: the client gets an error naming the limit."""
        client = server.link
        if server.closed or server not in self.active or client is None:
            return
        end = getattr(client, "end", None)
        if end is not None:
            end(ClientError(reason, sqlstate.ADMIN_SHUTDOWN))

    def mark_close_needed(self, reason: str) -> None:
        """RECONNECT: idle servers close now, active ones when released."""
        for server in self.all_servers():
            server.close_needed = True
            server.close_reason = reason
        self.close_idle(lambda s: reason)

    def recycle(self, reason: str) -> None:
        """The settings servers are opened with changed: servers close as for RECONNECT, and
        the cached login failure is forgotten, since it says nothing of the new settings."""
        self.last_login_failure = None
        self.mark_close_needed(reason)


class _Connecting:
    """Stands in the ``login`` set for a connection being opened."""

    __slots__ = ()
