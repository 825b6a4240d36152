"""SHOW CHECKS (bouncer's own): why do clients of a database get errors, without the logs.

One row per pool (database, user), and one for each database no client has used yet: the
latest failed server connect or login with its reason and time, the latest success, and how
long new clients still get PgBouncer's "server login has been failing" at once.  With
``workers`` above 1, for the whole pooler: the latest failure and success in any worker, and
the longest any worker refuses for.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

from bouncer.admin import grammar, merge
from bouncer.admin.commands import Result, columns, on_every_worker, show, stats_allowed
from bouncer.admin.sockets import timestamp

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.admin.console import Console
    from bouncer.errors import ClientError
    from bouncer.app import App
    from bouncer.pool.pool import Pool
    from bouncer.pool.registry import DatabaseState

CHECKS_COLUMNS = columns(
    "sssisssssi", "database", "user", "host", "port", "status", "last_failure",
    "last_failure_sqlstate", "last_failure_time", "last_success_time", "refusing_for")


_NAMES = [name for name, _ in CHECKS_COLUMNS]
_FAILURE_TIME, _SUCCESS_TIME = _NAMES.index("last_failure_time"), _NAMES.index("last_success_time")


def _latest_failure(rows: Sequence[merge.Row], column: int) -> Any:
    """The failure's columns from the worker that failed last (times sort as text: they are
    written alike, to the second)."""
    failed = [row for row in rows if row[_FAILURE_TIME] is not None]
    return max(failed, key=lambda row: row[_FAILURE_TIME])[column] if failed else None


def _latest_success(rows: Sequence[merge.Row], column: int) -> Any:
    return max((row[column] for row in rows if row[column] is not None), default=None)


def _pooler_status(rows: Sequence[merge.Row], column: int) -> Any:
    """As :func:`pool_status`, from the latest failure and success in any worker."""
    failure = _latest_failure(rows, _FAILURE_TIME)
    success = _latest_success(rows, _SUCCESS_TIME)
    if failure is not None and (success is None or failure >= success):
        return "failing"
    return "ok" if success is not None else "untried"


_MERGE_POOLS = merge.keyed(2, [merge.first, merge.first, _pooler_status, _latest_failure,
                               _latest_failure, _latest_failure, _latest_success,
                               merge.largest], sort=False)


def _merge_checks(answers: Sequence[merge.Answer]) -> Result:
    """One row per pool of any worker, and per database no worker has a pool of (a worker
    whose clients have not used it has an ``untried`` row where another has the pool's)."""
    merged = _MERGE_POOLS(answers)
    used = {row[0] for row in merged.rows if row[1] is not None}
    rows = [row for row in merged.rows if row[1] is not None or row[0] not in used]
    return dataclasses.replace(merged, rows=_sorted(rows))


@stats_allowed
@on_every_worker(_merge_checks)
def show_checks(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    return show(CHECKS_COLUMNS, checks_table(console.app))


def checks_table(app: "App") -> List[List[Any]]:
    """SHOW CHECKS' rows (:data:`CHECKS_COLUMNS`)."""
    rows: List[List[Any]] = []
    for database in app.registry.databases.values():
        pools = list(database.pools.values())
        rows += [_pool_row(app, database, pool) for pool in pools] or [
            _untried_row(app, database)]
    return _sorted(rows)


def _sorted(rows: Sequence[merge.Row]) -> List[Any]:
    return sorted(rows, key=lambda row: (row[0], row[1] or ""))


def pool_status(pool: "Pool") -> str:
    """``failing`` when the pool's latest server connect or login failed, ``ok`` when it
    succeeded, ``untried`` before any attempt."""
    failure, success = pool.last_failure, pool.last_success
    if failure is not None and (success is None or failure[0] >= success):
        return "failing"
    return "ok" if success is not None else "untried"


def _pool_row(app: "App", database: "DatabaseState", pool: "Pool") -> List[Any]:
    failure, success = pool.last_failure, pool.last_success
    error = failure[1] if failure is not None else None
    return [
        database.name, pool.user.name, *_where(app, database), pool_status(pool),
        _reason(error) if error is not None else None,
        error.sqlstate if error is not None else None,
        _time(failure[0] if failure is not None else None), _time(success),
        math.ceil(pool.refusing_logins_for())]


def _untried_row(app: "App", database: "DatabaseState") -> List[Any]:
    return [database.name, None, *_where(app, database), "untried", None, None, None, None, 0]


def _where(app: "App", database: "DatabaseState") -> List[Any]:
    definition = database.definition
    host = ",".join(definition.host) or app.config.unix_socket_dir or "/tmp"
    return [host, definition.port]


def _reason(error: "ClientError") -> str:
    """The message the clients got, with its detail (which says what bouncer saw)."""
    return f"{error.message} ({error.detail})" if error.detail else error.message


def _time(epoch: Optional[float]) -> Optional[str]:
    return timestamp(epoch) if epoch is not None else None


COMMANDS = {"SHOW CHECKS": show_checks}
