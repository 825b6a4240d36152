"""Shutdown signals with PgBouncer's meanings: SIGTERM waits for clients, SIGINT waits for
servers (transactions in flight), SIGQUIT exits at once; a second SIGTERM/SIGINT hurries up."""
from __future__ import annotations

import os
import signal
import subprocess

import psycopg2
import pytest

from tests.support import pgwire
from bouncer.testing.ini import common_ini
from tests.support.observe import backend_pid, read_pid, scalar
from bouncer.testing.ports import wait_until

SHUTDOWN_LOG = "shutting down"


@pytest.fixture
def bouncer(pg, bouncer_factory):
    return bouncer_factory(common_ini(pg, pool_mode="transaction"))


def signal_and_wait_for_log(bouncer, signum: int) -> None:
    since = len(bouncer.log_text())
    bouncer.signal(signum)
    bouncer.wait_for_log(SHUTDOWN_LOG, since=since, timeout=5)


def assert_still_running(bouncer, seconds: float = 0.5) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        bouncer.wait(seconds)


def assert_refuses_new_clients(bouncer) -> None:
    with pytest.raises(psycopg2.OperationalError):
        bouncer.connect()


def idle_client(bouncer):
    conn = bouncer.connect()
    conn.autocommit = True
    assert scalar(conn, "SELECT 1") == 1
    return conn


# -- SIGTERM -------------------------------------------------------------------------------------
def test_sigterm_waits_until_the_last_client_leaves(bouncer) -> None:
    client = idle_client(bouncer)
    signal_and_wait_for_log(bouncer, signal.SIGTERM)
    assert_refuses_new_clients(bouncer)
    assert_still_running(bouncer)
    assert scalar(client, "SELECT 2") == 2  # the open client keeps working
    client.close()
    assert bouncer.wait(3) == 0


def test_a_waiting_shutdown_keeps_the_unix_socket_for_the_admin_console(bouncer) -> None:
    client = idle_client(bouncer)
    signal_and_wait_for_log(bouncer, signal.SIGTERM)
    over_unix = {"host": bouncer.socket_dir}
    assert_refuses_new_clients(bouncer)  # over TCP: nothing listens there now
    with pytest.raises(psycopg2.OperationalError, match="pooler is shutting down"):
        bouncer.connect(**over_unix)
    assert bouncer.admin("SHOW VERSION", **over_unix)
    client.close()
    assert bouncer.wait(3) == 0
    assert "client connections dropped, exiting" in bouncer.log_text()
    assert not os.path.exists(os.path.join(bouncer.socket_dir, f".s.PGSQL.{bouncer.port}"))


def test_sigusr2_during_a_shutdown_is_ignored(bouncer) -> None:
    client = idle_client(bouncer)
    signal_and_wait_for_log(bouncer, signal.SIGTERM)
    bouncer.signal(signal.SIGUSR2)
    bouncer.wait_for_log("got SIGUSR2 while shutting down, ignoring", timeout=5)
    assert_refuses_new_clients(bouncer)
    client.close()
    assert bouncer.wait(3) == 0


def test_sigterm_without_clients_exits_at_once(bouncer) -> None:
    bouncer.signal(signal.SIGTERM)
    assert bouncer.wait(3) == 0


def test_second_sigterm_exits_at_once(bouncer) -> None:
    client = idle_client(bouncer)
    try:
        signal_and_wait_for_log(bouncer, signal.SIGTERM)
        assert_still_running(bouncer, 0.2)
        bouncer.signal(signal.SIGTERM)
        assert bouncer.wait(3) == 0
    finally:
        client.close()


# -- SIGINT --------------------------------------------------------------------------------------
def test_sigint_waits_for_the_transaction_in_flight(bouncer) -> None:
    client = bouncer.connect()  # psycopg2 opens a transaction: a server is linked
    try:
        pid = backend_pid(client)
        signal_and_wait_for_log(bouncer, signal.SIGINT)
        assert_refuses_new_clients(bouncer)
        assert_still_running(bouncer)
        assert backend_pid(client) == pid  # the transaction goes on, on its server
        client.commit()
        assert bouncer.wait(3) == 0  # no server in use any more: gone, client or not
    finally:
        client.close()


def test_a_new_transaction_during_sigint_shutdown_is_refused_at_once(bouncer) -> None:
    # PgBouncer closes such a client ("server shutting down") instead of holding it until
    # query_wait_timeout: the transaction in flight still finishes.
    # (A raw session: libpq reports only the closed connection, not the FATAL before it.)
    busy = bouncer.connect()
    idle, _ = pgwire.open_session(bouncer.host, bouncer.port, "md5user", "md5pass")
    try:
        assert pgwire.data_rows(pgwire.run_query(idle, "SELECT 1")) == [["1"]]
        pid = backend_pid(busy)
        signal_and_wait_for_log(bouncer, signal.SIGINT)
        idle.sendall(pgwire.query("SELECT 2"))
        error = pgwire.first_error(pgwire.messages_until_closed(idle, 3))
        assert error is not None and (error["C"], error["M"]) == ("08P01", "server shutting down")
        bouncer.wait_for_log(r"closing because: server shutting down \(age=\d+s\)")
        assert backend_pid(busy) == pid
        busy.commit()
        assert bouncer.wait(3) == 0
    finally:
        busy.close()
        idle.close()


def test_sigint_does_not_wait_for_idle_clients(bouncer) -> None:
    client = idle_client(bouncer)
    try:
        bouncer.signal(signal.SIGINT)
        assert bouncer.wait(3) == 0
    finally:
        client.close()


# -- SIGQUIT -------------------------------------------------------------------------------------
def test_sigquit_exits_at_once_even_inside_a_transaction(bouncer) -> None:
    client = bouncer.connect()
    try:
        backend_pid(client)
        bouncer.signal(signal.SIGQUIT)
        assert bouncer.wait(2) == 0
        with pytest.raises(psycopg2.OperationalError):
            scalar(client, "SELECT 1")
    finally:
        client.close()


# -- what a shutdown leaves behind ---------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT],
                         ids=["SIGTERM", "SIGINT", "SIGQUIT"])
def test_shutdown_removes_the_unix_socket(bouncer, signum: int) -> None:
    socket_path = os.path.join(bouncer.socket_dir, f".s.PGSQL.{bouncer.port}")
    assert os.path.exists(socket_path)
    bouncer.signal(signum)
    assert bouncer.wait(3) == 0
    assert not os.path.exists(socket_path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGQUIT], ids=["SIGTERM", "SIGQUIT"])
def test_shutdown_removes_the_pidfile(bouncer, signum: int) -> None:
    pidfile = os.path.join(bouncer.workdir, "bouncer.pid")
    assert wait_until(lambda: read_pid(pidfile) == bouncer.pid, 5)
    bouncer.signal(signum)
    assert bouncer.wait(3) == 0
    assert not os.path.exists(pidfile)
