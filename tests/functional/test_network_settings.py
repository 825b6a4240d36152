"""Settings an operator sets for the socket layer and the pooler's housekeeping, observed from
outside: the socket file's group, the kernel's buffer sizes, oversized packets, idle
auto-databases and SUSPEND's timeout."""
from __future__ import annotations

import grp
import os
import shutil
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
