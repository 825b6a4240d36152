"""The three pool modes as a user sees them, with psycopg2, psql and pgbench.

Which server a client got is read from ``pg_backend_pid()``: in transaction mode two clients
share one backend, in session mode a client keeps its own; statement mode refuses a
multi-statement transaction with PgBouncer's message.  Also: clients waiting for a full pool,
parameters replayed on a different server, and server_reset_query between session clients.
"""
from __future__ import annotations

import io
import select
import time

import psycopg2
import psycopg2.errors
import pytest

from bouncer.testing.ini import common_ini
from tests.support.observe import Background, backend_pid, execute, scalar, server_pids
from tests.support.pgbench import run_pgbench

STATEMENT_REFUSAL = "transaction blocks not allowed in statement pooling mode"
MODES = ("session", "transaction", "statement")


def autocommit(conn):
    conn.autocommit = True
    return conn


@pytest.fixture
def start(pg, bouncer_factory):
    """``start(mode, pool_size, **settings)``: a bouncer on the shared cluster."""
    def start_bouncer(mode: str, pool_size: int = 2, **settings):
        return bouncer_factory(common_ini(pg, pool_mode=mode, default_pool_size=pool_size,
                                          **settings))
    return start_bouncer


# -- psycopg2 ------------------------------------------------------------------------------------
def test_transaction_mode_two_clients_share_one_server(pg, start) -> None:
    bouncer = start("transaction", pool_size=1)
    first, second = autocommit(bouncer.connect()), autocommit(bouncer.connect())
    try:
        pids = {backend_pid(first), backend_pid(second), backend_pid(first)}
        assert len(pids) == 1
        assert server_pids(pg, "md5user") == pids
    finally:
        first.close()
        second.close()


def test_transaction_mode_holds_the_server_for_a_whole_transaction(start) -> None:
    bouncer = start("transaction", pool_size=2)
    inside, other = bouncer.connect(), autocommit(bouncer.connect())
    try:
        pid = backend_pid(inside)  # psycopg2 opened a transaction: the server stays linked
        assert backend_pid(other) != pid
        assert backend_pid(inside) == pid
        inside.commit()
    finally:
        inside.close()
        other.close()


def test_session_mode_client_keeps_its_server(pg, start) -> None:
    bouncer = start("session", pool_size=2)
    first, second = autocommit(bouncer.connect()), autocommit(bouncer.connect())
    try:
        first_pids = {backend_pid(first) for _ in range(3)}
        second_pids = {backend_pid(second) for _ in range(3)}
        assert len(first_pids) == len(second_pids) == 1
        assert first_pids != second_pids
        assert server_pids(pg, "md5user") == first_pids | second_pids
    finally:
        first.close()
        second.close()


def test_statement_mode_runs_single_statements_on_a_shared_server(start) -> None:
    bouncer = start("statement", pool_size=1)
    first, second = autocommit(bouncer.connect()), autocommit(bouncer.connect())
    try:
        assert backend_pid(first) == backend_pid(second)
        assert scalar(first, "SELECT 40 + 2") == 42
    finally:
        first.close()
        second.close()


def test_statement_mode_refuses_a_transaction_block(start) -> None:
    bouncer = start("statement", pool_size=1)
    conn = bouncer.connect()  # not autocommit: psycopg2 sends BEGIN first
    try:
        # libpq reports the pooler's FATAL as a lost connection (as with PgBouncer itself);
        # the psql test below checks the message.
        with pytest.raises(psycopg2.OperationalError):
            scalar(conn, "SELECT 1")
        assert conn.closed
    finally:
        conn.close()
    # The refused transaction's server was not left in a transaction for the next client.
    after = autocommit(bouncer.connect())
    try:
        assert scalar(after, "SELECT now() = statement_timestamp()") is True
    finally:
        after.close()


# -- psql and pgbench -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_psql_runs_a_query_in_every_mode(start, mode: str) -> None:
    result = start(mode).psql(["-At", "-c", "SELECT count(*) FROM pgbench_branches"],
                              dbname="bench")
    assert (result.returncode, result.stdout, result.stderr) == (0, "1\n", "")


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_psql_transaction_block_in_session_and_transaction_mode(start, mode: str) -> None:
    result = start(mode).psql(["-At"], input="BEGIN;\nSELECT 7;\nCOMMIT;\n")
    assert (result.returncode, result.stdout) == (0, "BEGIN\n7\nCOMMIT\n")


def test_psql_transaction_block_in_statement_mode_gets_pgbouncers_message(start) -> None:
    result = start("statement").psql(["-At"], input="BEGIN;\nSELECT 7;\nCOMMIT;\n")
    assert result.returncode != 0
    assert f"FATAL:  {STATEMENT_REFUSAL}" in result.stderr
    assert "7" not in result.stdout


def test_statement_mode_does_not_report_the_refused_begin_as_done(start) -> None:
    result = start("statement").psql(["-At"], input="BEGIN;\nSELECT 7;\n")
    assert result.stdout == ""  # PgBouncer answers BEGIN with the FATAL, never "BEGIN"


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("mode", MODES)
def test_pgbench_select_only_in_every_mode(start, mode: str, protocol: str) -> None:
    result = run_pgbench(start(mode), ["-S", "-c", "4", "-t", "50", "-M", protocol],
                         user="md5user")
    assert result.returncode == 0, result.output
    assert result.processed == 200, result.output


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_pgbench_tpcb_transactions_in_session_and_transaction_mode(start, mode: str) -> None:
    result = run_pgbench(start(mode), ["-c", "4", "-t", "25"])
    assert result.returncode == 0, result.output
    assert result.processed == 100, result.output


def test_pgbench_hundred_clients_through_twenty_servers(pg, start) -> None:
    bouncer = start("transaction", pool_size=20, max_client_conn=150)
    result = run_pgbench(bouncer, ["-S", "-c", "100", "-j", "2", "-T", "5"], user="md5user")
    assert result.returncode == 0, result.output
    assert result.failed in (0, None), result.output
    assert result.processed and result.processed > 1000, result.output
    assert len(server_pids(pg, "md5user", db="bench")) <= 20


# -- per-database and per-user modes and sizes -----------------------------------------------------
def test_pool_mode_per_database_and_per_user(pg, bouncer_factory) -> None:
    shared = f"host=127.0.0.1 port={pg.port} dbname=testdb pool_mode=transaction"
    bouncer = bouncer_factory(common_ini(pg, pool_mode="session", default_pool_size=1,
                                         databases={"shared": shared},
                                         users={"md5user": "pool_mode=statement"}))
    first = autocommit(bouncer.connect(dbname="shared", user="scramuser"))
    second = autocommit(bouncer.connect(dbname="shared", user="scramuser"))
    try:
        assert backend_pid(first) == backend_pid(second)  # the database says transaction
    finally:
        first.close()
        second.close()
    result = bouncer.psql(["-At"], user="md5user", input="BEGIN;\nSELECT 7;\n")
    assert STATEMENT_REFUSAL in result.stderr  # the user says statement
    assert bouncer.psql(["-At"], user="scramuser", input="BEGIN;\nSELECT 7;\nCOMMIT;\n"
                        ).returncode == 0  # everyone else: the global session mode


def test_default_pool_size_zero_means_unlimited(pg, start) -> None:
    bouncer = start("transaction", pool_size=0)
    conns = [bouncer.connect() for _ in range(4)]
    try:
        assert len({backend_pid(conn) for conn in conns}) == 4
        assert len(server_pids(pg, "md5user")) == 4
    finally:
        for conn in conns:
            conn.close()


# -- what the relay carries ------------------------------------------------------------------------
def test_copy_in_and_out_and_large_values_in_transaction_mode(start) -> None:
    bouncer = start("transaction", pool_size=1)
    conn = autocommit(bouncer.connect(user="scramuser"))
    rows = "".join(f"{number}\tline {number}\n" for number in range(20000))
    try:
        execute(conn, "CREATE TEMP TABLE copied (x int, y text)")
        with conn.cursor() as cur:
            cur.copy_expert("COPY copied FROM STDIN", io.StringIO(rows))
            out = io.StringIO()
            cur.copy_expert("COPY copied TO STDOUT", out)
        assert out.getvalue() == rows
        assert scalar(conn, "SELECT repeat('ab', 3000000)") == "ab" * 3000000
    finally:
        conn.close()


def test_session_mode_delivers_notifications_to_an_idle_client(start) -> None:
    bouncer = start("session")
    listener, sender = autocommit(bouncer.connect()), autocommit(bouncer.connect())
    try:
        execute(listener, "LISTEN pooled_channel")
        execute(sender, "NOTIFY pooled_channel, 'hello'")
        # The listener sends nothing: the notification must come to it on its own.
        assert select.select([listener], [], [], 3)[0], "no notification arrived"
        listener.poll()
        assert [(n.channel, n.payload) for n in listener.notifies] == [("pooled_channel",
                                                                        "hello")]
    finally:
        listener.close()
        sender.close()


def test_failed_transaction_keeps_its_server_until_rollback(start) -> None:
    bouncer = start("transaction", pool_size=1)
    failed = bouncer.connect()
    pid = backend_pid(failed)
    with pytest.raises(psycopg2.errors.DivisionByZero):
        scalar(failed, "SELECT 1/0")
    waiting = Background(lambda: backend_pid(autocommit(bouncer.connect())))
    time.sleep(0.4)
    assert not waiting.done(), "the server was given away inside an aborted transaction"
    failed.rollback()
    assert waiting.result(timeout=5) == pid
    failed.close()


def test_client_leaving_mid_transaction_does_not_pass_it_on(pg, start) -> None:
    bouncer = start("transaction", pool_size=1)
    leaver = bouncer.connect()
    execute(leaver, "CREATE TEMP TABLE half_done (x int)")
    leaver.close()  # inside its transaction
    after = autocommit(bouncer.connect())
    try:
        assert scalar(after, "SELECT to_regclass('pg_temp.half_done') IS NULL") is True
        assert scalar(after, "SELECT now() = statement_timestamp()") is True
    finally:
        after.close()
    idle_in_transaction = pg.psql("SELECT count(*) FROM pg_stat_activity "
                                  "WHERE state LIKE 'idle in transaction%'")
    assert idle_in_transaction == "0"


# -- waiting for a full pool -------------------------------------------------------------------
def test_second_client_waits_for_the_only_server_then_proceeds(start) -> None:
    bouncer = start("session", pool_size=1)
    holder = autocommit(bouncer.connect())
    holder_pid = backend_pid(holder)

    def second_client() -> int:
        conn = autocommit(bouncer.connect())
        try:
            return backend_pid(conn)
        finally:
            conn.close()

    waiting = Background(second_client)
    time.sleep(0.5)
    assert not waiting.done(), "the second client did not wait for the busy server"
    holder.close()
    assert waiting.result(timeout=5) == holder_pid


# -- parameters follow the client to another server ----------------------------------------------
#: Tracked parameters a client SETs (client_encoding goes through psycopg2's own call).
REPLAYED = {"application_name": "alpha", "TimeZone": "Asia/Tokyo", "DateStyle": "SQL, DMY",
            "IntervalStyle": "iso_8601"}


def shown(conn, names) -> dict:
    return {name: scalar(conn, f"SHOW {name}") for name in names}


@pytest.mark.parametrize("extra", ["IntervalStyle", "intervalstyle"])  # GUCs ignore case
def test_set_parameters_are_replayed_on_a_different_server(start, extra: str) -> None:
    bouncer = start("transaction", pool_size=2, track_extra_parameters=extra)
    client = autocommit(bouncer.connect(application_name="first"))
    blocker = bouncer.connect(application_name="blocker")
    try:
        blocker_values = shown(blocker, [*REPLAYED, "client_encoding"])
        blocker.commit()
        client.set_client_encoding("LATIN1")
        for name, value in REPLAYED.items():
            execute(client, f"SET {name} = %s", (value,))
        used = backend_pid(client)
        assert backend_pid(blocker) == used  # the blocker now holds that server in a transaction
        assert backend_pid(client) != used
        assert shown(client, [*REPLAYED, "client_encoding"]) == {**REPLAYED,
                                                                 "client_encoding": "LATIN1"}
        # ...and the blocker, on the server the client changed, still has its own values.
        assert shown(blocker, [*REPLAYED, "client_encoding"]) == blocker_values
    finally:
        client.close()
        blocker.close()


def test_a_value_the_server_spells_differently_is_set_once(start) -> None:
    bouncer = start("transaction", pool_size=1, verbose=2)
    client = autocommit(bouncer.connect(options="-c DateStyle=ISO"))
    try:
        for _ in range(3):
            assert scalar(client, "SHOW DateStyle") == "ISO, MDY"
    finally:
        client.close()
    log = bouncer.log_text()
    assert log.count("varcache_apply: SET DateStyle='ISO';") == 1
    assert "setting DateStyle to its canonical version ISO -> ISO, MDY" in log


def test_startup_application_name_is_set_on_every_server(start) -> None:
    bouncer = start("transaction", pool_size=2)
    client = autocommit(bouncer.connect(application_name="from-startup"))
    blocker = bouncer.connect(application_name="other")
    try:
        first_pid = backend_pid(client)
        assert backend_pid(blocker) == first_pid
        assert scalar(client, "SELECT pg_backend_pid() <> %s AND "
                              "current_setting('application_name') = 'from-startup'",
                      (first_pid,)) is True
    finally:
        client.close()
        blocker.close()


# -- server_reset_query --------------------------------------------------------------------------
def test_session_mode_resets_the_server_for_the_next_client(start) -> None:
    bouncer = start("session", pool_size=1)
    first = autocommit(bouncer.connect())
    execute(first, "CREATE TEMP TABLE leftover AS SELECT 1 AS x")
    execute(first, "SET work_mem = '7MB'")
    pid = backend_pid(first)
    first.close()
    second = autocommit(bouncer.connect())
    try:
        assert backend_pid(second) == pid  # the same server, reused
        assert scalar(second, "SELECT to_regclass('pg_temp.leftover') IS NULL") is True
        assert scalar(second, "SHOW work_mem") == "4MB"
    finally:
        second.close()


def test_custom_server_reset_query_runs_between_session_clients(start) -> None:
    bouncer = start("session", pool_size=1, server_reset_query="RESET work_mem")
    first = autocommit(bouncer.connect())
    execute(first, "SET work_mem = '7MB'")
    execute(first, "SET statement_timeout = '123s'")
    first.close()
    second = autocommit(bouncer.connect())
    try:
        assert scalar(second, "SHOW work_mem") == "4MB"
        assert scalar(second, "SHOW statement_timeout") == "123s"  # only what the query resets
    finally:
        second.close()
