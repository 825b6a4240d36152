"""The console's one reply for a pooler of several workers (bouncer.admin.merge), and the
SHOW commands' merges of it."""
from __future__ import annotations

import pytest

from bouncer.admin import checks, show, sockets
from bouncer.admin.commands import AdminError, Result, every_worker_combine
from bouncer.admin.merge import Answer, all_acted, all_reloaded, all_stopped, union
from bouncer.pool.stats import FIELDS


def answers(*tables, columns=(("name", 25), ("value", 23))):
    return [Answer(index, result=Result("SHOW", list(columns), rows))
            for index, rows in enumerate(tables, start=1)]


def combine_of(handler):
    combine = every_worker_combine(handler)
    assert combine is not None
    return combine


def pool_row(database, cl_active, maxwait=0, maxwait_us=0, pool_size=20):
    counts = [cl_active] + [1] * 10  # cl_waiting ... sv_login
    return [database, "u", *counts, maxwait, maxwait_us, "session", None, pool_size]


def test_pools_add_counts_keep_settings_and_take_the_longest_wait() -> None:
    merged = combine_of(show.show_pools)(answers(
        [pool_row("a", 2, 1, 900_000), pool_row("b", 1)],
        [pool_row("a", 3, 2, 5, pool_size=99), pool_row("c", 4)],
        columns=show.POOL_COLUMNS))
    assert [row[0] for row in merged.rows] == ["a", "b", "c"]
    a = merged.rows[0]
    assert a[2] == 5 and a[3:13] == [2] * 10
    assert (a[13], a[14]) == (2, 5)  # worker 2's wait is longer, both parts from it
    assert a[17] == 20  # this worker's setting
    assert tuple(merged.columns) == show.POOL_COLUMNS  # no column added


def stats_row(database, totals, averages):
    return [database, *totals, *averages]


def test_stats_totals_add_up_and_averages_are_weighted_by_their_counts() -> None:
    def averages(xact_count, xact_time, assignments, wait_time):
        values = dict.fromkeys(FIELDS, 1)
        values.update(xact_count=xact_count, xact_time=xact_time,
                      server_assignment_count=assignments, wait_time=wait_time)
        return [values[field] for field in FIELDS]
    one = stats_row("db", range(12), averages(10, 100, 1, 50))
    two = stats_row("db", range(12), averages(30, 200, 3, 10))
    merged = combine_of(show.show_stats)(answers([one], [two], columns=show.STATS_COLUMNS))
    row = merged.rows[0]
    assert row[1:13] == [2 * n for n in range(12)]
    avg = dict(zip(FIELDS, row[13:]))
    assert avg["xact_count"] == 40 and avg["bytes_sent"] == 2
    assert avg["xact_time"] == (10 * 100 + 30 * 200) // 40
    assert avg["wait_time"] == (1 * 50 + 3 * 10) // 4
    assert avg["query_time"] == 1  # query_count 1 in both, query_time 1 in both


def test_show_totals_merge_as_the_databases_of_one_worker_do() -> None:
    totals_rows = [[name, 1] for name in show._TOTALS_ROW_NAMES]
    merged = combine_of(show.show_totals)(answers(totals_rows, totals_rows,
                                                  columns=show.TOTALS_COLUMNS))
    values = dict(merged.rows)
    assert values["total_xact_count"] == 2 and values["avg_xact_count"] == 2
    assert values["avg_xact_time"] == 1  # a time: weighted, not added


def test_lists_count_shared_objects_once_and_connections_in_every_worker() -> None:
    merged = combine_of(show.show_lists)(answers(
        [["databases", 3], ["used_clients", 5]], [["databases", 2], ["used_clients", 7]],
        columns=show.LISTS_COLUMNS))
    assert merged.rows == [["databases", 3], ["used_clients", 12]]


def test_connection_lists_are_a_union_with_the_worker_at_the_end() -> None:
    cols = sockets.SOCKET_COLUMNS
    row = ["C"] + ["x"] * (len(cols) - 1)
    merged = combine_of(sockets.show_clients)(answers([row], [row, row], columns=cols))
    assert tuple(merged.columns[:-1]) == cols and merged.columns[-1][0] == "worker"
    assert [r[-1] for r in merged.rows] == [1, 2, 2]
    assert all(r[:-1] == row for r in merged.rows)


def test_a_worker_that_did_not_answer_is_left_out_with_a_notice() -> None:
    ok = answers([["a", 1]])
    merged = union([*ok, Answer(2, missing="connection refused")])
    assert [r[-1] for r in merged.rows] == [1]
    assert [n.message for n in merged.notices] == [
        "worker 2 did not answer: connection refused; its rows are left out"]


def test_an_action_done_everywhere_replies_as_one_process() -> None:
    done = Result("KILL")
    assert all_acted([Answer(1, result=done), Answer(2, result=Result("KILL"))]) is done


def test_an_action_refused_alike_everywhere_is_that_refusal() -> None:
    refusal = AdminError("no such database: x")
    with pytest.raises(AdminError) as raised:
        all_acted([Answer(1, error=refusal), Answer(2, error=AdminError("no such database: x"))])
    assert raised.value is refusal


@pytest.mark.parametrize("other", [Answer(2, result=Result("KILL")),
                                   Answer(2, missing="connection refused")])
def test_a_refusal_here_is_not_the_whole_story_when_another_worker_did_otherwise(other) -> None:
    with pytest.raises(AdminError, match="not done in every worker: worker 1: already paused"):
        all_acted([Answer(1, error=AdminError("already paused")), other])


def test_an_action_a_worker_missed_is_an_error_naming_it() -> None:
    with pytest.raises(AdminError) as raised:
        all_acted([Answer(1, result=Result("KILL")), Answer(2, missing="no reply within 5 s")])
    assert raised.value.message == ("not done in every worker: worker 2 did not answer: "
                                    "no reply within 5 s")
    assert raised.value.detail == "done in worker 1"


def test_the_poolers_stats_line_counts_every_database_and_a_restart_from_zero() -> None:
    from bouncer.pool.stats import FIELDS, averages, counted_from, grand_totals
    rows = [{name: 10 for name in FIELDS}, {name: "5" for name in FIELDS}]  # numeric text too
    assert grand_totals(rows) == (15,) * len(FIELDS)
    old, new = (100, 40) + (0,) * (len(FIELDS) - 2), (160, 10) + (0,) * (len(FIELDS) - 2)
    start = counted_from(old, new)  # the second count fell: a worker restarted from zero
    assert start[:2] == (100, 0)
    rates = averages(start, new, 2.0)
    assert (rates[FIELDS[0]], rates[FIELDS[1]]) == (30, 5)


def test_a_reload_counts_a_worker_being_restarted_as_reloaded_but_not_a_hung_one() -> None:
    done = Result("RELOAD")
    assert all_reloaded([Answer(1, result=done),
                         Answer(2, missing="connection refused", gone=True)]) is done
    with pytest.raises(AdminError, match="worker 2 did not answer: no reply within 5 s"):
        all_reloaded([Answer(1, result=done), Answer(2, missing="no reply within 5 s")])


def test_a_shutdown_counts_a_worker_gone_as_stopped_and_names_one_that_did_not_answer() -> None:
    here = Result("SHUTDOWN", after=print)
    merged = all_stopped([Answer(1, result=here),
                          Answer(2, missing="closed the connection before answering", gone=True),
                          Answer(3, missing="no reply within 5 s")])
    assert merged.tag == "SHUTDOWN" and merged.after is print  # this worker still exits
    assert [n.message for n in merged.notices] == [
        "worker 3 did not answer: no reply within 5 s; the supervisor passed the shutdown on "
        "to it"]


def state(paused, suspended):
    return [["active", "no" if paused or suspended else "yes"],
            ["paused", "yes" if paused else "no"], ["suspended", "yes" if suspended else "no"]]


def test_the_poolers_state_is_paused_when_any_worker_is_and_active_when_all_are() -> None:
    merge_state = combine_of(show.show_state)
    paused = merge_state(answers(state(False, False), state(True, False),
                                 columns=show.STATE_COLUMNS))
    assert paused.rows == [["active", "no"], ["paused", "yes"], ["suspended", "no"]]
    active = merge_state(answers(state(False, False), state(False, False),
                                 columns=show.STATE_COLUMNS))
    assert dict(active.rows)["active"] == "yes"


def test_dns_hosts_are_one_row_each_with_the_freshest_answer() -> None:
    merged = combine_of(show.show_dns_hosts)(answers(
        [["db1", 10, "10.0.0.1:5432"]], [["db1", 50, "10.0.0.2:5432"], ["db2", 5, "x:1"]],
        columns=show.DNS_HOSTS_COLUMNS))
    assert merged.rows == [["db1", 50, "10.0.0.2:5432"], ["db2", 5, "x:1"]]


def check_row(database, user, failure=None, success=None, refusing=0):
    failed = failure is not None
    return [database, user, "h", 5432, "?", "boom" if failed else None,
            "08006" if failed else None, failure, success, refusing]


def test_checks_take_the_latest_failure_and_drop_an_untried_row_where_a_pool_is_known() -> None:
    merged = combine_of(checks.show_checks)(answers(
        [check_row("a", "u", "2026-01-01 10:00:00 UTC", "2026-01-01 10:00:05 UTC"),
         check_row("b", None)],
        [check_row("a", "u", "2026-01-01 10:00:09 UTC", refusing=3), check_row("b", "v"),
         check_row("c", None)],
        columns=checks.CHECKS_COLUMNS))
    assert [(row[0], row[1]) for row in merged.rows] == [("a", "u"), ("b", "v"), ("c", None)]
    a = merged.rows[0]
    assert a[4:] == ["failing", "boom", "08006", "2026-01-01 10:00:09 UTC",
                     "2026-01-01 10:00:05 UTC", 3]
    assert merged.rows[1][4] == "untried"
