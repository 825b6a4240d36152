"""Tracked session parameters, and the SET that makes a server match its new client.

PgBouncer tracks the parameters the server reports with ParameterStatus that clients commonly
set; when a client gets a server whose values differ (transaction mode), they are set again
before the client's query (PgBouncer's varcache.c).
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional

#: Always tracked; ``track_extra_parameters`` adds more (IntervalStyle by default).
BASE_TRACKED = ("client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings",
                "application_name")


#: The reported parameters whose names PostgreSQL spells in mixed case; it reports every other
#: one in lower case.
_MIXED_CASE = {name.lower(): name for name in ("DateStyle", "IntervalStyle", "TimeZone")}


def tracked_names(extra: Iterable[str]) -> Dict[str, str]:
    """Lower-case name -> the spelling servers report (GUC names are case-insensitive, so
    ``track_extra_parameters = intervalstyle`` tracks what servers report as IntervalStyle)."""
    names = {name.lower(): name for name in BASE_TRACKED}
    for name in extra:
        lower = name.strip().lower()
        if lower:
            names.setdefault(lower, _MIXED_CASE.get(lower, lower))
    return names


def quote_literal(value: str) -> str:
    """A SQL string literal (E'' form when a backslash is present, as PostgreSQL's quote_literal)."""
    escaped = value.replace("'", "''")
    if "\\" in value:
        return "E'" + escaped.replace("\\", "\\\\") + "'"
    return "'" + escaped + "'"


def sync_query(wanted: Mapping[str, str], current: Mapping[str, str]) -> Optional[str]:
    """The query that gives a server the client's values, or ``None`` if they match.

    ``set_config()`` reads a value as the startup packet's value is read: a list-valued
    setting such as ``search_path=public,other`` stays a list of two schemas, where
    ``SET search_path = 'public,other'`` would name one schema "public,other".
    """
    calls = [f"pg_catalog.set_config({quote_literal(name)}, {quote_literal(value)}, false)"
             for name, value in wanted.items() if current.get(name) != value]
    return "SELECT " + ", ".join(calls) if calls else None
