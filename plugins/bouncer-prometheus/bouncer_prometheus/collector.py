"""The pooler's state as Prometheus metrics, named and labelled as prometheus-community's
pgbouncer_exporter names them, so its dashboards and alerts work unchanged.

The exporter runs SHOW LISTS, CONFIG, CLIENTS, DATABASES, STATS_TOTALS and POOLS on the admin
console and turns columns into metrics; this collector reads the same rows through the plugin
context (``context.show``, built by the functions that answer those commands), at each scrape,
so a metric and the console can never disagree.  Each table below is (column, metric name,
help).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple,
                    Union)

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bouncer import VERSION_STRING

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.plugin.context import PluginContext

NAMESPACE = "pgbouncer"
Columns = Sequence[Tuple[str, str, str]]

#: SHOW LISTS rows -> gauges without labels.
LIST_METRICS: Columns = (
    ("databases", "databases", "Number of databases"),
    ("users", "users", "Number of users"),
    ("pools", "pools", "Number of pools"),
    ("free_clients", "free_clients", "Number of free client slots"),
    ("used_clients", "used_clients", "Number of client connections"),
    ("login_clients", "login_clients", "Number of clients logging in"),
    ("free_servers", "free_servers", "Number of free server slots"),
    ("used_servers", "used_servers", "Number of server connections"),
    ("dns_names", "cached_dns_names", "Number of DNS names in the cache"),
    ("dns_zones", "cached_dns_zones", "Number of DNS zones in the cache"),
    ("dns_queries", "in_flight_dns_queries", "Number of DNS queries in flight"),
)

#: SHOW CONFIG rows -> gauges without labels.
CONFIG_METRICS: Columns = (
    ("max_client_conn", "config_max_client_connections", "max_client_conn setting"),
    ("max_user_connections", "config_max_user_connections", "max_user_connections setting"),
)

#: SHOW DATABASES columns -> gauges labelled with the database's identity.
DATABASE_LABELS = ("name", "host", "port", "database", "force_user", "pool_mode")
DATABASE_METRICS: Columns = (
    ("pool_size", "databases_pool_size", "Server connections allowed per pool"),
    ("reserve_pool_size", "databases_reserve_pool",
     "Extra server connections a pool may open after reserve_pool_timeout"),
    ("max_connections", "databases_max_connections",
     "Server connections allowed for the database (0 = unlimited)"),
    ("current_connections", "databases_current_connections",
     "Server connections of the database"),
    ("paused", "databases_paused", "1 while the database is paused"),
    ("disabled", "databases_disabled", "1 while the database is disabled"),
)

#: SHOW STATS_TOTALS columns -> counters per database (times in seconds, not microseconds).
STATS_METRICS: Columns = (
    ("query_count", "stats_queries_pooled_total", "Queries pooled"),
    ("query_time", "stats_queries_duration_seconds_total",
     "Seconds connected to a server and running queries"),
    ("bytes_received", "stats_received_bytes_total", "Bytes received from clients"),
    ("bytes_sent", "stats_sent_bytes_total", "Bytes sent to clients"),
    ("wait_time", "stats_client_wait_seconds_total", "Seconds clients waited for a server"),
    ("xact_count", "stats_sql_transactions_pooled_total", "Transactions pooled"),
    ("xact_time", "stats_server_in_transaction_seconds_total",
     "Seconds connected to a server in a transaction, idle or running queries"),
    ("client_parse_count", "stats_client_parses_total",
     "Prepared-statement Parse messages received from clients"),
    ("server_parse_count", "stats_server_parses_total",
     "Prepared-statement Parse messages sent to servers"),
    ("bind_count", "stats_binds_total", "Bind messages of prepared statements"),
    ("server_assignment_count", "stats_server_assignments_total",
     "Times a server connection was assigned to a client"),
)
_MICROSECOND_COLUMNS = frozenset({"query_time", "wait_time", "xact_time"})

#: SHOW POOLS columns -> gauges per (database, user).
POOL_METRICS: Columns = (
    ("cl_active", "pools_client_active_connections", "Clients linked to a server or idle"),
    ("cl_waiting", "pools_client_waiting_connections", "Clients waiting for a server"),
    ("cl_active_cancel_req", "pools_client_active_cancel_connections",
     "Clients whose cancel request was forwarded and awaits the server"),
    ("cl_waiting_cancel_req", "pools_client_waiting_cancel_connections",
     "Clients whose cancel request is not forwarded yet"),
    ("sv_active", "pools_server_active_connections", "Servers linked to a client"),
    ("sv_active_cancel", "pools_server_active_cancel_connections",
     "Servers forwarding a cancel request"),
    ("sv_being_canceled", "pools_server_being_canceled_connections",
     "Servers waiting for cancel requests in flight before going idle"),
    ("sv_idle", "pools_server_idle_connections", "Servers idle and ready for a client"),
    ("sv_used", "pools_server_used_connections",
     "Servers idle longer than server_check_delay, to be checked before use"),
    ("sv_tested", "pools_server_testing_connections",
     "Servers running server_reset_query or server_check_query"),
    ("sv_login", "pools_server_login_connections", "Servers logging in"),
)
MAXWAIT_METRIC = "pools_client_maxwait_seconds"

#: Every metric name this collector can produce (the dashboard test checks against them).
EXPORTED_NAMES = tuple(
    f"{NAMESPACE}_{metric}" for table in (LIST_METRICS, CONFIG_METRICS, DATABASE_METRICS,
                                          STATS_METRICS, POOL_METRICS)
    for _, metric, _ in table) + tuple(f"{NAMESPACE}_{name}" for name in (
        "up", "version_info", "client_connections", MAXWAIT_METRIC))


class PoolerCollector:
    """A prometheus_client collector reading the pooler's tables at each scrape."""

    def __init__(self, get_context: Callable[[], Optional["PluginContext"]]) -> None:
        self._get_context = get_context

    def collect(self) -> Iterator[Metric]:
        context = self._get_context()
        up = GaugeMetricFamily(f"{NAMESPACE}_up", "1 when the pooler answered this scrape")
        up.add_metric([], 0 if context is None else 1)
        yield up
        if context is None:
            return
        version = GaugeMetricFamily(f"{NAMESPACE}_version_info", "The pooler's version",
                                    labels=["version"])
        version.add_metric([VERSION_STRING], 1)
        yield version
        lists = {row["list"]: row["items"] for row in context.show("LISTS")}
        yield from _keyed_gauges(LIST_METRICS, lists)
        config = {row["key"]: row["value"] for row in context.show("CONFIG")}
        yield from _keyed_gauges(CONFIG_METRICS, config)
        yield _client_connections(context.show("CLIENTS"))
        yield from _databases(context.show("DATABASES"))
        yield from _stats(context.show("STATS_TOTALS"))
        yield from _pools(context.show("POOLS"))


def _number(value: Any) -> float:
    """A column's value as a sample; NULL is NaN, as the exporter reads it."""
    return math.nan if value is None else float(value)


def _label(value: Any) -> str:
    return "" if value is None else str(value)


def _keyed_gauges(table: Columns, values: Dict[str, Any]) -> Iterator[Metric]:
    for key, metric, help_text in table:
        if key in values:
            gauge = GaugeMetricFamily(f"{NAMESPACE}_{metric}", help_text)
            gauge.add_metric([], _number(values[key]))
            yield gauge


def _client_connections(clients: List[Dict[str, Any]]) -> Metric:
    keys = ("database", "user", "application_name", "state")
    counts = Counter(tuple(_label(row[key]) for key in keys) for row in clients)
    family = GaugeMetricFamily(f"{NAMESPACE}_client_connections",
                               "Client connections by database, user, application and state",
                               labels=list(keys))
    for labels, count in sorted(counts.items()):
        family.add_metric(list(labels), count)
    return family


def _labelled(table: Columns, rows: List[Dict[str, Any]], labels: Sequence[str],
              family: Callable[..., Union[GaugeMetricFamily, CounterMetricFamily]],
              scale: Callable[[str], float]) -> Iterator[Metric]:
    """One family per column of *table*, one sample per row."""
    for column, metric, help_text in table:
        metrics = family(f"{NAMESPACE}_{metric}", help_text, labels=list(labels))
        for row in rows:
            metrics.add_metric([_label(row[label]) for label in labels],
                               _number(row[column]) * scale(column))
        yield metrics


def _databases(rows: List[Dict[str, Any]]) -> Iterator[Metric]:
    return _labelled(DATABASE_METRICS, rows, DATABASE_LABELS, GaugeMetricFamily, lambda _: 1)


def _stats(rows: List[Dict[str, Any]]) -> Iterator[Metric]:
    return _labelled(STATS_METRICS, rows, ("database",), CounterMetricFamily,
                     lambda column: 1e-6 if column in _MICROSECOND_COLUMNS else 1)


def _pools(rows: List[Dict[str, Any]]) -> Iterator[Metric]:
    labels = ("database", "user")
    yield from _labelled(POOL_METRICS, rows, labels, GaugeMetricFamily, lambda _: 1)
    maxwait = GaugeMetricFamily(f"{NAMESPACE}_{MAXWAIT_METRIC}",
                                "How long the oldest waiting client has waited",
                                labels=list(labels))
    for row in rows:
        maxwait.add_metric([row["database"], row["user"]],
                           row["maxwait"] + row["maxwait_us"] / 1e6)
    yield maxwait
