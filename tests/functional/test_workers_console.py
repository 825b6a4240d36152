"""``workers = 2``: the admin console of either worker answers and acts for the whole pooler.

Clients are placed on a chosen worker through its private socket (.s.PGSQL.<index>), and the
console of a chosen worker is reached the same way, so nothing depends on how the kernel
spreads connections.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import threading
import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from bouncer.admin.worker_channel import control_socket_path
from bouncer.testing.ini import common_ini
from bouncer.testing.ports import wait_until
from bouncer.testing.process import BouncerProcess
# pooler: a fixture (two workers, both serving)
from tests.functional.test_workers import (WORKERS, pooler, private_dir,  # noqa: F401
                                           process_gone, refuses_connections, session,
                                           show_config, worker_pids)
from tests.support import pgwire


def console(pooler: BouncerProcess, index: int, sql: str
            ) -> Tuple[List[str], List[Dict[str, Any]], List[str]]:
    """Column names, rows as mappings and notices of *sql* on worker *index*'s console."""
    conn = pooler.connect(dbname="pgbouncer", user="scramuser", host=private_dir(pooler),
                          port=index)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(sql)
            if cursor.description is None:
                return [], [], list(conn.notices)
            names = [column.name for column in cursor.description]
            return names, [dict(zip(names, row)) for row in cursor.fetchall()], list(conn.notices)
    finally:
        conn.close()


def clients_on(pooler: BouncerProcess, counts: Dict[int, int]) -> List[Any]:
    """Logged-in md5user clients of testdb: *counts* of them on each worker."""
    held = []
    for index, count in counts.items():
        for _ in range(count):
            sock, worker, _ = session(private_dir(pooler), index)
            assert worker == index
            held.append(sock)
    return held


def rows_of_testdb(rows: List[Dict[str, Any]], key: str = "database") -> List[Dict[str, Any]]:
    return [row for row in rows if row[key] == "testdb"]


@pytest.mark.parametrize("index", WORKERS)
def test_show_clients_lists_every_workers_clients_with_their_worker(pooler, index) -> None:
    held = clients_on(pooler, {1: 2, 2: 3})
    names, rows, notices = console(pooler, index, "SHOW CLIENTS")
    assert names[-2:] == ["id", "worker"] and notices == []
    workers = sorted(row["worker"] for row in rows_of_testdb(rows))
    assert workers == [1, 1, 2, 2, 2]
    assert len({row["id"] for row in rows}) == len(rows)  # ids name one client in the pooler
    for sock in held:
        sock.close()


def test_show_pools_and_databases_add_up_the_workers(pooler) -> None:
    held = clients_on(pooler, {1: 2, 2: 3})
    for index in WORKERS:
        _, pools, _ = console(pooler, index, "SHOW POOLS")
        (pool,) = rows_of_testdb(pools)
        assert pool["cl_active"] == 5 and pool["cl_waiting"] == 0
        assert "worker" not in pool
        _, databases, _ = console(pooler, index, "SHOW DATABASES")
        (database,) = rows_of_testdb(databases, "name")
        assert database["current_client_connections"] == 5
    for sock in held:
        sock.close()


def test_show_stats_totals_add_up_and_servers_are_listed_with_their_worker(pooler) -> None:
    for index, queries in ((1, 3), (2, 4)):
        sock, _, _ = session(private_dir(pooler), index)
        for _ in range(queries):
            assert pgwire.first_error(pgwire.run_query(sock, "SELECT 1")) is None
        sock.close()
    for index in WORKERS:
        _, totals, _ = console(pooler, index, "SHOW STATS_TOTALS")
        (row,) = rows_of_testdb(totals)
        assert row["query_count"] == 7 and row["client_login_count"] == 2
        _, stats, _ = console(pooler, index, "SHOW STATS")
        assert rows_of_testdb(stats)[0]["total_query_count"] == 7
        _, lines, _ = console(pooler, index, "SHOW TOTALS")
        assert dict((row["name"], row["value"]) for row in lines)["total_query_count"] >= 7
        _, servers, _ = console(pooler, index, "SHOW SERVERS")  # each kept its server
        assert sorted(row["worker"] for row in rows_of_testdb(servers)) == [1, 2]


def test_kill_on_one_worker_ends_the_clients_of_both(pooler) -> None:
    held = clients_on(pooler, {1: 1, 2: 1})
    console(pooler, 1, "KILL testdb")
    assert all(pgwire.closed_by_peer(sock, 5) for sock in held)
    console(pooler, 2, "RESUME testdb")  # KILL leaves the database paused, in both
    again = clients_on(pooler, {1: 1, 2: 1})
    for sock in again:
        assert pgwire.first_error(pgwire.run_query(sock, "SELECT 1")) is None
        sock.close()


def test_pause_of_a_database_replies_once_every_worker_has_paused(pooler) -> None:
    waiting, busy = clients_on(pooler, {1: 1, 2: 1})
    assert pgwire.first_error(pgwire.run_query(busy, "SELECT 1")) is None  # holds its server
    paused = threading.Event()
    pausing = threading.Thread(target=lambda: (console(pooler, 1, "PAUSE testdb"), paused.set()))
    pausing.start()
    # Longer than the channel's timeout: worker 2 says it is still at work, so it is waited for.
    assert not paused.wait(6.5)
    busy.close()  # session mode: the server is released when its client leaves
    assert paused.wait(5)
    pausing.join()
    waiting.sendall(pgwire.query("SELECT 1"))
    waiting.settimeout(1)
    with pytest.raises(OSError):  # held by the pause (a timeout is an OSError)
        pgwire.read_message(waiting)
    console(pooler, 2, "RESUME testdb")
    waiting.settimeout(5)
    assert pgwire.first_error(pgwire.read_until(waiting, b"Z")) is None
    waiting.close()


def test_disable_on_one_worker_refuses_new_clients_of_both(pooler) -> None:
    console(pooler, 1, "DISABLE testdb")
    for index in WORKERS:
        with pytest.raises(AssertionError, match="login failed"):
            session(private_dir(pooler), index)
    console(pooler, 2, "ENABLE testdb")
    for sock in clients_on(pooler, {1: 1, 2: 1}):
        sock.close()


def test_suspend_holds_every_worker_until_its_admin_leaves(pooler) -> None:
    admin = pooler.connect(dbname="pgbouncer", user="scramuser", host=private_dir(pooler),
                           port=1)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SUSPEND")
    late = pgwire.connect(private_dir(pooler), 2)  # waits in the backlog: nobody accepts
    late.sendall(pgwire.startup({"user": "md5user", "database": "testdb"}))
    late.settimeout(1)
    with pytest.raises(OSError):
        late.recv(1)
    admin.close()  # "admin disappeared when suspended": every worker resumes
    late.settimeout(5)
    assert late.recv(1) == b"R"  # worker 2 accepted it and asks for the password
    late.close()


def test_kill_client_reaches_the_worker_that_owns_the_client(pooler) -> None:
    (held,) = clients_on(pooler, {2: 1})
    _, rows, _ = console(pooler, 1, "SHOW CLIENTS")
    (client,) = rows_of_testdb(rows)
    assert client["worker"] == 2
    console(pooler, 1, f"KILL_CLIENT {client['id']}")
    assert pgwire.closed_by_peer(held, 5)


def test_set_on_one_worker_holds_in_the_other(pooler) -> None:
    console(pooler, 1, "SET query_wait_timeout = 91")
    assert show_config(pooler, 2, "query_wait_timeout") == "91"
    console(pooler, 2, "SET USER md5user = 'pool_size=7'")
    _, users, _ = console(pooler, 1, "SHOW USERS")  # worker 1's own settings come first
    (user,) = [row for row in users if row["name"] == "md5user"]
    assert user["pool_size"].strip() == "7"


def two_workers(bouncer_factory: Any, ini: str) -> BouncerProcess:
    pooler = bouncer_factory(ini)
    for index in WORKERS:
        pooler.wait_for_log(rf"worker {index} \(pid \d+\) is serving")
    return pooler


def test_a_stats_user_cannot_set_in_another_worker(pg, bouncer_factory) -> None:
    pooler = two_workers(bouncer_factory, common_ini(pg, workers=2, stats_users="md5user"))
    with pytest.raises(Exception, match="admin access needed"):
        pooler.admin("SET query_wait_timeout = 93", user="md5user", host=private_dir(pooler),
                     port=1)
    assert show_config(pooler, 2, "query_wait_timeout") != "93"


def test_a_bad_set_is_refused_as_by_one_process(pooler) -> None:
    with pytest.raises(Exception, match="SET failed"):
        console(pooler, 1, "SET query_wait_timeout = soon")
    assert show_config(pooler, 2, "query_wait_timeout") != "soon"


def test_reload_of_a_bad_file_is_refused_as_by_one_process(pooler, pg) -> None:
    since = len(pooler.log_text())
    pooler.write_ini(common_ini(pg, workers=2, query_wait_timeout="soon"))
    with pytest.raises(Exception, match="RELOAD failed"):
        console(pooler, 1, "RELOAD")
    assert "got SIGHUP" not in pooler.log_text()[since:]  # no worker was asked to reload
    pooler.write_ini(common_ini(pg, workers=2, query_wait_timeout=79))
    console(pooler, 1, "RELOAD")
    assert show_config(pooler, 2, "query_wait_timeout") == "79"


@contextlib.contextmanager
def stopped(pid: int, seconds: float = 60) -> Iterator[None]:
    """Process *pid* stopped (SIGSTOP) for *seconds*, or until the block ends: what asks it
    meanwhile waits for it, or gives up on it."""
    os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(seconds, os.kill, (pid, signal.SIGCONT))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        os.kill(pid, signal.SIGCONT)


def test_reload_replies_once_every_worker_has_reloaded(pooler, pg) -> None:
    pooler.write_ini(common_ini(pg, workers=2, query_wait_timeout=81))
    with stopped(pooler.pid):  # nothing can go through the supervisor
        console(pooler, 1, "RELOAD")
        assert show_config(pooler, 2, "query_wait_timeout") == "81"


def test_reload_names_a_worker_that_did_not_reload(pooler, pg) -> None:
    pooler.write_ini(common_ini(pg, workers=2, query_wait_timeout=82))
    with stopped(worker_pids(pooler)[2]):
        with pytest.raises(Exception, match="not done in every worker: worker 2 did not "
                                             "answer: no reply within 5 s"):
            console(pooler, 1, "RELOAD")
    assert show_config(pooler, 1, "query_wait_timeout") == "82"


def test_reload_counts_a_worker_being_restarted_as_reloaded(pooler, pg) -> None:
    os.kill(worker_pids(pooler)[2], signal.SIGKILL)  # it will start with the file as it is
    pooler.write_ini(common_ini(pg, workers=2, query_wait_timeout=83))
    _, _, notices = console(pooler, 1, "RELOAD")
    assert notices == [] and show_config(pooler, 1, "query_wait_timeout") == "83"


def test_a_waiting_shutdown_replies_once_nobody_new_gets_in(pooler) -> None:
    (held,) = clients_on(pooler, {2: 1})
    started = time.monotonic()
    with stopped(pooler.pid, seconds=1):  # the reply waits for the supervisor to stop
        _, _, notices = console(pooler, 1, "SHUTDOWN WAIT_FOR_CLIENTS")
        assert refuses_connections(pooler) and notices == []
    assert time.monotonic() - started > 1
    assert pgwire.first_error(pgwire.run_query(held, "SELECT 1")) is None  # served until it goes
    assert pooler.alive
    held.close()
    assert pooler.wait(10) == 0
    assert "restarting" not in pooler.log_text()


def test_a_waiting_shutdown_still_lets_the_console_in_on_the_unix_socket(pooler) -> None:
    (held,) = clients_on(pooler, {2: 1})
    idle = worker_pids(pooler)[1]
    console(pooler, 1, "SHUTDOWN WAIT_FOR_CLIENTS")
    assert wait_until(lambda: process_gone(idle), 10)  # nothing to wait for in worker 1
    conn = pooler.connect(dbname="pgbouncer", user="scramuser", host=pooler.socket_dir)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SHOW CLIENTS")
            assert ("md5user", "testdb") in [tuple(row[1:3]) for row in cursor.fetchall()]
    finally:
        conn.close()
    held.close()
    assert pooler.wait(10) == 0


def test_shutdown_replies_once_every_worker_has_stopped(pooler) -> None:
    with stopped(pooler.pid, seconds=1):
        console(pooler, 2, "SHUTDOWN")
        assert refuses_connections(pooler)
    assert pooler.wait(10) == 0
    assert "restarting" not in pooler.log_text()


def test_a_shutdown_whose_console_user_left_before_the_reply_still_ends(pooler) -> None:
    with stopped(pooler.pid, seconds=1):  # the reply waits: the user is gone when it goes
        sock, _ = pgwire.open_session(private_dir(pooler), 1, "scramuser", "scrampass",
                                      "pgbouncer")
        sock.sendall(pgwire.query("SHUTDOWN"))
        time.sleep(0.2)  # it has begun: worker 1 stopped accepting
        sock.close()
    assert pooler.wait(10) == 0


def test_a_worker_the_shutdown_missed_is_named_and_still_stops(pooler) -> None:
    with stopped(worker_pids(pooler)[2]):
        _, _, notices = console(pooler, 1, "SHUTDOWN WAIT_FOR_SERVERS")
        assert len(notices) == 1 and ("worker 2 did not answer: no reply within 5 s; the "
                                      "supervisor passed the shutdown on to it") in notices[0]
    assert pooler.wait(10) == 0  # once it runs again, as the supervisor passed it on


def test_a_killed_worker_does_not_hang_show(pooler) -> None:
    held = clients_on(pooler, {1: 1})
    os.kill(worker_pids(pooler)[2], signal.SIGKILL)
    started = time.monotonic()
    _, rows, notices = console(pooler, 1, "SHOW CLIENTS")
    assert time.monotonic() - started < 3
    assert [row["worker"] for row in rows_of_testdb(rows)] == [1]
    # Answered before the supervisor's restart (0.5 s after a quick death) is serving; the
    # worker refused, or reset a connection made while it was dying.
    assert len(notices) == 1 and "worker 2 did not answer: connection re" in notices[0]
    held[0].close()


def test_a_hung_worker_is_named_after_the_timeout(pooler) -> None:
    pid = worker_pids(pooler)[2]
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        _, rows, notices = console(pooler, 1, "SHOW POOLS")
        assert 4 < time.monotonic() - started < 10
        assert any(row["database"] == "pgbouncer" for row in rows)  # worker 1's rows
        assert any("worker 2 did not answer: no reply within 5 s" in n for n in notices)
        with pytest.raises(Exception, match="not done in every worker: worker 2"):
            console(pooler, 1, "RECONNECT testdb")
    finally:
        os.kill(pid, signal.SIGCONT)


def test_each_worker_has_a_control_socket_for_its_user_only(pooler) -> None:
    for index in WORKERS:
        path = control_socket_path(private_dir(pooler), index)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\0\0\0\x02[]",
                                     b"\0\0\0\x0f{\"command\": 1}  "])
def test_garbage_on_a_control_socket_is_dropped_and_the_worker_serves_on(pooler,
                                                                      garbage) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(control_socket_path(private_dir(pooler), 2))
        sock.sendall(garbage)
        assert sock.recv(100) == b""  # closed without an answer
    pooler.wait_for_log(r"control channel: request dropped")
    _, rows, notices = console(pooler, 1, "SHOW POOLS")
    assert notices == [] and rows


def test_one_worker_has_no_worker_column(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg))
    conn = bouncer.connect(dbname="pgbouncer", user="scramuser")
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SHOW CLIENTS")
            assert cursor.description[-1].name == "id"
    finally:
        conn.close()


def state_of(pooler: BouncerProcess, index: int) -> Dict[str, str]:
    _, rows, _ = console(pooler, index, "SHOW STATE")
    return {row["key"]: row["value"] for row in rows}


def test_show_state_is_paused_when_any_worker_is(pooler) -> None:
    worker = worker_pids(pooler)[2]
    os.kill(worker, signal.SIGUSR1)  # worker 2 alone pauses
    assert wait_until(lambda: state_of(pooler, 1)["paused"] == "yes", 5)
    assert state_of(pooler, 1) == {"active": "no", "paused": "yes", "suspended": "no"}
    os.kill(worker, signal.SIGUSR2)
    assert wait_until(lambda: state_of(pooler, 1)["active"] == "yes", 5)


def test_show_dns_hosts_lists_the_hosts_any_worker_resolved(pg, bouncer_factory) -> None:
    pooler = two_workers(bouncer_factory, common_ini(pg, workers=2, databases={
        "byname": f"host=localhost port={pg.port} dbname=testdb"}))
    sock, _ = pgwire.open_session(private_dir(pooler), 2, "md5user", "md5pass", "byname")
    sock.close()
    for index in WORKERS:
        _, rows, notices = console(pooler, index, "SHOW DNS_HOSTS")
        assert [row["hostname"] for row in rows] == ["localhost"] and notices == []


def test_show_checks_has_the_latest_failure_of_any_worker(pg, bouncer_factory) -> None:
    pooler = two_workers(bouncer_factory, common_ini(pg, workers=2, databases={
        "wrongpw": f"host=127.0.0.1 port={pg.port} dbname=testdb user=md5user password=wrong"}))
    with pytest.raises(AssertionError, match="password authentication failed"):
        pgwire.open_session(private_dir(pooler), 2, "md5user", "md5pass", "wrongpw")
    for index in WORKERS:
        _, rows, _ = console(pooler, index, "SHOW CHECKS")
        (row,) = [row for row in rows if row["database"] == "wrongpw"]  # worker 1's untried one
        assert (row["user"], row["status"], row["last_failure_sqlstate"]) == (
            "md5user", "failing", "28P01")
        assert row["refusing_for"] > 0
