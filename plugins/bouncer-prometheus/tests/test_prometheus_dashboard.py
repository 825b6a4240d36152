"""The Grafana dashboard queries only series the plugin exports, and shows what it promises:
pools, clients waiting, wait time, transactions and queries per second, login failures."""
from __future__ import annotations

import json
import os
import re
from typing import Iterator, List, Set

import pytest

from bouncer_prometheus.plugin import exported_names

DASHBOARD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "dashboard", "bouncer-grafana.json")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> Set[str]:
    """The series names a PromQL expression reads: identifiers that are not function names
    (followed by '('), keywords, labels (inside braces or grouping clauses) or numbers."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        rest = text[match.end():].lstrip()
        if not rest.startswith("(") and match.group() not in _KEYWORDS:
            names.add(match.group())
    return names


def dashboard() -> dict:
    with open(DASHBOARD, encoding="utf-8") as source:
        return json.load(source)


def expressions() -> Iterator[str]:
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            # label_values(series, label): the series is what is read
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query["query"]).group(1)
            yield inner


def test_the_expression_reader_finds_series_and_skips_the_rest() -> None:
    assert metric_names('histogram_quantile(0.9, sum by (le, db) (rate(a_b_bucket{x="y{"}'
                        '[5m]))) / on (db) c_total offset 5m') == {"a_b_bucket", "c_total"}


def test_every_queried_series_is_exported() -> None:
    queried: Set[str] = set()
    for expr in expressions():
        queried |= metric_names(expr)
    assert queried and queried <= set(exported_names()), queried - set(exported_names())


@pytest.mark.parametrize("wanted", [
    "pgbouncer_pools_client_active_connections",       # pools
    "pgbouncer_pools_client_waiting_connections",      # clients waiting
    "bouncer_pools_client_wait_seconds_bucket",        # wait time
    "pgbouncer_stats_sql_transactions_pooled_total",   # transactions per second
    "pgbouncer_stats_queries_pooled_total",            # queries per second
    "bouncer_client_login_failures_total",             # login failures
])
def test_the_dashboard_shows(wanted: str) -> None:
    queried: List[str] = [name for expr in expressions() for name in metric_names(expr)]
    assert wanted in queried


def test_panels_have_unique_ids_and_titles() -> None:
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert all(panel["title"] and panel["targets"] for panel in panels)
