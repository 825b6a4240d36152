"""Named prepared statements in transaction and statement pooling, against real PostgreSQL.

A client's statement must work on whichever server runs its next transaction: pgbench
``-M prepared`` with more clients than servers, a raw-protocol client moved to a server that
never saw its Parse, Describe/Close/re-Parse, an error mid-pipeline, a cap smaller than the
statements in use, statement mode, and asyncpg (named statements by default).  Session mode
and ``max_prepared_statements = 0`` leave names alone, as before.
"""
from __future__ import annotations

import asyncio
import struct
from typing import Any, Dict, List, Sequence

import pytest

from tests.support import pgwire
from bouncer.testing.ini import common_ini
from tests.support.pgbench import run_pgbench
from bouncer.testing.pgcluster import STANDARD_PASSWORDS

USER = "md5user"


@pytest.fixture
def start(pg, bouncer_factory):
    """``start(pool_size, mode="transaction", **settings)``: a bouncer on the shared cluster."""
    def start_bouncer(pool_size: int, mode: str = "transaction", **settings: Any):
        return bouncer_factory(common_ini(pg, pool_mode=mode, default_pool_size=pool_size,
                                          **settings))
    return start_bouncer


# -- raw protocol ------------------------------------------------------------------------------

def cs(text: str) -> bytes:
    return text.encode() + b"\0"


def parse(name: str, sql: str) -> bytes:
    return pgwire.typed(b"P", cs(name) + cs(sql) + struct.pack("!h", 0))


def bind(name: str, *params: bytes) -> bytes:
    values = b"".join(struct.pack("!i", len(value)) + value for value in params)
    return pgwire.typed(b"B", cs("") + cs(name) + struct.pack("!hh", 0, len(params)) + values
                        + struct.pack("!h", 0))


def describe(name: str) -> bytes:
    return pgwire.typed(b"D", b"S" + cs(name))


def close(name: str) -> bytes:
    return pgwire.typed(b"C", b"S" + cs(name))


EXECUTE = pgwire.typed(b"E", cs("") + struct.pack("!i", 0))
SYNC = pgwire.typed(b"S")


def session(bouncer: Any) -> Any:
    sock, _ = pgwire.open_session(bouncer.host, bouncer.port, USER, STANDARD_PASSWORDS[USER])
    return sock


def exchange(sock: Any, *messages: bytes) -> List[pgwire.Message]:
    """Send ``messages`` at once; the replies up to ReadyForQuery."""
    sock.sendall(b"".join(messages))
    return pgwire.read_until(sock, b"Z")


def kinds(replies: Sequence[pgwire.Message]) -> bytes:
    return b"".join(kind for kind, _ in replies)


def run(sock: Any, name: str, *params: bytes) -> List[List[Any]]:
    """Bind and execute statement ``name``: its rows (the exchange must succeed)."""
    replies = exchange(sock, bind(name, *params), EXECUTE, SYNC)
    assert pgwire.first_error(replies) is None, pgwire.first_error(replies)
    return pgwire.data_rows(replies)


def show(bouncer: Any, what: str) -> List[Dict[str, Any]]:
    conn = bouncer.connect(dbname="pgbouncer", user="scramuser")
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SHOW " + what)
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        conn.close()


# -- pgbench -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, script, threads", [
    ("transaction", "-S", "2"), ("statement", "-S", "2"),
    # pgbench prepares a statement when first used, with a blocking call: inside -N's
    # transactions, a client waiting for a server would stall its thread's other clients,
    # which hold the servers.  One thread per client.
    ("transaction", "-N", "10")])
def test_pgbench_prepared_with_more_clients_than_servers(start, mode: str, script: str,
                                                         threads: str) -> None:
    bouncer = start(2, mode)
    result = run_pgbench(bouncer, ["-M", "prepared", script, "-c", "10", "-j", threads,
                                   "-T", "3"])
    assert result.returncode == 0, result.output
    assert result.processed and result.failed in (None, 0), result.output
    stats = next(row for row in show(bouncer, "STATS") if row["database"] == "bench")
    # Every client prepares each statement once; each server prepares it once.
    statements = 1 if script == "-S" else 5
    assert stats["total_client_parse_count"] >= 10 * statements
    assert stats["total_server_parse_count"] <= 2 * statements
    assert stats["total_bind_count"] >= result.processed


# -- one client, several servers ---------------------------------------------------------------

def test_a_statement_runs_on_a_server_that_never_saw_its_parse(start) -> None:
    bouncer = start(2)
    mover, holder = session(bouncer), session(bouncer)
    assert kinds(exchange(mover, parse("s1", "SELECT $1::int + 1, pg_backend_pid()"),
                          SYNC)) == b"1Z"
    (_, first_pid), = run(mover, "s1", b"1")
    # The other client takes that server into a transaction: the next one must open another.
    assert pgwire.first_error(pgwire.run_query(holder, "BEGIN")) is None
    held = pgwire.data_rows(pgwire.run_query(holder, "SELECT pg_backend_pid()"))[0][0]
    assert held == first_pid
    (value, second_pid), = run(mover, "s1", b"41")
    assert (value, second_pid != first_pid) == ("42", True)
    names = pgwire.data_rows(pgwire.run_query(mover, "SELECT name FROM pg_prepared_statements"))
    assert names and all(name.startswith("BOUNCER_") for name, in names)
    pgwire.run_query(holder, "COMMIT")


def test_describe_close_and_parse_the_name_again(start) -> None:
    bouncer = start(1)
    sock = session(bouncer)
    replies = exchange(sock, parse("s", "SELECT $1::int AS x"), describe("s"), SYNC)
    assert kinds(replies) == b"1tTZ"
    replies = exchange(sock, close("s"), parse("s", "SELECT $1::text AS y, 2 AS z"),
                       bind("s", b"hi"), EXECUTE, SYNC)
    assert kinds(replies) == b"312DCZ"
    assert pgwire.data_rows(replies) == [["hi", "2"]]


def test_an_error_mid_pipeline_leaves_the_statement_usable(start) -> None:
    bouncer = start(1)
    sock = session(bouncer)
    replies = exchange(sock, parse("n", "SELECT $1::int"), bind("n", b"x"), EXECUTE, SYNC)
    assert kinds(replies) == b"1EZ"
    assert pgwire.first_error(replies)["C"] == "22P02"
    assert run(sock, "n", b"5") == [["5"]]


def test_a_failed_parse_leaves_the_name_free(start) -> None:
    bouncer = start(1)
    sock = session(bouncer)
    assert pgwire.first_error(exchange(sock, parse("f", "SELECT FROM nowhere"), SYNC))["C"] \
        == "42P01"
    assert kinds(exchange(sock, parse("f", "SELECT 7"), SYNC)) == b"1Z"
    assert run(sock, "f") == [["7"]]


def test_past_the_cap_statements_are_closed_and_prepared_again(start) -> None:
    bouncer = start(1, max_prepared_statements=2)
    sock = session(bouncer)
    statements = [parse(f"s{n}", f"SELECT {n} * $1::int") for n in range(3)]
    assert kinds(exchange(sock, *statements, SYNC)) == b"111Z"
    for _ in range(2):
        for n in range(3):
            assert run(sock, f"s{n}", b"2") == [[str(2 * n)]]
    count = pgwire.data_rows(pgwire.run_query(sock, "SELECT count(*) FROM pg_prepared_statements"))
    assert count == [["2"]]
    assert [server["prepared_statements"] for server in show(bouncer, "SERVERS")] == [2]
    assert [client["prepared_statements"] for client in show(bouncer, "CLIENTS")
            if client["database"] == "testdb"] == [3]


def prepared_on_server(sock: Any) -> List[List[Any]]:
    return pgwire.data_rows(pgwire.run_query(sock, "SELECT count(*) FROM pg_prepared_statements"))


def test_a_new_cap_reaches_sessions_under_way(start) -> None:
    """SET max_prepared_statements: a lower cap closes statements at the next prepare, 0
    turns the tracking off (names then go to the server as they are)."""
    bouncer = start(1, max_prepared_statements=5)
    sock = session(bouncer)
    assert kinds(exchange(sock, *(parse(f"s{n}", f"SELECT {n}") for n in range(4)), SYNC)) \
        == b"1111Z"
    assert prepared_on_server(sock) == [["4"]]
    bouncer.admin("SET max_prepared_statements = 2")
    assert kinds(exchange(sock, parse("s4", "SELECT 4"), SYNC)) == b"1Z"
    assert prepared_on_server(sock) == [["2"]]
    bouncer.admin("SET max_prepared_statements = 0")
    replies = exchange(sock, bind("s4"), EXECUTE, SYNC)
    assert pgwire.first_error(replies)["C"] == "26000"  # the server never heard of "s4"


def test_deallocate_all_forgets_the_names_and_a_bind_to_one_ends_the_session(start) -> None:
    """As PgBouncer: the names are gone, and bouncer refuses a Bind to one itself (it cannot
    place PostgreSQL's error inside a pipeline it has rewritten)."""
    bouncer = start(1)
    sock = session(bouncer)
    assert kinds(exchange(sock, parse("d", "SELECT 1"), SYNC)) == b"1Z"
    assert pgwire.first_error(pgwire.run_query(sock, "DEALLOCATE ALL")) is None
    sock.sendall(bind("d") + EXECUTE + SYNC)
    error = pgwire.first_error(pgwire.messages_until_closed(sock, timeout=5))
    assert (error["S"], error["C"], error["M"]) == ("FATAL", "08P01",
                                                    "prepared statement did not exist")
    log = bouncer.log_text()
    assert "prepared statement 'd' not found" in log
    assert "closing because: prepared statement did not exist" in log
    again = session(bouncer)  # the name is free again on a new session
    assert kinds(exchange(again, parse("d", "SELECT 2"), SYNC)) == b"1Z"
    assert run(again, "d") == [["2"]]


def test_discard_all_frees_the_names_for_reuse(start) -> None:
    bouncer = start(1)
    sock = session(bouncer)
    assert kinds(exchange(sock, parse("d", "SELECT 1"), SYNC)) == b"1Z"
    assert pgwire.first_error(pgwire.run_query(sock, "DISCARD ALL")) is None
    assert kinds(exchange(sock, parse("d", "SELECT 2"), SYNC)) == b"1Z"
    assert run(sock, "d") == [["2"]]


def test_reusing_an_open_name_ends_the_session(start) -> None:
    bouncer = start(1)
    sock = session(bouncer)
    assert kinds(exchange(sock, parse("x", "SELECT 1"), SYNC)) == b"1Z"
    sock.sendall(parse("x", "SELECT 2") + SYNC)
    error = pgwire.first_error(pgwire.messages_until_closed(sock, timeout=5))
    assert (error["C"], error["M"]) == ("08P01", "prepared statement name is already in use")
    assert "prepared statement 'x' was already prepared" in bouncer.log_text()
    other = session(bouncer)  # the daemon serves on
    assert kinds(exchange(other, parse("x", "SELECT 1"), SYNC)) == b"1Z"


# -- where tracking does not apply -------------------------------------------------------------

def test_session_mode_leaves_names_alone(start) -> None:
    bouncer = start(1, "session")
    sock = session(bouncer)
    assert kinds(exchange(sock, parse("mine", "SELECT 1"), SYNC)) == b"1Z"
    names = pgwire.data_rows(pgwire.run_query(sock, "SELECT name FROM pg_prepared_statements"))
    assert names == [["mine"]]


def test_without_tracking_another_server_does_not_know_the_name(start) -> None:
    bouncer = start(2, max_prepared_statements=0)
    mover, holder = session(bouncer), session(bouncer)
    assert kinds(exchange(mover, parse("s1", "SELECT 1"), SYNC)) == b"1Z"
    pgwire.run_query(holder, "BEGIN")
    error = pgwire.first_error(exchange(mover, bind("s1"), EXECUTE, SYNC))
    assert (error["C"], error["M"]) == ("26000", 'prepared statement "s1" does not exist')
    pgwire.run_query(holder, "COMMIT")


# -- asyncpg -----------------------------------------------------------------------------------

def test_asyncpg_in_transaction_mode(start) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    bouncer = start(1)

    async def clients() -> List[int]:
        connections = [await asyncpg.connect(host=bouncer.host, port=bouncer.port, user=USER,
                                             password=STANDARD_PASSWORDS[USER],
                                             database="testdb") for _ in range(3)]
        try:
            results = []
            for round_ in range(5):
                for number, conn in enumerate(connections):
                    results.append(await conn.fetchval("SELECT $1::int * 10 + $2::int",
                                                       round_, number))
                    async with conn.transaction():
                        await conn.execute("SELECT $1::text", "in a transaction")
            return results
        finally:
            for conn in connections:
                await conn.close()

    assert asyncio.run(clients()) == [r * 10 + n for r in range(5) for n in range(3)]
