"""Periodic maintenance in one place (PgBouncer's janitor.c): server lifetimes and idle
timeouts, min_pool_size, and the stats period."""
from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Optional, Tuple

import gevent

from bouncer.config.sections import ADMIN_DATABASE
from bouncer.errors import ClientError
from bouncer.pool.limits import database_min_pool_size
from bouncer.pool.stats import averages, counted_from, grand_totals, stats_line
from bouncer.proto.constants import TXN_IDLE

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.config import Config
    from bouncer.pool.pool import Pool
    from bouncer.session.server import ServerConnection

log = logging.getLogger(__name__)

TICK = 0.5
FAST_CLOSE_REASON = "database configuration changed"  # PgBouncer's words, whatever the cause


def expiry_reason(config: "Config", server: "ServerConnection") -> Optional[str]:
    """Why an idle server should close now (lifetime, idle timeout), or ``None``.

    (One that went away is closed as soon as its socket says so: ServerConnection.readable.)"""
    if config.server_idle_timeout and server.idle_for() > config.server_idle_timeout:
        return "server idle timeout"
    if server.pool.lifetime_close_due(server):
        return "server lifetime over"
    return None


class Janitor:
    """Runs :meth:`tick` every half second in its own greenlet."""

    def __init__(self, app: "App") -> None:
        self.app = app
        self.greenlet: Optional[gevent.Greenlet] = None
        self.period_start = time.monotonic()
        #: With workers, the first worker's last look at the whole pooler's totals.
        self._pooler_totals: Optional[Tuple[int, ...]] = None

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill()

    def _run(self) -> None:
        while True:
            gevent.sleep(TICK)
            try:
                self.tick()
            except Exception:
                log.error("janitor failed (will retry)", exc_info=True)

    def tick(self) -> None:
        expired = functools.partial(expiry_reason, self.app.config)
        self._make_min_size_pools()
        for pool in self.app.registry.pools():
            pool.refresh_limits()
            pool.expire_waiters()
            pool.launch_if_needed()  # the reserve pool opens once clients waited long enough
            pool.close_idle(expired)
            if self.app.config.server_fast_close:
                _fast_close(pool)
            self._fill_min(pool)
            while pool.over_size() and pool.idle:
                pool.close_server(pool.idle[0], "too many servers in pool")
        self._free_idle_pools()
        self._free_idle_autodbs()
        self._maybe_roll_stats()

    def _make_min_size_pools(self) -> None:
        """A database with a forced user and min_pool_size gets its pool before any client
        comes, so that its servers are opened in advance (as PgBouncer does).  Only forced
        users: with many users, connections would be opened in ways nobody expects."""
        registry, config = self.app.registry, self.app.config
        for db in list(registry.databases.values()):
            user = db.definition.user
            if (user and not db.removed and user not in db.pools
                    and database_min_pool_size(config, db.definition)):
                registry.pool(db, user)

    def _free_idle_pools(self) -> None:
        """pool_idle_timeout: forget pools that had no client and no server for that long.
        A forced-user pool kept at min_pool_size stays: it would only be made again."""
        timeout = self.app.config.pool_idle_timeout
        if not timeout:
            return
        now = time.monotonic()
        for pool in list(self.app.registry.pools()):
            if not pool.unused() or (pool.database.definition.user
                                     and pool.limits.min_pool_size()):
                pool.unused_since = None
            elif pool.unused_since is None:
                pool.unused_since = now
            elif now - pool.unused_since >= timeout:  # ">=": the tick is as coarse as 0.5 s
                age = now - pool.unused_since
                self.app.registry.forget_pool(pool, f"pool idle timeout (age= {age:.0f}s)")  # sic

    def _fill_min(self, pool: "Pool") -> None:
        """Keep min_pool_size servers for pools that have clients or a forced user (with
        workers, across all of them: bouncer.slots)."""
        minimum = pool.limits.min_pool_size()
        if not minimum or not (pool.clients or pool.database.definition.user):
            return
        if pool.last_login_failure is not None:
            return
        slots = self.app.slots
        if slots is not None and not slots.may_fill(pool):
            return  # other workers keep them: the supervisor says when that changes
        while pool.server_count() < minimum and pool.may_open_another():
            pool.launch()

    def _free_idle_autodbs(self) -> None:
        """Forget databases made from ``*`` that nobody used for autodb_idle_timeout."""
        timeout = self.app.config.autodb_idle_timeout
        now = time.monotonic()
        for db in list(self.app.registry.databases.values()):
            if not db.autodb or db.client_count() or db.active_count():
                db.idle_since = None
            elif db.idle_since is None:
                db.idle_since = now
            elif timeout and now - db.idle_since > timeout:
                self.app.registry.forget_database(db, "autodb idle timeout")

    def _maybe_roll_stats(self) -> None:
        config = self.app.config
        elapsed = time.monotonic() - self.period_start
        if elapsed < config.stats_period:
            return
        self.period_start = time.monotonic()
        totals = [(db.name, db.stats) for db in self.app.registry.databases.values()]
        totals.append((ADMIN_DATABASE, self.app.admin_stats))
        values = self.app.stats_period.roll(totals, elapsed)
        worker = self.app.worker
        if worker is None:
            self._report(stats_line(values))
        elif worker.index == 1:  # one line for the whole pooler, as one process writes
            gevent.spawn(self._report_for_the_pooler, elapsed)  # (it asks the others)

    def _report_for_the_pooler(self, elapsed: float) -> None:
        """With workers: the stats line of every worker's traffic together, from the pooler's
        totals now and at the last period (none the first time: no line then)."""
        new = grand_totals(self.app.plugin_context.show("STATS_TOTALS"))
        old, self._pooler_totals = self._pooler_totals, new
        if old is not None:
            self._report(stats_line(averages(counted_from(old, new), new, elapsed)))

    def _report(self, line: str) -> None:
        self.app.notify_status(line)
        if self.app.config.log_stats:
            log.info("%s", line)


def _fast_close(pool: "Pool") -> None:
    """server_fast_close: a linked server marked close_needed (RECONNECT, a changed
    [databases] line) that stands between transactions is closed now, with its client, as
    PgBouncer does, instead of when the client leaves."""
    for server in list(pool.active):
        engine = server.engine
        client = server.link
        if (server.close_needed and client is not None and not client.close_reason
                and engine.status == TXN_IDLE and engine.pipeline.idle and engine.at_boundary):
            server.close_reason = FAST_CLOSE_REASON
            client.end(ClientError(FAST_CLOSE_REASON))
