"""The hooks: settings of ``[plugin.prometheus]``, the listener's life (start, RELOAD,
shutdown), and the two things only the pooler sees: how long clients queue for a server
(``bouncer_client_waited``) and why logins fail (``bouncer_client_login``).

The section enables the plugin: without ``[plugin.prometheus]`` in the ini, nothing listens and
the observer hooks do nothing.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import gevent
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

from bouncer.plugin import Setting, hookimpl
from bouncer_prometheus.collector import EXPORTED_NAMES, PoolerCollector
from bouncer_prometheus.health import health_problems
from bouncer_prometheus.http import MetricsServer, make_app
from bouncer_prometheus.logins import REASONS, failure_reason
from bouncer_prometheus.pooled import (COMMAND, PooledCollector, console_command,
                                       declared_families)

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.config import Config
    from bouncer.plugin.context import PluginContext

log = logging.getLogger("bouncer.plugins.prometheus")  # under bouncer's own logger

SECTION = "prometheus"
#: pgbouncer_exporter's port, so scrape configurations need no change.
DEFAULT_PORT = 9127
#: Up to query_wait_timeout's default (120 s), where waits end anyway.
DEFAULT_BUCKETS = ("0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "10", "30", "60",
                   "120")

SETTINGS = (
    Setting("listen_addr", "str", "127.0.0.1", True,
            "address the metrics listener binds (* = every IPv4 address)"),
    Setting("listen_port", "int", DEFAULT_PORT, True, "port of the metrics listener",
            min=1, max=65535),
    Setting("wait_buckets", "list", DEFAULT_BUCKETS, False,
            "upper bounds in seconds of the wait-time histogram's buckets"),
)

#: Seconds between attempts to bind a busy port: during an online restart (-R) the old
#: process keeps it until its last client leaves.
BIND_RETRY = 5.0

WAIT_METRIC = "bouncer_pools_client_wait_seconds"
LOGIN_FAILURES_METRIC = "bouncer_client_login_failures_total"


def exported_names() -> Tuple[str, ...]:
    """Every series name a scrape can show (what dashboards may query)."""
    waits = tuple(f"{WAIT_METRIC}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return EXPORTED_NAMES + waits + (LOGIN_FAILURES_METRIC,)


class Exporter:
    """The metrics of one running pooler and the listener serving them."""

    def __init__(self, context: "PluginContext", buckets: Sequence[float]) -> None:
        self.context = context
        #: This process's own observations, served added up with the other workers'
        #: (:mod:`bouncer_prometheus.pooled`).
        self.observed = CollectorRegistry()
        self.waits = Histogram(WAIT_METRIC, "How long clients queued for a server connection, "
                               "for those that had to queue", ["database", "user"],
                               buckets=tuple(buckets), registry=self.observed)
        self.login_failures = Counter(LOGIN_FAILURES_METRIC, "Client logins refused, by reason",
                                      ["reason"], registry=self.observed)
        for reason in REASONS:  # every series exists from the start: rate() needs a zero
            self.login_failures.labels(reason)
        self.registry = CollectorRegistry()
        self.registry.register(PoolerCollector(lambda: self.context))
        self.registry.register(PooledCollector(lambda: self.context,
                                               declared_families(self.observed)))
        ProcessCollector(registry=self.registry)
        self.server: Optional[MetricsServer] = None
        self._retry: Optional[gevent.Greenlet] = None

    def listen(self, values: Mapping[str, Any]) -> None:
        """(Re)bind to the configured address; a new listener is up before the old one goes.
        A port that cannot be bound is tried again every :data:`BIND_RETRY` seconds."""
        self._cancel_retry()
        address = "0.0.0.0" if values["listen_addr"] == "*" else values["listen_addr"]
        port = values["listen_port"]
        if self.server is not None and (self.server.address, self.server.port) == (address, port):
            return
        if not self._bind(address, port, first=True):
            self._retry = gevent.spawn(self._keep_trying, address, port)

    def _bind(self, address: str, port: int, first: bool) -> bool:
        server = MetricsServer(address, port,
                               make_app(self.registry, lambda: health_problems(self.context)))
        try:
            server.start()
        except OSError as exc:
            if first:
                log.error("prometheus: cannot listen on %s port %d: %s; trying again every "
                          "%g s", address, port, exc, BIND_RETRY)
            return False
        self._close_server()
        self.server = server
        return True

    def _keep_trying(self, address: str, port: int) -> None:
        while True:
            gevent.sleep(BIND_RETRY)
            if self._bind(address, port, first=False):
                self._retry = None
                return

    def _cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.kill(block=False)
            self._retry = None

    def _close_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def stop(self) -> None:
        self._cancel_retry()
        self._close_server()


#: The exporter of the running pooler (one per process), None while the section is absent.
_running: Dict[str, Exporter] = {}


def _exporter() -> Optional[Exporter]:
    return _running.get(SECTION)


def _buckets(values: Mapping[str, Any]) -> List[float]:
    return [float(bound) for bound in values["wait_buckets"]]


@hookimpl
def bouncer_declare_settings() -> Dict[str, Tuple[Setting, ...]]:
    return {SECTION: SETTINGS}


@hookimpl
def bouncer_validate_config(config: "Config") -> List[str]:
    try:
        bounds = _buckets(config.plugin(SECTION))
    except ValueError:
        return [f"plugin.{SECTION}.wait_buckets: each bound must be a number of seconds"]
    if not bounds or any(b <= 0 for b in bounds) or sorted(set(bounds)) != bounds:
        return [f"plugin.{SECTION}.wait_buckets: give positive numbers of seconds in "
                "increasing order"]
    return []


@hookimpl
def bouncer_startup(context: "PluginContext") -> None:
    _apply(context)


@hookimpl
def bouncer_reload(context: "PluginContext") -> None:
    _apply(context)


def _apply(context: "PluginContext") -> None:
    exporter = _exporter()
    if not context.config.has_plugin_section(SECTION):
        if exporter is not None:
            exporter.stop()
            del _running[SECTION]
        return
    values = context.settings(SECTION)
    if exporter is None:
        exporter = _running[SECTION] = Exporter(context, _buckets(values))
    exporter.listen(values)


@hookimpl
def bouncer_shutdown() -> None:
    exporter = _running.pop(SECTION, None)
    if exporter is not None:
        exporter.stop()


def _observed() -> Optional[CollectorRegistry]:
    exporter = _exporter()
    return exporter.observed if exporter is not None else None


@hookimpl
def bouncer_admin_commands() -> Dict[str, Callable[..., Any]]:
    return {f"SHOW {COMMAND}": console_command(_observed)}


@hookimpl
def bouncer_client_waited(database: str, user: str, seconds: float) -> None:
    exporter = _exporter()
    if exporter is not None:
        exporter.waits.labels(database, user).observe(seconds)


@hookimpl
def bouncer_client_login(ok: bool, reason: str) -> None:
    exporter = _exporter()
    if exporter is not None and not ok:
        exporter.login_failures.labels(failure_reason(reason)).inc()
