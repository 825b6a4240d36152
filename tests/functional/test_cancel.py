"""Query cancellation through the pooler: a client's cancel key reaches its own server only."""
from __future__ import annotations

import random
import threading
import time

import psycopg2
import psycopg2.errors
import pytest

from tests.support import pgwire
from bouncer.testing.ini import common_ini
from tests.support.observe import Background, scalar

LONG_SLEEP = "SELECT pg_sleep(10)"


def autocommit(conn):
    conn.autocommit = True
    return conn


def cancel_soon(conn, delay: float = 0.3) -> threading.Timer:
    timer = threading.Timer(delay, conn.cancel)
    timer.start()
    return timer


def sleep_and_time(conn, sql: str = LONG_SLEEP) -> float:
    """Seconds until ``sql`` was cancelled (raises if it was not)."""
    started = time.monotonic()
    with pytest.raises(psycopg2.errors.QueryCanceled):
        scalar(conn, sql)
    return time.monotonic() - started


@pytest.mark.parametrize("mode, host", [
    ("session", "127.0.0.1"), ("transaction", "127.0.0.1"), ("transaction", "unix"),
], ids=["session", "transaction", "transaction-unix-server"])
def test_cancel_stops_pg_sleep_through_the_pooler(pg, bouncer_factory, mode: str,
                                                  host: str) -> None:
    server_host = pg.socket_dir if host == "unix" else host
    databases = {"testdb": f"host={server_host} port={pg.port} dbname=testdb"}
    bouncer = bouncer_factory(common_ini(pg, databases=databases, pool_mode=mode))
    conn = autocommit(bouncer.connect())
    try:
        cancel_soon(conn)
        assert sleep_and_time(conn) < 2
        assert scalar(conn, "SELECT 1") == 1  # the connection survives its cancelled query
    finally:
        conn.close()


def test_cancel_reaches_only_the_clients_own_server(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, pool_mode="transaction", default_pool_size=2))
    victim, bystander = autocommit(bouncer.connect()), autocommit(bouncer.connect())
    try:
        other = Background(lambda: scalar(bystander, "SELECT 1 FROM pg_sleep(1.5)"))
        cancel_soon(victim)
        assert sleep_and_time(victim) < 2
        assert other.result(timeout=5) == 1
    finally:
        victim.close()
        bystander.close()


def test_cancel_with_an_unknown_key_changes_nothing(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg))
    conn = autocommit(bouncer.connect())
    try:
        sleeper = Background(lambda: scalar(conn, "SELECT 1 FROM pg_sleep(1)"))
        time.sleep(0.2)
        with pgwire.connect(bouncer.host, bouncer.port) as sock:
            sock.sendall(pgwire.cancel_request(random.getrandbits(31), random.getrandbits(32)))
            assert pgwire.closed_by_peer(sock, 2)
        assert sleeper.result(timeout=5) == 1
    finally:
        conn.close()


def test_cancel_of_an_idle_client_is_harmless(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, pool_mode="transaction"))
    conn = autocommit(bouncer.connect())
    try:
        conn.cancel()
        time.sleep(0.2)
        assert scalar(conn, "SELECT 1 FROM pg_sleep(0.3)") == 1
    finally:
        conn.close()


def test_late_cancels_never_hit_the_next_client_of_the_server(pg, bouncer_factory) -> None:
    """Many cancels for one client's query are still on their way when its server is
    released: the client queued for that server must not have its query cancelled (PgBouncer's
    test_cancel_race, GH #717)."""
    bouncer = bouncer_factory(common_ini(pg, pool_mode="transaction", default_pool_size=1))
    first, second = autocommit(bouncer.connect()), autocommit(bouncer.connect())
    try:
        cancelled = Background(lambda: sleep_and_time(first))
        time.sleep(0.5)  # `first` holds the only server
        queued = Background(lambda: scalar(second, "SELECT 42 FROM pg_sleep(1)"))
        time.sleep(0.5)  # `second` waits for it
        cancels = [threading.Thread(target=first.cancel) for _ in range(50)]
        for thread in cancels:
            thread.start()
        assert cancelled.result(10) < 5
        for thread in cancels:
            thread.join(10)
        assert queued.result(10) == 42
    finally:
        first.close()
        second.close()
