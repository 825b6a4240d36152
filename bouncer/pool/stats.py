"""Traffic counters behind SHOW STATS, and the periodic ``stats:`` log line.

Counters are plain attributes on a ``__slots__`` object: the relay bumps them per chunk, so
they must cost no more than an attribute increment.  Times are in microseconds, as PgBouncer's.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Tuple

#: SHOW STATS_TOTALS column names, in PgBouncer's order (after ``database``).
FIELDS = ("server_assignment_count", "xact_count", "query_count", "bytes_received",
          "bytes_sent", "xact_time", "query_time", "wait_time", "client_parse_count",
          "server_parse_count", "bind_count", "client_login_count")


#: The averages that are times, and the count each is an average over (the rest are rates).
TIME_WEIGHTS = {"xact_time": "xact_count", "query_time": "query_count",
                "wait_time": "server_assignment_count"}


class Counters:
    """Totals since start for one database (all its pools)."""

    __slots__ = FIELDS
    # For the type checker only (annotations make no class attributes): one per FIELDS name.
    server_assignment_count: int
    xact_count: int
    query_count: int
    bytes_received: int
    bytes_sent: int
    xact_time: int
    query_time: int
    wait_time: int
    client_parse_count: int
    server_parse_count: int
    bind_count: int
    client_login_count: int

    def __init__(self) -> None:
        for name in FIELDS:
            setattr(self, name, 0)

    def snapshot(self) -> Tuple[int, ...]:
        return tuple(getattr(self, name) for name in FIELDS)

    def add(self, other: "Counters") -> None:
        for name in FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def averages(old: Tuple[int, ...], new: Tuple[int, ...], seconds: float) -> Dict[str, int]:
    """Per-second rates and per-transaction/query times over one stats period, as PgBouncer does.

    Counts and bytes are per second; ``xact_time`` is per transaction, ``query_time`` per query
    and ``wait_time`` per server assignment (how long a client waited, on average); none of
    them averaged over an empty period.
    """
    delta = dict(zip(FIELDS, (n - o for n, o in zip(new, old))))
    seconds = max(seconds, 1e-9)
    result = {name: int(delta[name] / seconds) for name in FIELDS}
    for time_field, count_field in TIME_WEIGHTS.items():
        count = delta[count_field]
        result[time_field] = delta[time_field] // count if count else 0
    return result


def grand_totals(rows: Iterable[Mapping[str, Any]]) -> Tuple[int, ...]:
    """SHOW STATS_TOTALS rows (one per database) added up, in :data:`FIELDS` order."""
    return tuple(sum(int(row[name]) for row in rows) for name in FIELDS)


def counted_from(old: Tuple[int, ...], new: Tuple[int, ...]) -> Tuple[int, ...]:
    """*old* totals as the start of a period ending at *new*; a count that went down (a
    worker restarted from zero) counts from zero."""
    return tuple(before if before <= now else 0 for before, now in zip(old, new))


def stats_line(avg: Dict[str, int]) -> str:
    """The periodic log line, in PgBouncer's exact wording (pgbadger parses it)."""
    return ("stats: {xact_count} xacts/s, {query_count} queries/s, "
            "{client_parse_count} client parses/s, {server_parse_count} server parses/s, "
            "{bind_count} binds/s, in {bytes_received} B/s, out {bytes_sent} B/s, "
            "xact {xact_time} us, query {query_time} us, wait {wait_time} us").format(**avg)


class StatsPeriod:
    """Remembers the totals at the start of the current period, per database."""

    def __init__(self) -> None:
        self.previous: Dict[str, Tuple[int, ...]] = {}
        self.current_averages: Dict[str, Dict[str, int]] = {}
        #: The all-database averages of the last period (SHOW TOTALS, the stats line).
        self.total_averages: Dict[str, int] = averages((0,) * len(FIELDS), (0,) * len(FIELDS), 1)

    def roll(self, totals: Iterable[Tuple[str, Counters]], seconds: float) -> Dict[str, int]:
        """Close a period: compute each database's averages and the all-database line values."""
        grand_old: List[int] = [0] * len(FIELDS)
        grand_new: List[int] = [0] * len(FIELDS)
        for name, counters in totals:
            new = counters.snapshot()
            old = self.previous.get(name, (0,) * len(FIELDS))
            self.current_averages[name] = averages(old, new, seconds)
            self.previous[name] = new
            grand_old = [a + b for a, b in zip(grand_old, old)]
            grand_new = [a + b for a, b in zip(grand_new, new)]
        self.total_averages = averages(tuple(grand_old), tuple(grand_new), seconds)
        return self.total_averages
