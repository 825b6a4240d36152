"""Tracked session parameters, and the SET that makes a server match its new client.

PgBouncer tracks the parameters the server reports with ParameterStatus that clients commonly
set; when a client gets a server whose values differ (transaction mode), they are set again
before the client's query (PgBouncer's varcache.c).
"""
from __future__ import annotations

import functools
from typing import Dict, List, Mapping, Tuple

#: Always tracked; ``track_extra_parameters`` adds more (IntervalStyle by default).
BASE_TRACKED = ("client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings",
                "application_name")


#: The reported parameters whose names PostgreSQL spells in mixed case; it reports every other
#: one in lower case.
_MIXED_CASE = {name.lower(): name for name in ("DateStyle", "IntervalStyle", "TimeZone")}


@functools.lru_cache(maxsize=8)
def tracked_names(extra: Tuple[str, ...]) -> Mapping[str, str]:
    """Lower-case name -> the spelling servers report (GUC names are case-insensitive, so
    ``track_extra_parameters = intervalstyle`` tracks what servers report as IntervalStyle).

    Every login asks, with the same setting until a reload: computed once per value (do not
    change the mapping returned)."""
    names = {name.lower(): name for name in BASE_TRACKED}
    for name in extra:
        lower = name.strip().lower()
        if lower:
            names.setdefault(lower, _MIXED_CASE.get(lower, lower))
    return names


def quote_literal(value: str) -> str:
    """A SQL string literal (E'' form when there is a backslash, as PostgreSQL's quote_literal)."""
    escaped = value.replace("'", "''")
    if "\\" in value:
        return "E'" + escaped.replace("\\", "\\\\") + "'"
    return "'" + escaped + "'"


def differing(wanted: Mapping[str, str], current: Mapping[str, str]) -> Dict[str, str]:
    """The client's values that its new server does not have."""
    return {name: value for name, value in wanted.items() if current.get(name) != value}


def sync_query(changes: Mapping[str, str]) -> str:
    """The query that gives a server the values in *changes* (from :func:`differing`).

    ``set_config()`` reads a value as the startup packet's value is read: a list-valued
    setting such as ``search_path=public,other`` stays a list of two schemas, where
    ``SET search_path = 'public,other'`` would name one schema "public,other".
    """
    return "SELECT " + ", ".join(
        f"pg_catalog.set_config({quote_literal(name)}, {quote_literal(value)}, false)"
        for name, value in changes.items())


def described(changes: Mapping[str, str]) -> str:
    """*changes* as the SET statements PgBouncer's log shows for them."""
    return " ".join(f"SET {name}={quote_literal(value)};" for name, value in changes.items())


def settle(client_vars: Dict[str, str], server_params: Dict[str, str],
           applied: Mapping[str, str]) -> List[Tuple[str, str, str]]:
    """After *applied* reached the server: make both sides agree, so that the next
    transaction sets nothing again (PgBouncer's varcache_set_canonical).

    A parameter the server reports holds the server's canonical spelling of the value
    (``ISO`` is reported as ``ISO, MDY``; PostgreSQL 14+ reports nothing when a SET changes
    nothing): the client takes it.  One the server never reported (search_path before
    PostgreSQL 18) is recorded on the server side as set.  Returns (name, client's value,
    canonical value) of each value the client took.
    """
    canonical = []
    for name, value in applied.items():
        reported = server_params.get(name)
        if reported is None:
            server_params[name] = value
        elif reported != value:
            canonical.append((name, value, reported))
            client_vars[name] = reported
    return canonical
