"""Idle clients sleep without a greenlet (bouncer.session.relay); a client sees nothing of it.

A logged-in client with no server linked waits with only its watcher: it is woken in a spare
greenlet.  These tests wake more clients at once than the relay keeps spare greenlets for,
and end sleeping clients from outside (KILL_CLIENT; client_idle_timeout is in
test_timeouts.py, the online restart of idle clients in test_restart.py).
"""
from __future__ import annotations

import socket

import pytest

from bouncer.net.greenlets import SPARE_GREENLETS
from tests.support import pgwire
from bouncer.testing.ini import common_ini

USER, PASSWORD = "md5user", "md5pass"


@pytest.fixture
def bouncer(pg, bouncer_factory):
    return bouncer_factory(common_ini(pg, pool_mode="transaction", default_pool_size=2))


def session(bouncer) -> socket.socket:
    return pgwire.open_session(bouncer.host, bouncer.port, USER, PASSWORD)[0]


def client_id(bouncer, sock: socket.socket) -> int:
    """The SHOW CLIENTS id of the client connected over *sock*."""
    conn = bouncer.connect(dbname="pgbouncer", user="scramuser")
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SHOW CLIENTS")
            names = [column.name for column in cursor.description]
            rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        conn.close()
    port = sock.getsockname()[1]
    return next(row["id"] for row in rows if row["port"] == port)


def test_more_clients_wake_at_once_than_there_are_spare_greenlets(bouncer) -> None:
    socks = [session(bouncer) for _ in range(SPARE_GREENLETS + 8)]
    try:
        for _ in range(2):  # the second round is served by the greenlets kept spare
            for number, sock in enumerate(socks):  # all sent before any answer is read
                sock.sendall(pgwire.query(f"SELECT {number} FROM pg_sleep(0.01)"))
            for number, sock in enumerate(socks):
                assert pgwire.data_rows(pgwire.read_until(sock, b"Z")) == [[str(number)]]
    finally:
        for sock in socks:
            sock.close()


def test_kill_client_reaches_a_client_that_sleeps(bouncer) -> None:
    with session(bouncer) as sock, session(bouncer) as bystander:
        pgwire.run_query(sock, "SELECT 1")  # answered: idle, no server linked
        bouncer.admin(f"KILL_CLIENT {client_id(bouncer, sock)}")
        error = pgwire.first_error(pgwire.messages_until_closed(sock, 5))
        assert error is not None and error["M"] == "client killed by admin"
        assert pgwire.data_rows(pgwire.run_query(bystander, "SELECT 2")) == [["2"]]
