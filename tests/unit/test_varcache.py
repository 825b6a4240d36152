"""Tracked parameters: which ones, the query that sets them, and agreeing on their values."""
from __future__ import annotations

from bouncer.session.varcache import described, differing, settle, sync_query, tracked_names


def test_extra_names_are_tracked_in_the_spelling_servers_report() -> None:
    names = tracked_names(("intervalstyle", " Search_Path ", ""))
    assert names["intervalstyle"] == "IntervalStyle"
    assert names["search_path"] == "search_path"
    assert names["datestyle"] == "DateStyle"  # always tracked


def test_only_differing_values_are_set() -> None:
    changes = differing({"DateStyle": "ISO", "TimeZone": "UTC"},
                        {"DateStyle": "ISO, MDY", "TimeZone": "UTC"})
    assert changes == {"DateStyle": "ISO"}
    assert sync_query(changes) == "SELECT pg_catalog.set_config('DateStyle', 'ISO', false)"
    assert described(changes) == "SET DateStyle='ISO';"


def test_the_client_takes_the_canonical_value_the_server_reports() -> None:
    client = {"DateStyle": "ISO"}
    server = {"DateStyle": "ISO, MDY"}  # PostgreSQL 14+ reports nothing for an unchanged value
    assert settle(client, server, {"DateStyle": "ISO"}) == [("DateStyle", "ISO", "ISO, MDY")]
    assert differing(client, server) == {}  # the next transaction sets nothing


def test_a_parameter_the_server_never_reports_is_recorded_as_set() -> None:
    client = {"search_path": "app, public"}
    server: dict = {}
    assert settle(client, server, {"search_path": "app, public"}) == []
    assert differing(client, server) == {}
