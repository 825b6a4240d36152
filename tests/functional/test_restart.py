"""Process lifecycle across restarts: a rolling restart with so_reuseport under load, and the
online restart (-R) that takes the listening sockets over."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Iterator, List

import psycopg2

from tests.support.inifile import common_ini
from tests.support.observe import Background
from tests.support.pgbench import run_pgbench
from tests.support.ports import free_port, wait_until

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


def test_rolling_restart_under_load_loses_nothing(pg, bouncer_factory) -> None:
    """pgbench keeps its connections on the old process, which serves them to the end; a
    client reconnecting in a loop lands on whichever process listens: nothing fails."""
    port = free_port()
    ini = common_ini(pg, listen_port=port, so_reuseport=1, pool_mode="transaction")
    old = bouncer_factory(ini)
    bench = Background(lambda: run_pgbench(old, ["-S", "-c", "8", "-j", "2", "-T", "6"]))
    with kernel_migrates_queued_connections(), Hammer(port) as hammer:
        wait_until(lambda: hammer.done > 20, 10)
        new = bouncer_factory(ini)
        new.wait_for_log(r"listening on 127\.0\.0\.1:%d" % port)
        before = hammer.done
        old.signal(signal.SIGTERM)
        wait_until(lambda: hammer.done > before + 50, 15)
        assert old.wait(20) == 0  # after pgbench's clients left
    result = bench.result(30)
    assert result.returncode == 0 and result.failed == 0 and result.processed, result.output
    assert hammer.failures == []
    assert hammer.done > before + 50, "the new process served the clients after the switch"
    assert new.alive


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


def test_online_restart_takes_the_sockets_over(pg, bouncer_factory) -> None:
    port = free_port()
    old = bouncer_factory(common_ini(pg, listen_port=port, pool_mode="transaction"))
    held = old.connect()
    held.autocommit = True
    # The new process finds the old one through the unix socket, so it shares its directory.
    new = bouncer_factory(common_ini(pg, listen_port=port, pool_mode="transaction",
                                     unix_socket_dir=old.workdir), flags=("-R",))
    new.wait_for_log("took over")
    with held.cursor() as cur:  # the old process still serves the client it had
        cur.execute("SELECT 'old'")
        assert cur.fetchone() == ("old",)
    fresh = psycopg2.connect(host="127.0.0.1", port=port, dbname="testdb", user="md5user",
                             password="md5pass", connect_timeout=5)
    with fresh.cursor() as cur:
        cur.execute("SELECT 'new'")
        assert cur.fetchone() == ("new",)
    fresh.close()
    held.close()
    assert old.wait(10) == 0
    assert new.alive
    assert os.path.exists(os.path.join(old.workdir, f".s.PGSQL.{port}")), \
        "the old process left the unix socket file to the new one"
