"""max_client_conn: the extra client is accepted and told why it cannot stay, never left
hanging, and the clients already in are unaffected."""
from __future__ import annotations

import re
import threading
import time
from typing import List

import psycopg2
import pytest

from tests.support import pgwire
from bouncer.testing.ini import common_ini
from tests.support.observe import scalar

REFUSAL = "no more connections allowed (max_client_conn)"


@pytest.fixture
def start(pg, bouncer_factory):
    def start_bouncer(max_client_conn: int):
        return bouncer_factory(common_ini(pg, pool_mode="transaction",
                                          max_client_conn=max_client_conn))
    return start_bouncer


def connect_all(bouncer, count: int) -> list:
    conns = [bouncer.connect() for _ in range(count)]
    for conn in conns:
        conn.autocommit = True
    return conns


def test_extra_client_gets_pgbouncers_error_at_once(start) -> None:
    bouncer = start(2)
    admitted = connect_all(bouncer, 2)
    try:
        started = time.monotonic()
        with pytest.raises(psycopg2.OperationalError, match=re.escape(REFUSAL)):
            bouncer.connect()
        assert time.monotonic() - started < 2
        assert [scalar(conn, "SELECT 1") for conn in admitted] == [1, 1]
    finally:
        for conn in admitted:
            conn.close()


def test_refusal_is_a_fatal_with_sqlstate_08p01(start) -> None:
    bouncer = start(1)
    admitted = connect_all(bouncer, 1)
    try:
        with pgwire.connect(bouncer.host, bouncer.port) as sock:
            sock.sendall(pgwire.startup({"user": "md5user", "database": "testdb"}))
            error = pgwire.first_error(pgwire.messages_until_closed(sock, 3))
        assert error is not None
        assert (error["S"], error["C"], error["M"]) == ("FATAL", "08P01", REFUSAL)
    finally:
        admitted[0].close()


def test_a_slot_freed_by_a_leaving_client_is_reused(start) -> None:
    bouncer = start(1)
    connect_all(bouncer, 1)[0].close()
    deadline = time.monotonic() + 3
    while True:  # the pooler notices the departure asynchronously
        try:
            conn = bouncer.connect()
            break
        except psycopg2.OperationalError:
            assert time.monotonic() < deadline, "the freed slot never became available"
            time.sleep(0.05)
    try:
        assert scalar(conn, "SELECT 1") == 1
    finally:
        conn.close()


def test_burst_over_the_limit_never_hangs(start) -> None:
    limit, attempts = 5, 20
    bouncer = start(limit)
    admitted: List[object] = []
    refusals: List[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        try:
            conn = bouncer.connect()
        except psycopg2.OperationalError as err:
            with lock:
                refusals.append(str(err))
            return
        with lock:
            admitted.append(conn)

    threads = [threading.Thread(target=attempt) for _ in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    try:
        assert not any(thread.is_alive() for thread in threads), "a connection attempt hung"
        assert 1 <= len(admitted) <= limit
        assert len(admitted) + len(refusals) == attempts
        assert all(REFUSAL in message for message in refusals), refusals
    finally:
        for conn in admitted:
            conn.close()
