"""Process lifecycle across restarts: a rolling restart with so_reuseport under load, and the
online restart (-R) that takes the listening sockets over."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from typing import Iterator, List

import psycopg2
import psycopg2.errors
import pytest

from bouncer.proto.cancel_key import key_peer
from bouncer.testing.ini import common_ini
from tests.support import pgwire
from tests.support.observe import Background, scalar
from tests.support.pgbench import run_pgbench
from bouncer.testing.ports import free_port, wait_until

MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


@contextlib.contextmanager
def kernel_migrates_queued_connections() -> Iterator[None]:
    """Ask Linux to hand a closing listener's queued connections to its reuseport siblings.

    bouncer accepts what is queued before it closes, but a connection the kernel queues in the
    last microseconds is reset unless this is on; operators are told to set it (bouncer(1)).
    """
    try:
        with open(MIGRATE_REQ) as handle:
            old = handle.read().strip()
        with open(MIGRATE_REQ, "w") as handle:
            handle.write("1")
    except OSError:
        old = None
    try:
        yield
    finally:
        if old is not None:
            with open(MIGRATE_REQ, "w") as handle:
                handle.write(old)


class Hammer:
    """Connects, runs one query and disconnects in a loop, counting failures."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.done = 0
        self.failures: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Hammer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=self.port, dbname="testdb",
                                        user="md5user", password="md5pass", connect_timeout=5)
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    assert cur.fetchone() == (1,)
                conn.close()
                self.done += 1
            except Exception as exc:  # every failure is what the test reports
                self.failures.append(repr(exc))


def serving_workers(pooler, workers: int) -> None:
    for index in range(1, workers + 1):
        pooler.wait_for_log(rf"worker {index} \(pid \d+\) is serving")


@pytest.mark.parametrize("workers", [1, 2])
def test_rolling_restart_under_load_loses_nothing(pg, bouncer_factory, workers) -> None:
    """pgbench keeps its connections on the old process, which serves them to the end; a
    client reconnecting in a loop lands on whichever process listens: nothing fails."""
    port = free_port()
    ini = common_ini(pg, listen_port=port, so_reuseport=1, pool_mode="transaction",
                     workers=workers)
    old = bouncer_factory(ini)
    bench = Background(lambda: run_pgbench(old, ["-S", "-c", "8", "-j", "2", "-T", "6"]))
    with kernel_migrates_queued_connections(), Hammer(port) as hammer:
        wait_until(lambda: hammer.done > 20, 10)
        new = bouncer_factory(ini)
        new.wait_for_log(r"listening on 127\.0\.0\.1:%d" % port)
        serving_workers(new, workers if workers > 1 else 0)
        before = hammer.done
        old.signal(signal.SIGTERM)
        wait_until(lambda: hammer.done > before + 50, 15)
        assert old.wait(20) == 0  # after pgbench's clients left
    result = bench.result(30)
    assert result.returncode == 0 and result.failed == 0 and result.processed, result.output
    assert hammer.failures == []
    assert hammer.done > before + 50, "the new process served the clients after the switch"
    assert new.alive


def test_a_waiting_shutdown_lets_an_accepted_tcp_client_log_in(pg, bouncer_factory) -> None:
    """A client accepted before SIGTERM (or from the listener's queue as it closes) that logs
    in afterwards is served, not told "pooler is shutting down": in a rolling restart it
    reached the old process before the new one could take it."""
    bouncer = bouncer_factory(common_ini(pg, tcp_defer_accept=0))  # accepted before it speaks
    sock = pgwire.connect(bouncer.host, bouncer.port)
    time.sleep(0.3)
    bouncer.signal(signal.SIGTERM)
    bouncer.wait_for_log(r"shutting down \(wait for clients\)")
    sock.sendall(pgwire.startup({"user": "md5user", "database": "testdb"}))
    assert pgwire.first_error(pgwire.login(sock, "md5user", "md5pass")) is None
    assert pgwire.first_error(pgwire.run_query(sock, "SELECT 1")) is None
    assert bouncer.alive, "the shutdown waits for it"
    sock.close()
    assert bouncer.wait(10) == 0


def test_sigterm_keeps_serving_an_open_client_until_it_leaves(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, pool_mode="transaction"))
    conn = bouncer.connect()
    conn.autocommit = True
    bouncer.signal(signal.SIGTERM)
    time.sleep(0.3)
    with conn.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    assert bouncer.alive
    conn.close()
    assert bouncer.wait(10) == 0


def restart_online(pg, bouncer_factory, old, **settings: object):
    """Start a bouncer with -R that takes *old*'s sockets and idle clients over."""
    # The new process finds the old one through the unix socket, so it shares its directory.
    new = bouncer_factory(common_ini(pg, listen_port=old.port, unix_socket_dir=old.workdir,
                                     **settings), flags=("-R",))
    new.wait_for_log("took over")
    return new


def local_port(conn) -> int:
    """The client side's port of a psycopg2 connection, as the pooler lists it."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        return sock.getsockname()[1]


def listed_ports(bouncer) -> List[int]:
    return [row[6] for row in bouncer.admin("SHOW CLIENTS")]  # (addr, port are 5 and 6)


def test_online_restart_takes_the_sockets_over(pg, bouncer_factory) -> None:
    port = free_port()
    old = bouncer_factory(common_ini(pg, listen_port=port, pool_mode="transaction"))
    new = restart_online(pg, bouncer_factory, old, pool_mode="transaction")
    fresh = psycopg2.connect(host="127.0.0.1", port=port, dbname="testdb", user="md5user",
                             password="md5pass", connect_timeout=5)
    with fresh.cursor() as cur:
        cur.execute("SELECT 'new'")
        assert cur.fetchone() == ("new",)
    fresh.close()
    assert old.wait(10) == 0
    assert new.alive
    assert os.path.exists(os.path.join(old.workdir, f".s.PGSQL.{port}")), \
        "the old process left the unix socket file to the new one"


def test_online_restart_moves_an_idle_client(pg, bouncer_factory) -> None:
    old = bouncer_factory(common_ini(pg, listen_port=free_port(), pool_mode="transaction"))
    held = old.connect(application_name="moved")
    held.autocommit = True
    with held.cursor() as cur:  # a tracked parameter moves along
        cur.execute("SET TimeZone = 'Asia/Tokyo'")
    new = restart_online(pg, bouncer_factory, old, pool_mode="transaction")
    assert old.wait(10) == 0, "nobody left to serve: the old process exits at once"
    assert "handed over to the new process" in old.log_text()
    assert scalar(held, "SELECT current_setting('TimeZone')") == "Asia/Tokyo"
    assert scalar(held, "SELECT current_setting('application_name')") == "moved"
    assert local_port(held) in listed_ports(new)
    held.close()


def test_online_restart_moves_a_scram_passthrough_client(pg, bouncer_factory) -> None:
    # No forced user, only PostgreSQL's own SCRAM secret: servers log in with the client's
    # SCRAM keys, which must move with it, as its server is gone by the time it asks again.
    stored = pg.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'scramuser'")
    settings = {"auth_type": "scram-sha-256", "pool_mode": "transaction",
                "server_lifetime": 1}
    old = bouncer_factory(common_ini(pg, listen_port=free_port(), **settings),
                          {"scramuser": stored})
    held = old.connect(user="scramuser")
    held.autocommit = True
    assert scalar(held, "SELECT current_user") == "scramuser"
    new = bouncer_factory(common_ini(pg, listen_port=old.port, unix_socket_dir=old.workdir,
                                     **settings), {"scramuser": stored}, flags=("-R",))
    new.wait_for_log("took over")
    assert old.wait(10) == 0
    time.sleep(1.5)  # past server_lifetime: no server the new process could reuse
    assert scalar(held, "SELECT current_user") == "scramuser"
    held.close()


def test_online_restart_waits_for_an_open_transaction(pg, bouncer_factory) -> None:
    old = bouncer_factory(common_ini(pg, listen_port=free_port(), pool_mode="transaction"))
    held = old.connect()
    with held.cursor() as cur:  # psycopg2 opens a transaction
        cur.execute("CREATE TEMP TABLE t AS SELECT 1 AS x")
    # SUSPEND waits for the transaction to end, served by the old process meanwhile.
    starting = Background(lambda: restart_online(pg, bouncer_factory, old,
                                                 pool_mode="transaction"))
    time.sleep(0.5)
    assert scalar(held, "SELECT x FROM t") == 1
    held.commit()
    new = starting.result(timeout=20)
    assert old.wait(10) == 0
    assert scalar(held, "SELECT 'after'") == "after"
    assert local_port(held) in listed_ports(new)
    held.close()


def test_online_restart_moves_the_cancel_key(pg, bouncer_factory) -> None:
    old = bouncer_factory(common_ini(pg, listen_port=free_port(), pool_mode="transaction"))
    held = old.connect()
    held.autocommit = True
    restart_online(pg, bouncer_factory, old, pool_mode="transaction")
    assert old.wait(10) == 0
    timer = threading.Timer(0.5, held.cancel)  # psycopg2 sends the key it got at login
    timer.start()
    started = time.monotonic()
    with pytest.raises(psycopg2.errors.QueryCanceled):
        scalar(held, "SELECT pg_sleep(10)")
    timer.join()
    assert time.monotonic() - started < 5
    held.close()


def test_a_takeover_that_does_not_finish_leaves_the_clients_served(pg, bouncer_factory) -> None:
    old = bouncer_factory(common_ini(pg, listen_port=free_port(), pool_mode="transaction"))
    held = old.connect()
    held.autocommit = True
    # What -R does up to SHOW FDS, then its console goes away without SHUTDOWN: the RESUME
    # that follows serves the listed client again (the descriptors libpq got are dropped).
    console = psycopg2.connect(host=old.workdir, port=old.port, dbname="pgbouncer",
                               user="pgbouncer")
    console.autocommit = True
    with console.cursor() as cur:
        cur.execute("SUSPEND")
        cur.execute("SHOW FDS")
        assert "client" in [row[1] for row in cur.fetchall()]
    console.close()
    old.wait_for_log("serving again 1 clients")
    assert scalar(held, "SELECT 'still old'") == "still old"
    held.close()


# -- online restart with workers ------------------------------------------------------------

@pytest.mark.parametrize("old_workers, new_workers", [(2, 2), (1, 2), (2, 1)])
def test_online_restart_with_workers_under_load_loses_nothing(pg, bouncer_factory, old_workers,
                                                               new_workers) -> None:
    """pgbench's connections stay with the old pooler or move to the new one, a client that
    reconnects in a loop lands on whichever listens: no transaction fails either way."""
    port = free_port()
    old = bouncer_factory(common_ini(pg, listen_port=port, pool_mode="transaction",
                                     workers=old_workers))
    serving_workers(old, old_workers if old_workers > 1 else 0)
    bench = Background(lambda: run_pgbench(old, ["-S", "-c", "8", "-j", "2", "-T", "6"]))
    with Hammer(port) as hammer:
        wait_until(lambda: hammer.done > 20, 10)
        new = restart_online(pg, bouncer_factory, old, pool_mode="transaction",
                             workers=new_workers)
        before = hammer.done
        wait_until(lambda: hammer.done > before + 50, 15)
        result = bench.result(30)
        assert old.wait(20) == 0, "the old pooler ends once its last client has left"
    assert result.returncode == 0 and result.failed == 0 and result.processed, result.output
    assert hammer.failures == []
    assert hammer.done > before + 50, "the new pooler served the clients after the switch"
    assert new.alive
    assert os.path.exists(os.path.join(old.workdir, f".s.PGSQL.{port}")), \
        "the old pooler left the unix socket file to the new one"
    assert new.admin("SHOW VERSION")  # its console answers on that file


def one_session_per_worker(pooler) -> dict:
    """Worker index -> a logged-in raw session on it, through the shared TCP port."""
    sessions: dict = {}
    for _ in range(40):
        sock, _, key = pgwire_session(pooler)
        worker = key_peer(key[0])
        if worker in sessions:
            sock.close()
        else:
            sessions[worker] = (sock, key)
        if len(sessions) == 2:
            return sessions
    pytest.fail(f"40 connections all landed on worker {list(sessions)}")


def pgwire_session(pooler):
    sock, messages = pgwire.open_session(pooler.host, pooler.port, "md5user", "md5pass")
    return sock, messages, pgwire.backend_key(messages)


def test_online_restart_with_workers_moves_the_clients_of_the_worker_it_reached(
        pg, bouncer_factory) -> None:
    """The takeover's console reaches one old worker: its idle client moves to the new
    worker of the same peer id, whose cancels still find it; the other worker's client is
    served by the old pooler until it leaves."""
    old = bouncer_factory(common_ini(pg, listen_port=free_port(), pool_mode="transaction",
                                     workers=2))
    serving_workers(old, 2)
    sessions = one_session_per_worker(old)
    new = restart_online(pg, bouncer_factory, old, pool_mode="transaction", workers=2)
    serving_workers(new, 2)
    old_private = old.wait_for_log(r"listening on unix:(\S+)/\.s\.PGSQL\.1 ").group(1)
    assert old_private not in new.log_text(), "a worker's own socket stays with its pooler"
    pids = dict(re.findall(r"worker (\d) \(pid (\d+)\) is serving", old.log_text()))
    moved = [worker for worker in sessions
             if re.search(rf"\[{pids[str(worker)]}\] LOG handing 1 idle clients over",
                          old.log_text())]
    assert len(moved) == 1, old.log_text()
    for sock, _ in sessions.values():
        assert pgwire.first_error(pgwire.run_query(sock, "SELECT 1")) is None
    sock, key = sessions[moved[0]]
    sock.sendall(pgwire.query("SELECT pg_sleep(10)"))
    time.sleep(0.3)
    for _ in range(4):  # a cancel reaches the query whichever new worker gets it
        with pgwire.connect(new.host, new.port) as cancel:
            cancel.sendall(pgwire.cancel_request(*key))
            assert pgwire.closed_by_peer(cancel, 5)
    sock.settimeout(5)
    assert pgwire.first_error(pgwire.read_until(sock, b"Z"))["C"] == "57014"
    assert old.alive, "the other worker's client is still the old pooler's"
    for _ in range(6):  # the old workers, draining, leave the shared unix socket to the new
        unix, _ = pgwire.open_session(old.workdir, new.port, "md5user", "md5pass")
        unix.close()
    for sock, _ in sessions.values():
        sock.close()
    assert old.wait(10) == 0
