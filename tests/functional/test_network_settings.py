"""Settings an operator sets for the socket layer and the pooler's housekeeping, observed from
outside: the socket file's group, the kernel's buffer sizes, oversized packets, idle
auto-databases and SUSPEND's timeout."""
from __future__ import annotations

import grp
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from tests.support import pgwire
from tests.support.inifile import common_ini
from tests.support.ports import wait_until

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


def _pooler_holds(bouncer, client_port: int) -> bool:
    """Whether the pooler has accepted our connection from *client_port*: its end of it (in
    /proc/net/tcp) is one of the pooler's descriptors."""
    with open("/proc/net/tcp") as table:
        inodes = {fields[9] for fields in (line.split() for line in list(table)[1:])
                  if int(fields[1].split(":")[1], 16) == bouncer.port
                  and int(fields[2].split(":")[1], 16) == client_port}
    fd_dir = f"/proc/{bouncer.pid}/fd"
    return any(os.readlink(os.path.join(fd_dir, fd)) in {f"socket:[{inode}]" for inode in inodes}
               for fd in os.listdir(fd_dir))


def _accepts_silent_connection(bouncer) -> bool:
    """Whether a TCP connection that has sent nothing yet reaches the pooler; then, once it
    sends an SSLRequest, the pooler answers it in either case."""
    silent = socket.create_connection((bouncer.host, bouncer.port))
    try:
        port = silent.getsockname()[1]
        accepted = wait_until(lambda: _pooler_holds(bouncer, port), 1.0)
        silent.sendall(pgwire.packet(pgwire.SSL_REQUEST))
        silent.settimeout(5)
        assert silent.recv(1) == b"N"
    finally:
        silent.close()
    return accepted


def test_tcp_defer_accept_keeps_a_silent_connection_in_the_kernel(pg, bouncer_factory) -> None:
    # PgBouncer's default: the pooler first sees a connection when its startup packet came.
    bouncer = bouncer_factory(common_ini(pg))
    assert not _accepts_silent_connection(bouncer)
    bouncer.write_ini(common_ini(pg, tcp_defer_accept=0))
    bouncer.reload()
    bouncer.wait_for_log("got SIGHUP")
    assert wait_until(lambda: _accepts_silent_connection(bouncer), 5)
