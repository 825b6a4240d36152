"""One reply for the whole pooler from the answers of its workers (``workers`` above 1).

Pure functions: the answers come in, already collected by
:mod:`bouncer.admin.worker_channel`, the answer of the worker the console user reached
first.  Three shapes of command:

- rows per connection (SHOW CLIENTS, SERVERS, SOCKETS): :func:`union`, every worker's rows
  with a ``worker`` column (its index) at the end, PgBouncer's columns unchanged before it;
- rows per database, pool, user or list (SHOW POOLS, STATS, USERS...): :func:`keyed`, one row
  per key, each column merged by its :data:`Rule` (counts add up, settings are the same
  everywhere, averages are weighted by their counts, the longest wait wins);
- actions (KILL, SET, PAUSE db...): :func:`all_acted`, the reply of one process when every
  worker acted, else an error naming the workers that did not; RELOAD: :func:`all_reloaded`,
  for which a worker being restarted has acted; SHUTDOWN: :func:`all_stopped`, which names
  them in a NOTICE instead (the supervisor passes the shutdown on to them).

A worker that did not answer (dead, restarting, too slow) leaves its rows out of a SHOW and
the reply says so in a NOTICE; an action it missed is an ERROR, since the operator must know
(but for SHUTDOWN, which reaches it all the same).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from bouncer.admin.commands import AdminError, Notice, Result, columns
from bouncer.errors import ClientError
from bouncer.pool.stats import FIELDS, TIME_WEIGHTS

Row = Sequence[Any]
#: How one column is merged: ``rule(rows, column)``, the rows of one key from every worker
#: that has it (this worker's first), and the column's index.
Rule = Callable[[Sequence[Row], int], Any]

#: Added after PgBouncer's columns of the rows per connection.
WORKER_COLUMNS = columns("i", "worker")


@dataclass(frozen=True)
class Answer:
    """One worker's answer to a command: exactly one of the three is set.

    :param result: what the command returned there.
    :param error: the command failed there.
    :param missing: the worker did not answer; why, in a few words.
    :param gone: with *missing*: the worker is not running (its control socket refused the
        connection, or closed it before answering), rather than too slow to answer.
    """

    worker: int
    result: Optional[Result] = None
    error: Optional[ClientError] = None
    missing: Optional[str] = None
    gone: bool = False

    def failure(self) -> str:
        """Why this worker has no result, as a line of a NOTICE or an ERROR."""
        if self.error is not None:
            return f"worker {self.worker}: {self.error.message}"
        return f"worker {self.worker} did not answer: {self.missing}"


# -- rules -----------------------------------------------------------------------------------

def first(rows: Sequence[Row], column: int) -> Any:
    """A setting, the same in every worker: this worker's value."""
    return rows[0][column]


def total(rows: Sequence[Row], column: int) -> Any:
    """A count: the sum."""
    return sum(row[column] for row in rows)


def largest(rows: Sequence[Row], column: int) -> Any:
    """A flag (paused, disabled) or a count of shared objects: the largest."""
    return max(row[column] for row in rows)


def longest_wait(seconds_column: int) -> Rule:
    """``maxwait`` and ``maxwait_us`` make one duration: both come from the worker whose
    client has waited longest."""
    def rule(rows: Sequence[Row], column: int) -> Any:
        row = max(rows, key=lambda r: (r[seconds_column], r[seconds_column + 1]))
        return row[column]
    return rule


def weighted_by(count_column: int) -> Rule:
    """An average time per transaction, query or assignment: weighted by each worker's rate
    of those, which is the time the period's totals give."""
    def rule(rows: Sequence[Row], column: int) -> Any:
        count = sum(row[count_column] for row in rows)
        weighted = sum(row[column] * row[count_column] for row in rows)
        return weighted // count if count else 0
    return rule


def average_rules(offset: int) -> List[Rule]:
    """Rules for a block of averages in :data:`~bouncer.pool.stats.FIELDS` order starting at
    column *offset*: rates add up, times are weighted by their counts."""
    return [weighted_by(offset + FIELDS.index(TIME_WEIGHTS[field])) if field in TIME_WEIGHTS
            else total for field in FIELDS]


# -- combines --------------------------------------------------------------------------------

def results_of(answers: Sequence[Answer]) -> Tuple[Result, List[Result], List[Notice]]:
    """This worker's result, every result, and a NOTICE for each worker without one.

    :raises ClientError: the command failed in this worker (it would have alone too).
    """
    local = answers[0]
    if local.result is None:
        raise local.error or AdminError(local.failure())
    results = [answer.result for answer in answers if answer.result is not None]
    notices = [Notice(f"{answer.failure()}; its rows are left out")
               for answer in answers if answer.result is None]
    return local.result, results, notices


def union(answers: Sequence[Answer]) -> Result:
    """Every worker's rows, each with its worker's index appended."""
    local, _, notices = results_of(answers)
    rows = [[*row, answer.worker] for answer in answers if answer.result is not None
            for row in answer.result.rows]
    return Result(local.tag, [*local.columns, *WORKER_COLUMNS], rows, [*local.notices, *notices])


def keyed(key_width: int, rules: Sequence[Rule], sort: bool = True) -> Callable[..., Result]:
    """A combine for rows identified by their first *key_width* columns; *rules* merge the
    columns after them, one rule each.  Rows keep the order in which their keys first appear
    (this worker's first), then are sorted by key when *sort* (as the tables are, by name)."""
    def combine(answers: Sequence[Answer]) -> Result:
        local, results, notices = results_of(answers)
        by_key: Dict[Tuple[Any, ...], List[Row]] = {}
        for result in results:
            for row in result.rows:
                by_key.setdefault(tuple(row[:key_width]), []).append(row)
        rows = [merge_rows(key, found, rules) for key, found in by_key.items()]
        if sort:
            rows.sort(key=lambda row: tuple(row[:key_width]))
        return Result(local.tag, local.columns, rows, [*local.notices, *notices])
    return combine


def merge_rows(key: Tuple[Any, ...], rows: Sequence[Row], rules: Sequence[Rule]) -> List[Any]:
    """One row of *key* from several rows of it (of workers, or of databases)."""
    width = len(key)
    return [*key, *(rule(rows, width + index) for index, rule in enumerate(rules))]


def all_acted(answers: Sequence[Answer]) -> Result:
    """This worker's reply when every worker acted.  When they all refused alike, the
    refusal, as one process gives it; otherwise an error that names each worker that did not
    act, and why.

    :raises ClientError: some worker did not act.
    """
    local = answers[0]
    failed = [answer for answer in answers if answer.result is None]
    if not failed:
        assert local.result is not None
        return local.result
    replies = {answer.error.message if answer.error is not None else None for answer in answers}
    if local.error is not None and replies == {local.error.message}:
        raise local.error
    acted = [str(answer.worker) for answer in answers if answer.result is not None]
    raise AdminError("not done in every worker: " + "; ".join(a.failure() for a in failed),
                     detail=f"done in worker {', '.join(acted)}" if acted else None)


def all_reloaded(answers: Sequence[Answer]) -> Result:
    """RELOAD's reply: as :func:`all_acted`, but a worker that is gone (being restarted)
    counts as reloaded: it reads the files as it starts.

    :raises ClientError: some worker did not reload.
    """
    local = answers[0].result
    if local is None:
        return all_acted(answers)
    return all_acted([Answer(answer.worker, result=local) if answer.gone else answer
                      for answer in answers])


def all_stopped(answers: Sequence[Answer]) -> Result:
    """SHUTDOWN's reply: this worker's, every worker having stopped accepting.  A worker that
    is gone has stopped too (an immediate shutdown exits once it has answered, or before when
    the supervisor's word reached it first).  One that did not answer gets the shutdown from
    the supervisor, which passes it on to every worker, so the shutdown goes on: a NOTICE
    names it, where an ERROR would say that the shutdown failed.
    """
    local, _, _ = results_of(answers)
    notices = [Notice(f"{answer.failure()}; the supervisor passed the shutdown on to it")
               for answer in answers if answer.result is None and not answer.gone]
    return dataclasses.replace(local, notices=[*local.notices, *notices])
