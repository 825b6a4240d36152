"""Timeouts as a client sees them: the error it gets, when, and that the pooler stays usable.

Client-facing timeouts are observed over a raw socket (the ErrorResponse before the close);
server-side ones (server_lifetime, server_idle_timeout) in pg_stat_activity.
"""
from __future__ import annotations

import socket
import time
from typing import Dict, List

import psycopg2
import pytest

from tests.support import pgwire
from bouncer.testing.ini import common_ini
from tests.support.observe import backend_pid, scalar, server_pids, wait_for_server_pids

USER, PASSWORD = "md5user", "md5pass"


@pytest.fixture
def start(pg, bouncer_factory):
    """``start(**settings)``: a transaction-mode bouncer with the given [pgbouncer] settings."""
    def start_bouncer(**settings):
        return bouncer_factory(common_ini(pg, **{"pool_mode": "transaction", **settings}))
    return start_bouncer


def session(bouncer):
    return pgwire.open_session(bouncer.host, bouncer.port, USER, PASSWORD)[0]


def error_before_close(sock, timeout: float) -> Dict[str, str]:
    """The ErrorResponse the pooler sends before closing ``sock`` (fails if it stays open)."""
    error = pgwire.first_error(pgwire.messages_until_closed(sock, timeout))
    assert error is not None, "closed without telling the client why"
    return error


def elapsed_since(started: float) -> float:
    return time.monotonic() - started


# -- waiting for a server -------------------------------------------------------------------------
def queued_behind_a_holder(bouncer):
    """(holder, waiter, when): the holder keeps the only server inside a transaction; the
    waiter's raw session has just sent a query that must wait for it."""
    holder = bouncer.connect()
    backend_pid(holder)
    waiter = session(bouncer)
    waiter.sendall(pgwire.query("SELECT 1"))
    return holder, waiter, time.monotonic()


def test_query_wait_timeout_refuses_the_waiting_client(start) -> None:
    bouncer = start(default_pool_size=1, query_wait_timeout=1)
    holder, waiter, started = queued_behind_a_holder(bouncer)
    with waiter:
        error = error_before_close(waiter, 5)
        assert 0.8 < elapsed_since(started) < 3
    assert "query_wait_timeout" in error["M"]
    holder.commit()
    assert scalar(holder, "SELECT 1") == 1  # the holder was not disturbed
    holder.close()


def test_query_timeout_counts_the_wait_for_a_server(start) -> None:
    # As PgBouncer's janitor: a queued client past query_timeout is ended, before
    # query_wait_timeout would.
    bouncer = start(default_pool_size=1, query_timeout=1, query_wait_timeout=30)
    holder, waiter, started = queued_behind_a_holder(bouncer)
    with waiter:
        error = error_before_close(waiter, 5)
        assert 0.8 < elapsed_since(started) < 3
    assert error["M"] == "query_timeout"
    holder.commit()
    holder.close()


def test_a_client_queued_past_query_wait_notify_is_told_once(start) -> None:
    bouncer = start(default_pool_size=1, query_wait_notify=1)
    holder, waiter, started = queued_behind_a_holder(bouncer)
    with waiter:
        kind, payload = pgwire.read_message(waiter)
        assert kind == b"N" and 0.8 < elapsed_since(started) < 3
        assert pgwire.error_fields(payload)["M"] == (
            "No server connection available in postgres backend, client being queued")
        time.sleep(1.5)  # past query_wait_notify again: still one notice for this wait
        holder.commit()
        replies = pgwire.read_until(waiter, b"Z")
        assert b"N" not in [kind for kind, _ in replies]
        assert pgwire.data_rows(replies) == [["1"]]
    holder.close()


def test_login_notify_message_comes_with_the_welcome(start) -> None:
    bouncer = start(login_notify_message="Welcome to the pool")
    sock, messages = pgwire.open_session(bouncer.host, bouncer.port, USER, PASSWORD)
    sock.close()
    kinds = [kind for kind, _ in messages]
    notice = messages[kinds.index(b"N")]
    assert pgwire.error_fields(notice[1])["M"] == "Welcome to the pool"
    assert kinds.index(b"K") < kinds.index(b"N") < kinds.index(b"Z")


# -- login ---------------------------------------------------------------------------------------
def test_client_login_timeout_closes_a_silent_connection(start) -> None:
    # With tcp_defer_accept (the default, as in PgBouncer) a connection that never sends
    # stays in the kernel and the pooler never sees it.
    bouncer = start(client_login_timeout=1, tcp_defer_accept=0)
    with pgwire.connect(bouncer.host, bouncer.port) as silent:
        started = time.monotonic()
        assert pgwire.closed_by_peer(silent, 4)
        assert elapsed_since(started) > 0.8


def test_client_login_timeout_closes_a_client_that_never_answers_the_password(start) -> None:
    bouncer = start(client_login_timeout=1)
    with pgwire.connect(bouncer.host, bouncer.port) as stuck:
        stuck.sendall(pgwire.startup({"user": USER, "database": "testdb"}))
        assert pgwire.read_message(stuck)[0] == b"R"
        assert pgwire.closed_by_peer(stuck, 4)


def test_client_login_timeout_spares_logged_in_clients(start) -> None:
    bouncer = start(client_login_timeout=1)
    with session(bouncer) as sock:
        time.sleep(1.5)
        assert pgwire.data_rows(pgwire.run_query(sock, "SELECT 1")) == [["1"]]


# -- idle clients --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_idle_transaction_timeout(pg, start, mode: str) -> None:
    bouncer = start(pool_mode=mode, idle_transaction_timeout=1)
    with session(bouncer) as sock:
        pid = int(pgwire.data_rows(pgwire.run_query(sock, "BEGIN; SELECT pg_backend_pid()"))[0][0])
        started = time.monotonic()
        error = error_before_close(sock, 5)
        assert 0.8 < elapsed_since(started) < 3
    assert (error["M"], error["C"]) == ("idle transaction timeout", "08P01")  # PgBouncer's
    wait_for_server_pids(pg, USER, lambda pids: pid not in pids)  # its transaction is gone


@pytest.mark.parametrize("where", ["global", "user"])
def test_transaction_timeout_ends_a_busy_transaction_at_its_deadline(pg, start,
                                                                     where: str) -> None:
    # Counted from the transaction's first query, busy or idle: queries keep coming, and the
    # transaction still ends on time (PgBouncer's transaction_timeout, global or per user).
    settings = ({"transaction_timeout": 2} if where == "global" else
                {"transaction_timeout": 100, "users": {USER: "transaction_timeout=2"}})
    bouncer = start(**settings)
    with session(bouncer) as sock:
        started = time.monotonic()
        pid = int(pgwire.data_rows(pgwire.run_query(sock, "BEGIN; SELECT pg_backend_pid()"))[0][0])
        for _ in range(3):  # activity does not push the deadline back
            time.sleep(0.4)
            assert pgwire.run_query(sock, "SELECT 1")[-1] == (b"Z", b"T")
        error = error_before_close(sock, 5)
        assert 1.8 < elapsed_since(started) < 4
    assert (error["M"], error["C"]) == ("transaction timeout", "08P01")
    bouncer.wait_for_log(r"S-0x\w+: .* closing because: transaction timeout")
    wait_for_server_pids(pg, USER, lambda pids: pid not in pids)


def test_idle_transaction_timeout_spares_clients_outside_a_transaction(start) -> None:
    bouncer = start(idle_transaction_timeout=1)
    with session(bouncer) as sock:
        pgwire.run_query(sock, "SELECT 1")
        time.sleep(1.5)
        assert pgwire.data_rows(pgwire.run_query(sock, "SELECT 2")) == [["2"]]


def test_client_idle_timeout(start) -> None:
    bouncer = start(client_idle_timeout=1)
    with session(bouncer) as sock:
        pgwire.run_query(sock, "SELECT 1")
        started = time.monotonic()
        error = error_before_close(sock, 5)
        assert 0.8 < elapsed_since(started) < 3
    assert error["M"] == "client_idle_timeout"


def test_client_idle_timeout_in_session_mode(start) -> None:
    bouncer = start(pool_mode="session", client_idle_timeout=1)
    with session(bouncer) as sock:
        pgwire.run_query(sock, "SELECT 1")
        assert error_before_close(sock, 4)["M"] == "client_idle_timeout"


def test_busy_client_is_not_idle(start) -> None:
    bouncer = start(client_idle_timeout=1)
    with session(bouncer) as sock:
        for _ in range(4):
            time.sleep(0.5)
            pgwire.run_query(sock, "SELECT 1")


# -- slow queries --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_query_timeout(start, mode: str) -> None:
    bouncer = start(pool_mode=mode, query_timeout=1)
    with session(bouncer) as sock:
        started = time.monotonic()
        sock.sendall(pgwire.query("SELECT pg_sleep(10)"))
        error = error_before_close(sock, 5)
        assert 0.8 < elapsed_since(started) < 3
    assert error["M"] == "query timeout"
    conn = bouncer.connect()
    try:
        assert scalar(conn, "SELECT 1 FROM pg_sleep(0.2)") == 1  # quick queries still pass
    finally:
        conn.close()


# -- server connections ---------------------------------------------------------------------------
def pids_over_time(bouncer, samples: int, pause: float) -> List[int]:
    conn = bouncer.connect()
    conn.autocommit = True
    try:
        pids = []
        for _ in range(samples):
            pids.append(backend_pid(conn))
            time.sleep(pause)
        return pids
    finally:
        conn.close()


def test_server_lifetime_replaces_servers(pg, start) -> None:
    bouncer = start(default_pool_size=1, server_lifetime=1)
    first = pids_over_time(bouncer, 1, 0)[0]
    wait_for_server_pids(pg, USER, lambda pids: first not in pids, timeout=5)
    assert pids_over_time(bouncer, 1, 0)[0] != first


def test_server_lifetime_zero_uses_each_server_once(start) -> None:
    # PgBouncer's meaning of 0: closed when released, so every transaction has a new backend.
    bouncer = start(server_lifetime=0)
    pids = pids_over_time(bouncer, 3, 0)
    assert len(set(pids)) == 3, pids
    assert bouncer.log_text().count("closing because: server lifetime over") >= 2


def test_server_lifetime_does_not_cut_a_transaction(pg, start) -> None:
    bouncer = start(default_pool_size=1, server_lifetime=1)
    conn = bouncer.connect()
    try:
        pid = backend_pid(conn)
        time.sleep(1.6)
        assert backend_pid(conn) == pid  # still the same server, inside the transaction
        conn.commit()
    finally:
        conn.close()
    wait_for_server_pids(pg, USER, lambda pids: pid not in pids, timeout=5)


def test_server_idle_timeout_closes_unused_servers(pg, start) -> None:
    bouncer = start(server_idle_timeout=1)
    pid = pids_over_time(bouncer, 1, 0)[0]
    assert pid in server_pids(pg, USER)
    wait_for_server_pids(pg, USER, lambda pids: not pids, timeout=5)
    assert pids_over_time(bouncer, 1, 0)[0] != pid  # a fresh server when needed again


def test_server_in_use_outlives_server_idle_timeout(pg, start) -> None:
    bouncer = start(default_pool_size=1, server_idle_timeout=1)
    assert len(set(pids_over_time(bouncer, 5, 0.4))) == 1


def pool_names(bouncer) -> List[str]:
    return [f"{row[0]}/{row[1]}" for row in bouncer.admin("SHOW POOLS") if row[0] != "pgbouncer"]


def test_pool_idle_timeout_frees_an_empty_pool(pg, start) -> None:
    bouncer = start(server_idle_timeout=1, pool_idle_timeout=1)
    pid = pids_over_time(bouncer, 1, 0)[0]
    assert pool_names(bouncer) == [f"testdb/{USER}"]
    wait_for_server_pids(pg, USER, lambda pids: not pids, timeout=5)  # server_idle_timeout
    bouncer.wait_for_log(rf"cleaning up idle pool for user {USER} on db testdb because: "
                         r"pool idle timeout \(age= \d+s\)", timeout=5)
    assert pool_names(bouncer) == []
    assert pids_over_time(bouncer, 1, 0)[0] != pid  # the next client makes a new pool
    assert pool_names(bouncer) == [f"testdb/{USER}"]


def test_pool_idle_timeout_spares_a_pool_with_a_client(pg, start) -> None:
    bouncer = start(server_idle_timeout=1, pool_idle_timeout=1)
    conn = bouncer.connect()
    try:
        backend_pid(conn)
        conn.commit()
        wait_for_server_pids(pg, USER, lambda pids: not pids, timeout=5)
        time.sleep(1.5)
        assert pool_names(bouncer) == [f"testdb/{USER}"]
    finally:
        conn.close()
    assert "cleaning up idle pool" not in bouncer.log_text()


# -- server_check_query / server_check_delay -----------------------------------------------------
@pytest.fixture
def check_counter(pg):
    """A sequence that a server_check_query can advance: its value counts the checks."""
    pg.psql("CREATE SEQUENCE server_checks; GRANT USAGE ON server_checks TO md5user", db="testdb")
    yield "SELECT nextval('public.server_checks')"
    pg.psql("DROP SEQUENCE server_checks", db="testdb")


def checks_run(pg) -> int:
    return int(pg.psql("SELECT last_value FROM server_checks", db="testdb").strip())


def test_server_check_delay_zero_checks_every_reused_server(start, pg, check_counter) -> None:
    bouncer = start(default_pool_size=1, server_check_delay=0, server_check_query=check_counter)
    conn = bouncer.connect()
    conn.autocommit = True
    pid = backend_pid(conn)
    before = checks_run(pg)
    for _ in range(5):
        assert backend_pid(conn) == pid  # checked, then reused
    assert checks_run(pg) == before + 5
    conn.close()


def test_a_recently_used_server_is_reused_unchecked(start, pg, check_counter) -> None:
    bouncer = start(default_pool_size=1, server_check_delay=30, server_check_query=check_counter)
    conn = bouncer.connect()
    conn.autocommit = True
    backend_pid(conn)
    before = checks_run(pg)
    for _ in range(5):
        backend_pid(conn)
    assert checks_run(pg) == before
    conn.close()


def test_a_server_failing_its_check_is_replaced(start) -> None:
    bouncer = start(default_pool_size=1, server_check_delay=0,
                    server_check_query="SELECT 1/0")
    conn = bouncer.connect()
    conn.autocommit = True
    first = backend_pid(conn)
    assert backend_pid(conn) != first  # the client got a new server, not an error
    bouncer.wait_for_log(r"closing because: server check query failed: division by zero")
    conn.close()


def test_a_server_that_never_answers_the_login_leaves_the_client_to_query_timeout(start) -> None:
    """server_connect_timeout closes the silent server; that is a network failure, not a
    refused login, so the client waits on (bouncer retries) until query_timeout, which counts
    the wait too, ends it with PgBouncer's words."""
    with socket.socket() as silent:  # the kernel accepts the connection; nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        bouncer = start(databases={"silent": f"host=127.0.0.1 port={port} dbname=testdb"},
                        server_connect_timeout=1, query_timeout=3)
        started = time.monotonic()
        with pytest.raises(psycopg2.OperationalError, match="query_timeout"):
            bouncer.connect(dbname="silent", connect_timeout=10)
        assert 2.5 < elapsed_since(started) < 6
    bouncer.wait_for_log(r"S-0x[0-9a-f]+: silent/md5user@127\.0\.0\.1:\d+ closing because: "
                         r"connect timeout \(age=\d+s\)")
