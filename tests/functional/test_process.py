"""The process as a service manager sees it: systemd notifications, dropping privileges with
-u, and logging to syslog."""
from __future__ import annotations

import os
import pwd
import signal
import socket
import tempfile

import pytest

from bouncer.testing.ini import common_ini


def receive_until(sock: socket.socket, wanted: str, timeout: float = 10) -> str:
    """Datagrams received until one contains *wanted*; returns them all, joined."""
    sock.settimeout(timeout)
    seen = []
    while not any(wanted in text for text in seen):
        seen.append(sock.recv(4096).decode())
    return "\n".join(seen)


def test_systemd_is_told_ready_reloading_status_and_stopping(pg, bouncer_factory, tmp_path,
                                                             monkeypatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        bouncer = bouncer_factory(common_ini(pg, stats_period=1))
        assert "READY=1" in receive_until(notify, "READY=1")
        assert "STATUS=stats: " in receive_until(notify, "STATUS=stats: ")
        bouncer.reload()
        received = receive_until(notify, "READY=1")
        assert received.index("RELOADING=1") < received.index("READY=1")
        bouncer.signal(signal.SIGTERM)
        assert "STOPPING=1" in receive_until(notify, "STOPPING=1")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_dash_u_switches_to_the_given_user(pg, bouncer_factory) -> None:
    shared = tempfile.mkdtemp(prefix="bouncer-u-")
    os.chmod(shared, 0o777)  # the pidfile is written after the switch
    pidfile = os.path.join(shared, "bouncer.pid")
    bouncer = bouncer_factory(common_ini(pg, pidfile=pidfile), flags=("-u", "postgres"))
    conn = bouncer.connect()
    conn.close()
    with open(f"/proc/{bouncer.pid}/status") as status:
        uid_line = next(line for line in status if line.startswith("Uid:"))
    assert int(uid_line.split()[1]) == pwd.getpwnam("postgres").pw_uid
    with open(pidfile) as handle:
        assert int(handle.read()) == bouncer.pid


@pytest.mark.skipif(os.path.exists("/dev/log") or os.geteuid() != 0,
                    reason="reads syslog from UDP port 514, used when /dev/log is absent")
def test_syslog_gets_pgbouncer_style_lines(pg, bouncer_factory) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as syslog:
        syslog.bind(("127.0.0.1", 514))
        bouncer_factory(common_ini(pg, syslog=1, syslog_ident="bouncer-test"))
        line = receive_until(syslog, "listening on")
    assert "bouncer-test[" in line and "LOG listening on" in line
