"""Server connections: where they are opened (host lists, unix sockets, connect_query,
min_pool_size, the ``*`` fallback entry) and what a client sees when one dies
(pg_terminate_backend) or cannot be opened.

Leaks are judged by PostgreSQL's own pg_stat_activity, not by the pooler's SHOW output.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from typing import List

import psycopg2
import pytest

from tests.functional.pgroles import roles  # noqa: F401 (a fixture)
from tests.support import pgwire
from bouncer.testing.ini import common_ini
from tests.support.observe import (Background, backend_pid, scalar, server_pids,
                                   wait_for_server_pids)
from bouncer.testing.ports import free_port, wait_until

POOL_SIZE = 2
#: What psql may print when its server dies: PostgreSQL's own FATAL, passed on, or
#: PgBouncer's "server conn crashed?".  (psycopg2 only says "server closed the connection
#: unexpectedly", through PgBouncer and directly alike.)
SERVER_DEATH = "terminating connection due to administrator command|server conn crashed"


@pytest.fixture
def bouncer(pg, bouncer_factory):
    return bouncer_factory(common_ini(pg, pool_mode="transaction",
                                      default_pool_size=POOL_SIZE))


def terminate(pg, pid: int) -> None:
    assert pg.psql(f"SELECT pg_terminate_backend({pid})") == "t"


def assert_works(bouncer) -> int:
    """A fresh client can query; returns its server's pid."""
    conn = bouncer.connect()
    try:
        conn.autocommit = True
        assert scalar(conn, "SELECT 1") == 1
        return backend_pid(conn)
    finally:
        conn.close()


# -- a server dies under its client -------------------------------------------------------------
def test_server_killed_mid_transaction(pg, bouncer) -> None:
    conn = bouncer.connect()  # psycopg2 opens a transaction: the server stays linked
    pid = backend_pid(conn)
    terminate(pg, pid)
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        scalar(conn, "SELECT 1")
    assert time.monotonic() - started < 3
    conn.close()
    assert assert_works(bouncer) != pid
    wait_for_server_pids(pg, "md5user", lambda pids: pid not in pids and len(pids) <= POOL_SIZE)


def test_server_killed_mid_query(pg, bouncer) -> None:
    conn = bouncer.connect()
    pid = backend_pid(conn)
    sleeper = Background(lambda: scalar(conn, "SELECT pg_sleep(10)"))
    time.sleep(0.3)
    terminate(pg, pid)
    with pytest.raises(psycopg2.OperationalError):
        sleeper.result(timeout=3)
    conn.close()
    assert assert_works(bouncer) != pid


def test_psql_shows_why_its_server_died(pg, bouncer) -> None:
    sql = "SELECT 'victim', pg_sleep(10)"
    psql = Background(lambda: bouncer.psql(sql))
    pids = wait_for_server_pids(pg, "md5user", bool, query=sql)
    terminate(pg, pids.pop())
    result = psql.result(timeout=3)
    assert result.returncode == 2
    assert re.search(SERVER_DEATH, result.stderr), result.stderr


def test_server_killed_while_idle_in_session_mode(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, pool_mode="session", default_pool_size=1))
    conn = bouncer.connect()
    conn.autocommit = True
    pid = backend_pid(conn)
    terminate(pg, pid)
    with pytest.raises(psycopg2.OperationalError):
        scalar(conn, "SELECT 1")
    conn.close()
    assert assert_works(bouncer) != pid


def test_repeated_kills_leak_no_server_connection(pg, bouncer) -> None:
    killed: List[int] = []
    for _ in range(5):
        conn = bouncer.connect()
        killed.append(backend_pid(conn))
        terminate(pg, killed[-1])
        with pytest.raises(psycopg2.OperationalError):
            scalar(conn, "SELECT 1")
        conn.close()
    assert_works(bouncer)
    remaining = wait_for_server_pids(pg, "md5user", lambda pids: len(pids) <= POOL_SIZE)
    assert not remaining & set(killed)
    assert bouncer.alive


def test_server_killed_while_idle_in_the_pool_is_replaced_unnoticed(pg, bouncer) -> None:
    conn = bouncer.connect()
    conn.autocommit = True
    try:
        pid = backend_pid(conn)  # released at once: the server now idles in the pool
        terminate(pg, pid)
        wait_for_server_pids(pg, "md5user", lambda pids: pid not in pids)
        assert backend_pid(conn) != pid  # no error for the client: a fresh server
    finally:
        conn.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_failures_leak_no_sockets(pg, bouncer) -> None:
    assert_works(bouncer)
    baseline = open_fds(bouncer.pid)  # listeners, log file and the pool's idle server
    for _ in range(10):
        with pytest.raises(psycopg2.OperationalError):
            bouncer.connect(password="wrong")
        with pgwire.connect(bouncer.host, bouncer.port) as sock:
            sock.sendall(b"\0\0\0\4")  # a malformed startup packet
        conn = bouncer.connect()
        terminate(pg, backend_pid(conn))
        with pytest.raises(psycopg2.OperationalError):
            scalar(conn, "SELECT 1")
        conn.close()
    assert_works(bouncer)
    assert wait_until(lambda: open_fds(bouncer.pid) <= baseline, 5), \
        f"{open_fds(bouncer.pid)} descriptors open, {baseline} before"


# -- a server cannot be reached -----------------------------------------------------------------
def test_unreachable_server_gives_an_error_not_a_hang(pg, bouncer_factory) -> None:
    dead = f"host=127.0.0.1 port={free_port()} dbname=testdb"
    bouncer = bouncer_factory(common_ini(pg, databases={"deaddb": dead}, query_wait_timeout=3,
                                         server_connect_timeout=2))
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        bouncer.connect(dbname="deaddb")
    assert time.monotonic() - started < 5
    assert bouncer.alive
    assert_works(bouncer)  # the other databases are unaffected


def forward_later(port: int, target: int, delay: float) -> threading.Thread:
    """After ``delay``, accept on ``port`` and relay each connection to ``target``: a server
    that comes back while clients wait."""
    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def serve() -> None:
        time.sleep(delay)
        listener = socket.create_server(("127.0.0.1", port))
        listener.settimeout(10)
        with contextlib.suppress(OSError), listener:
            while True:
                client = listener.accept()[0]
                server = socket.create_connection(("127.0.0.1", target))
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_client_waits_while_an_unreachable_server_comes_back(pg, bouncer_factory) -> None:
    """Connection refused is not a login refusal: the client waits within query_wait_timeout
    while bouncer retries every server_login_retry, as PgBouncer does."""
    port = free_port()
    bouncer = bouncer_factory(common_ini(pg, databases={"later": f"host=127.0.0.1 port={port} "
                                                                  "dbname=testdb"},
                                         server_login_retry=1, query_wait_timeout=20))
    forward_later(port, pg.port, delay=1.5)
    started = time.monotonic()
    conn = bouncer.connect(dbname="later", connect_timeout=20)
    try:
        assert scalar(conn, "SELECT 1") == 1
    finally:
        conn.close()
    assert 1.5 < time.monotonic() - started < 10
    assert "connect failed" in bouncer.log_text()


def test_a_refused_login_fails_the_waiters_at_once_when_only_reconnecting_servers_are_left(
        pg, roles, bouncer_factory) -> None:
    # PgBouncer's kill_pool_logins: a server RECONNECT marked will close when released, so
    # it is no reason to keep the waiters waiting for query_wait_timeout.
    user = roles.create("h13_changed", "before-pw")
    forced = f"host=127.0.0.1 port={pg.port} dbname=testdb user={user} password=before-pw"
    bouncer = bouncer_factory(common_ini(pg, databases={"forced": forced},
                                         pool_mode="transaction", default_pool_size=1,
                                         query_wait_timeout=30))
    holder = bouncer.connect(dbname="forced")
    try:
        backend_pid(holder)  # inside a transaction: its server stays linked
        roles.set_password(user, "after-pw")
        bouncer.admin("RECONNECT forced")
        bouncer.admin("SET default_pool_size = 2")
        started = time.monotonic()
        with pytest.raises(psycopg2.OperationalError):
            scalar(bouncer.connect(dbname="forced"), "SELECT 1")
        assert time.monotonic() - started < 10
    finally:
        holder.close()
    # The waiter got the server's words, and the refused server has its closing line too.
    refused = rf'closing because: password authentication failed for user "{user}"'
    bouncer.wait_for_log(rf"C-0x\w+: forced/md5user@\S+ {refused}")
    bouncer.wait_for_log(rf"S-0x\w+: forced/{user}@\S+ {refused}")


# -- where servers are opened -------------------------------------------------------------------
def client_addrs_of_concurrent_servers(bouncer, count: int) -> List[object]:
    """``inet_client_addr()`` as seen by ``count`` servers opened at once (None = unix)."""
    conns = [bouncer.connect() for _ in range(count)]
    try:
        addrs = [scalar(conn, "SELECT host(inet_client_addr())") for conn in conns]
        assert len({backend_pid(conn) for conn in conns}) == count
        return addrs
    finally:
        for conn in conns:
            conn.close()


def test_unix_socket_host_for_servers(pg, bouncer_factory) -> None:
    databases = {"testdb": f"host={pg.socket_dir} port={pg.port} dbname=testdb"}
    bouncer = bouncer_factory(common_ini(pg, databases=databases, pool_mode="transaction"))
    assert client_addrs_of_concurrent_servers(bouncer, 2) == [None, None]


def test_comma_list_of_hosts_is_used_round_robin(pg, bouncer_factory) -> None:
    databases = {"testdb": f"host=127.0.0.1,{pg.socket_dir} port={pg.port} dbname=testdb"}
    bouncer = bouncer_factory(common_ini(pg, databases=databases, pool_mode="transaction",
                                         default_pool_size=4))
    addrs = client_addrs_of_concurrent_servers(bouncer, 4)
    assert sorted(addrs, key=str) == ["127.0.0.1", "127.0.0.1", None, None]


def test_host_list_with_a_name_and_an_address(pg, bouncer_factory) -> None:
    databases = {"testdb": f"host=127.0.0.1,localhost port={pg.port} dbname=testdb"}
    bouncer = bouncer_factory(common_ini(pg, databases=databases, pool_mode="transaction",
                                         default_pool_size=4))
    assert set(client_addrs_of_concurrent_servers(bouncer, 4)) <= {"127.0.0.1", "::1"}


def test_a_host_that_does_not_resolve_gives_way_to_the_next_at_once(pg, bouncer_factory) -> None:
    """load_balance_hosts=disable: the connect that meets the bad first host goes on to the
    next one at once (no wait for server_login_retry), the connections after it stay there,
    and clients arriving together cost one failed lookup, not one each."""
    databases = {"testdb": f"host=unresolvable-hostname,127.0.0.1 port={pg.port} "
                           "dbname=testdb load_balance_hosts=disable"}
    bouncer = bouncer_factory(common_ini(pg, databases=databases, pool_mode="transaction",
                                         default_pool_size=4, server_login_retry=30))
    started = time.monotonic()
    logins = [Background(bouncer.connect) for _ in range(3)]
    conns = [login.result() for login in logins]
    try:
        # Each inside a transaction: three servers, each asked where it was reached from.
        addrs = [scalar(conn, "SELECT host(inet_client_addr())") for conn in conns]
        assert len({backend_pid(conn) for conn in conns}) == 3
    finally:
        for conn in conns:
            conn.close()
    assert addrs == ["127.0.0.1"] * 3
    assert time.monotonic() - started < 5
    log = bouncer.log_text()
    assert len(re.findall(r"S-0x[0-9a-f]+: testdb/md5user@unresolvable-hostname:\d+ closing "
                          r"because: server DNS lookup failed", log)) == 1, log
    assert len(re.findall(r"@127\.0\.0\.1:\d+ new connection to server", log)) == 3, log


def test_connect_query_runs_on_every_new_server(pg, bouncer_factory) -> None:
    databases = {"testdb": f"host=127.0.0.1 port={pg.port} dbname=testdb "
                           f"connect_query='SET work_mem TO 1234'"}
    bouncer = bouncer_factory(common_ini(pg, databases=databases, pool_mode="transaction"))
    conns = [bouncer.connect() for _ in range(2)]
    try:
        assert [scalar(conn, "SHOW work_mem") for conn in conns] == ["1234kB", "1234kB"]
        assert len({backend_pid(conn) for conn in conns}) == 2
    finally:
        for conn in conns:
            conn.close()


def test_min_pool_size_opens_servers_ahead_of_demand(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, pool_mode="transaction", min_pool_size=3))
    conn = bouncer.connect()  # a pool with a client (PgBouncer's condition without forced user)
    try:
        conn.autocommit = True
        assert scalar(conn, "SELECT 1") == 1  # used and released: one idle server so far
        wait_for_server_pids(pg, "md5user", lambda pids: len(pids) == 3, timeout=5)
    finally:
        conn.close()


def test_min_pool_size_of_a_forced_user_opens_servers_before_any_client(pg, bouncer_factory) -> None:
    databases = {"forced": f"host=127.0.0.1 port={pg.port} dbname=testdb user=md5user "
                           "min_pool_size=2"}
    bouncer = bouncer_factory(common_ini(pg, databases, pool_mode="transaction",
                                         pool_idle_timeout=1))
    wait_for_server_pids(pg, "md5user", lambda pids: len(pids) == 2, timeout=5)
    time.sleep(1.5)  # ... and pool_idle_timeout does not free that pool
    assert [row[:2] for row in bouncer.admin("SHOW POOLS") if row[0] == "forced"] == [
        ("forced", "md5user")]
    assert len(server_pids(pg, "md5user")) == 2


def test_fallback_database_entry_serves_unlisted_databases(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, databases={"*": f"host=127.0.0.1 port={pg.port}"}))
    conn = bouncer.connect(dbname="bench")
    try:
        assert scalar(conn, "SELECT current_database()") == "bench"
    finally:
        conn.close()
    with pytest.raises(psycopg2.OperationalError, match='database "nosuchdb" does not exist'):
        bouncer.connect(dbname="nosuchdb")  # PostgreSQL's own refusal, passed on


def test_client_killed_during_the_reset_query_leaves_no_server_behind(pg, bouncer_factory) -> None:
    """KILL_CLIENT while bouncer runs server_reset_query for a leaving session-mode client:
    the half-read server is closed, not kept (leaked as active) nor given to someone else."""
    bouncer = bouncer_factory(common_ini(pg, pool_mode="session",
                                         server_reset_query="SELECT pg_sleep(2)"))
    conn = bouncer.connect()
    conn.autocommit = True  # leave with the server idle, so that it is reset, not dropped
    scalar(conn, "SELECT 1")
    conn.close()  # the reset query now runs for two seconds

    def leaving_client() -> List[tuple]:
        return [row for row in bouncer.admin("SHOW CLIENTS") if row[1] == "md5user"]

    assert wait_until(lambda: leaving_client(), 5)
    bouncer.admin(f"KILL_CLIENT {leaving_client()[0][-1]}")
    assert wait_until(lambda: not [row for row in bouncer.admin("SHOW SERVERS")
                                   if row[1] == "md5user"], 5), "a server was left behind"
    # ... and its query was cancelled, not left sleeping on the server
    assert wait_until(lambda: not pg.psql("SELECT pid FROM pg_stat_activity WHERE query = "
                                          "'SELECT pg_sleep(2)' AND state = 'active'"), 1.5)
    assert_works(bouncer)
    bouncer.stop()
    assert wait_until(lambda: not pg.psql("SELECT pid, state, query FROM pg_stat_activity "
                                          "WHERE usename = 'md5user'"), 5), \
        pg.psql("SELECT pid, state, query FROM pg_stat_activity WHERE usename = 'md5user'")
