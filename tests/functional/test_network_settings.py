"""Settings an operator sets for the socket layer and the pooler's housekeeping, observed from
outside: the socket file's group, the kernel's buffer sizes, oversized packets, idle
auto-databases and SUSPEND's timeout."""
from __future__ import annotations

import contextlib
import grp
import io
import os
import shutil
import socket
import subprocess
import threading
import time

import psycopg2
import pytest

from tests.support import pgwire
from bouncer.testing.ini import common_ini
from tests.support.pgbench import run_pgbench
from bouncer.testing.ports import wait_until

USER, PASSWORD = "md5user", "md5pass"


def test_unix_socket_group_is_applied(pg, bouncer_factory) -> None:
    group = grp.getgrnam("postgres")
    bouncer = bouncer_factory(common_ini(pg, unix_socket_group="postgres"))
    socket_file = os.path.join(bouncer.socket_dir, f".s.PGSQL.{bouncer.port}")
    assert os.stat(socket_file).st_gid == group.gr_gid


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read buffers")
def test_tcp_socket_buffer_sizes_the_kernel_buffers(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, tcp_socket_buffer=65536))
    sock, _ = pgwire.open_session(bouncer.host, bouncer.port, USER, PASSWORD)
    try:
        local_port = sock.getsockname()[1]
        # The pooler's end of our connection: its source port is the listen port.
        out = subprocess.run(["ss", "-tmnH", "state", "established", f"( sport = :{bouncer.port} "
                              f"and dport = :{local_port} )"], capture_output=True,
                             text=True, check=True).stdout
    finally:
        sock.close()
    # Linux doubles the value it is given (room for bookkeeping).
    assert "rb131072" in out and "tb131072" in out, out


def _accepted(server_port: int, client_port: int) -> bool:
    """Whether the server's end of this TCP connection belongs to a process yet: the kernel gives
    it an inode only when accept() hands it out (other connections to the pooler do not count)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if (int(local.rsplit(":", 1)[1], 16) == server_port
                        and int(remote.rsplit(":", 1)[1], 16) == client_port):
                    return inode != "0"
    return False


def _accepted_while_silent(bouncer) -> bool:
    """Whether the pooler accepts a TCP connection that has sent nothing yet."""
    with socket.create_connection((bouncer.host, bouncer.port)) as client:
        client_port = client.getsockname()[1]
        # Deferred, the kernel holds it for a second (then resends its SYN-ACK).
        return wait_until(lambda: _accepted(bouncer.port, client_port), 0.5)


def test_tcp_defer_accept_keeps_a_silent_connection_in_the_kernel(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg))  # on by default, as PgBouncer's on Linux
    assert not _accepted_while_silent(bouncer)
    conn = bouncer.connect()  # a client that speaks first is accepted at once
    conn.close()
    bouncer.admin("SET tcp_defer_accept = 0")
    assert _accepted_while_silent(bouncer)
    # A setting bouncer cannot honour is refused, with why, and nothing changes.
    with pytest.raises(psycopg2.Error) as refused:
        bouncer.admin("SET dns_zone_check_period = 60")
    assert "system resolver" in str(refused.value.pgerror or refused.value)
    assert ("dns_zone_check_period", "0") in [row[:2] for row in bouncer.admin("SHOW CONFIG")]


@pytest.mark.parametrize("loops", [1, 0])
def test_a_tiny_pkt_buf_relays_every_protocol_intact(pg, bouncer_factory, loops: int) -> None:
    """pkt_buf bytes at most per read (cutting messages anywhere), sbuf_loopcnt reads in a row
    (0: no limit): results, COPY both ways and prepared statements arrive whole."""
    bouncer = bouncer_factory(common_ini(pg, pool_mode="transaction", pkt_buf=61,
                                         sbuf_loopcnt=loops))
    conn = bouncer.connect()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT repeat('x', i) FROM generate_series(1, 300) AS i")
        assert [len(row[0]) for row in cur.fetchall()] == list(range(1, 301))
        cur.execute("CREATE TEMP TABLE t (n int, s text)")  # (one transaction: kept below)
        cur.execute("BEGIN")
        rows = "".join(f"{n}\t{'y' * n}\n" for n in range(500))
        cur.copy_expert("COPY t FROM STDIN", io.StringIO(rows))
        out = io.StringIO()
        cur.copy_expert("COPY t TO STDOUT", out)
        assert out.getvalue() == rows
        cur.execute("COMMIT")
    conn.close()
    bench = run_pgbench(bouncer, ["-M", "prepared", "-S", "-c", "4", "-t", "50"], user=USER)
    assert (bench.returncode, bench.processed) == (0, 200), bench.output


def test_max_packet_size_refuses_a_larger_message(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, max_packet_size=1000, pool_mode="transaction"))
    sock, _ = pgwire.open_session(bouncer.host, bouncer.port, USER, PASSWORD)
    sock.sendall(pgwire.query("SELECT '" + "x" * 2000 + "'"))
    error = pgwire.first_error(pgwire.messages_until_closed(sock, 5))
    assert error is not None and "max_packet_size" in error["M"]
    conn = bouncer.connect()  # the pooler is fine
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.close()


def test_idle_auto_database_is_freed(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(
        pg, autodb_idle_timeout=1, databases={"*": f"host=127.0.0.1 port={pg.port}"}))
    conn = bouncer.connect(dbname="postgres")  # not in [databases]: made from "*"
    conn.close()
    names = lambda: {row[0] for row in bouncer.admin("SHOW DATABASES")}  # noqa: E731
    assert "postgres" in names()
    assert wait_until(lambda: "postgres" not in names(), 10), "the auto-database stayed"
    again = bouncer.connect(dbname="postgres")  # and it comes back on demand
    again.close()


def test_suspend_drops_a_client_still_in_a_transaction_after_suspend_timeout(
        pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, suspend_timeout=1, pool_mode="transaction"))
    sock, _ = pgwire.open_session(bouncer.host, bouncer.port, USER, PASSWORD)
    pgwire.run_query(sock, "BEGIN")
    done = {}

    def suspend() -> None:
        started = time.monotonic()
        bouncer.admin("SUSPEND")
        done["after"] = time.monotonic() - started

    thread = threading.Thread(target=suspend)
    thread.start()
    error = pgwire.first_error(pgwire.messages_until_closed(sock, 5))
    thread.join(10)
    assert error is not None and error["M"] == "suspend_timeout"
    assert 0.9 < done["after"] < 4  # (closing the console that said SUSPEND resumes)
