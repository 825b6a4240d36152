"""``workers = 2``: one supervisor, two workers sharing the listening sockets.

A worker's clients carry its peer id in their cancel keys (worker i has peer id i), and each
worker has a private unix socket (named in its log), so the tests can tell which worker a
client landed on and choose which worker a cancel or console command reaches.
"""
from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import pytest

from bouncer.proto.cancel_key import key_peer
from bouncer.testing.ini import common_ini
from bouncer.testing.pgcluster import STANDARD_PASSWORDS
from bouncer.testing.ports import free_port, wait_until
from bouncer.testing.process import BOUNCER_PROGRAM, REPO_ROOT, BouncerProcess, userlist_text
from tests.support import pgwire

QUERY_CANCELED = "57014"
WORKERS = (1, 2)


@pytest.fixture
def pooler(pg, bouncer_factory) -> BouncerProcess:
    bouncer = bouncer_factory(common_ini(pg, workers=2))
    for index in WORKERS:
        bouncer.wait_for_log(rf"worker {index} \(pid \d+\) is serving")
    return bouncer


def private_dir(bouncer: BouncerProcess) -> str:
    """The supervisor's directory of the workers' private sockets (.s.PGSQL.<index>)."""
    return bouncer.wait_for_log(r"listening on unix:(\S+)/\.s\.PGSQL\.1 ").group(1)


def worker_pids(bouncer: BouncerProcess, since: int = 0) -> Dict[int, int]:
    """Worker index -> pid of its latest start after log offset *since*."""
    found = re.findall(r"worker (\d) \(pid (\d+)\) is serving", bouncer.log_text()[since:])
    return {int(index): int(pid) for index, pid in found}


def session(host: str, port: int) -> Tuple[socket.socket, int, Tuple[int, int]]:
    """A logged-in client, the worker serving it, and its cancel key."""
    sock, messages = pgwire.open_session(host, port, "md5user", "md5pass")
    key = pgwire.backend_key(messages)
    return sock, key_peer(key[0]), key


def sqlstate(messages: List[pgwire.Message]) -> str:
    error = pgwire.first_error(messages)
    return error["C"] if error else ""


def refuses_connections(pooler: BouncerProcess) -> bool:
    """Whether the shared TCP port refuses a new connection (nobody listens on it)."""
    try:
        socket.create_connection((pooler.host, pooler.port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_clients_land_on_both_workers(pooler) -> None:
    sockets, seen = [], set()
    for _ in range(40):  # held open, so the kernel's choice is spread over both
        sock, worker, _ = session(pooler.host, pooler.port)
        sockets.append(sock)
        seen.add(worker)
    for sock in sockets:
        sock.close()
    assert seen == set(WORKERS)
    supervisor = int(open(os.path.join(pooler.workdir, "bouncer.pid")).read())
    assert supervisor == pooler.pid and pooler.pid not in worker_pids(pooler).values()


@pytest.mark.parametrize("owner", WORKERS)
@pytest.mark.parametrize("via", WORKERS)
def test_a_cancel_reaches_the_query_whichever_worker_gets_it(pooler, owner, via) -> None:
    directory = private_dir(pooler)
    sock, worker, key = session(directory, owner)  # the private socket picks the worker
    assert worker == owner
    sock.sendall(pgwire.query("SELECT pg_sleep(10)"))
    time.sleep(0.3)  # the query has reached PostgreSQL
    started = time.monotonic()
    with pgwire.connect(directory, via) as cancel:
        cancel.sendall(pgwire.cancel_request(*key))
        assert pgwire.closed_by_peer(cancel, 5)
    sock.settimeout(5)
    assert sqlstate(pgwire.read_until(sock, b"Z")) == QUERY_CANCELED
    assert time.monotonic() - started < 5
    sock.close()


def test_a_cancel_on_the_shared_port_reaches_the_query(pooler) -> None:
    for _ in range(6):  # the kernel chooses the worker: both ways happen, each must work
        sock, _, key = session(pooler.host, pooler.port)
        sock.sendall(pgwire.query("SELECT pg_sleep(10)"))
        time.sleep(0.3)
        with pgwire.connect(pooler.host, pooler.port) as cancel:
            cancel.sendall(pgwire.cancel_request(*key))
            assert pgwire.closed_by_peer(cancel, 5)
        sock.settimeout(5)
        assert sqlstate(pgwire.read_until(sock, b"Z")) == QUERY_CANCELED
        sock.close()


def show_config(pooler: BouncerProcess, index: int, name: str) -> str:
    rows = pooler.admin("SHOW CONFIG", host=private_dir(pooler), port=index)
    return next(row[1] for row in rows if row[0] == name)


def test_sighup_reloads_every_worker(pooler, pg) -> None:
    pooler.write_ini(common_ini(pg, workers=2, query_wait_timeout=77))
    since = len(pooler.log_text())
    pooler.reload()
    for _ in WORKERS:
        pooler.wait_for_log(r"got SIGHUP, re-reading config", since=since)
        since = pooler.log_text().index("got SIGHUP, re-reading config", since) + 1
    for index in WORKERS:
        assert show_config(pooler, index, "query_wait_timeout") == "77"


def test_a_killed_worker_is_restarted_and_the_others_see_nothing(pooler) -> None:
    directory = private_dir(pooler)
    survivor, _, _ = session(directory, 2)
    orphan, _, _ = session(directory, 1)
    victim = worker_pids(pooler)[1]
    since = len(pooler.log_text())
    os.kill(victim, signal.SIGKILL)
    pooler.wait_for_log(rf"worker 1 \(pid {victim}\) was killed by signal SIGKILL, "
                        r"restarting it", since=since)
    pooler.wait_for_log(r"worker 1 \(pid \d+\) is serving", since=since)
    assert worker_pids(pooler, since)[1] != victim
    assert pgwire.closed_by_peer(orphan, 5)  # its clients lose their connection
    assert sqlstate(pgwire.run_query(survivor, "SELECT 1")) == ""
    again, worker, _ = session(directory, 1)
    assert worker == 1 and sqlstate(pgwire.run_query(again, "SELECT 1")) == ""
    conn = pooler.connect()
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    conn.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_shutdown_signal_stops_every_worker_and_the_supervisor(pooler, signum) -> None:
    pids = worker_pids(pooler)
    directory = private_dir(pooler)
    pooler.signal(signum)
    assert pooler.wait(10) == 0
    assert all(process_gone(pid) for pid in pids.values())
    assert not os.path.exists(os.path.join(pooler.workdir, "bouncer.pid"))
    assert not os.path.exists(directory)


def test_workers_end_with_a_supervisor_killed_with_sigkill(pooler) -> None:
    """The kernel tells each worker (SIGTERM): a client still connected keeps its session
    until it leaves, nobody new gets in, and the workers are gone after it."""
    pids = worker_pids(pooler)
    staying, _, _ = session(private_dir(pooler), 1)
    pooler.signal(signal.SIGKILL)
    pooler.wait(10)
    assert wait_until(lambda: process_gone(pids[2]), 10), "an idle worker exits at once"
    assert sqlstate(pgwire.run_query(staying, "SELECT 1")) == ""
    assert not process_gone(pids[1]), "a worker with a client waits for it"
    assert wait_until(lambda: refuses_connections(pooler), 5), "nobody new gets in"
    staying.close()
    assert wait_until(lambda: process_gone(pids[1]), 10)


def test_one_worker_is_one_process_as_before(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg))
    assert int(open(os.path.join(bouncer.workdir, "bouncer.pid")).read()) == bouncer.pid
    children = subprocess.run(["pgrep", "-P", str(bouncer.pid)], capture_output=True, text=True)
    assert children.stdout == ""
    assert "supervisor" not in bouncer.log_text()


def test_systemd_hears_ready_once_from_the_supervisor(pg, bouncer_factory, tmp_path,
                                                      monkeypatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        bouncer = bouncer_factory(common_ini(pg, workers=2))
        notify.settimeout(10)
        first = notify.recv(4096).decode()
        assert "READY=1" in first and "2 workers" in first
        assert len(worker_pids(bouncer)) == 2  # READY came once both served
        notify.settimeout(1)
        with pytest.raises(socket.timeout):  # the workers themselves say nothing
            notify.recv(4096)
        bouncer.signal(signal.SIGTERM)
        notify.settimeout(10)
        assert "STOPPING=1" in notify.recv(4096).decode()
        assert bouncer.wait(10) == 0


def test_daemon_mode_runs_the_supervisor_in_the_background(pg, tmp_path) -> None:
    port = free_port()
    ini = tmp_path / "bouncer.ini"
    ini.write_text(common_ini(pg, workers=2).replace("@DIR@", str(tmp_path))
                   .replace("@PORT@", str(port)))
    (tmp_path / "userlist.txt").write_text(userlist_text(STANDARD_PASSWORDS))
    result = subprocess.run([*BOUNCER_PROGRAM, "-d", str(ini)], cwd=tmp_path, timeout=20,
                            env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert result.returncode == 0
    pidfile = tmp_path / "bouncer.pid"
    assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10)
    supervisor = int(pidfile.read_text())
    try:
        assert wait_until(lambda: len(re.findall("is serving", read_log(tmp_path))) == 2, 10)
        sock, _, _ = session("127.0.0.1", port)
        assert sqlstate(pgwire.run_query(sock, "SELECT 1")) == ""
        sock.close()
    finally:
        os.kill(supervisor, signal.SIGTERM)
    assert wait_until(lambda: process_gone(supervisor), 10)
    assert not pidfile.exists()


def read_log(directory) -> str:
    path = os.path.join(directory, "bouncer.log")
    return open(path).read() if os.path.exists(path) else ""


def test_a_waiting_shutdown_refuses_new_clients_and_ends_with_the_last(pooler) -> None:
    sock, _, _ = session(pooler.host, pooler.port)
    pooler.signal(signal.SIGTERM)  # waits for the clients
    assert wait_until(lambda: refuses_connections(pooler), 5)
    assert pooler.alive
    sock.close()
    assert pooler.wait(10) == 0


def paused(pooler: BouncerProcess, index: int) -> str:
    rows = pooler.admin("SHOW STATE", host=private_dir(pooler), port=index)
    return dict(rows)["paused"]


def wait_paused(pooler: BouncerProcess, value: str) -> None:
    for index in WORKERS:
        assert wait_until(lambda: paused(pooler, index) == value, 5), pooler.log_tail()


def test_sigusr1_and_sigusr2_pause_and_resume_every_worker(pooler) -> None:
    pooler.signal(signal.SIGUSR1)
    wait_paused(pooler, "yes")
    pooler.signal(signal.SIGUSR2)
    wait_paused(pooler, "no")


def test_console_pause_and_resume_on_one_worker_act_on_both(pooler) -> None:
    pooler.admin("PAUSE", host=private_dir(pooler), port=1)
    wait_paused(pooler, "yes")
    pooler.admin("RESUME", host=private_dir(pooler), port=2)
    wait_paused(pooler, "no")


def runs_python_as_postgres() -> bool:
    if os.geteuid() != 0:
        return False  # switching users needs root
    try:
        check = subprocess.run([sys.executable, "-c", "import gevent.subprocess"],
                               user="postgres", capture_output=True, cwd="/")
    except PermissionError:  # the interpreter itself, under root's home for instance
        return False
    return check.returncode == 0


@pytest.mark.skipif(not runs_python_as_postgres(),
                    reason="needs root, and an interpreter the postgres user can run: the "
                           "workers are started after the switch")
def test_dash_u_runs_supervisor_and_workers_as_the_user(pg, bouncer_factory) -> None:
    shared = tempfile.mkdtemp(prefix="bouncer-u-")
    os.chmod(shared, 0o777)  # the pidfile is written after the switch
    bouncer = bouncer_factory(common_ini(pg, workers=2, pidfile=f"{shared}/bouncer.pid"),
                              flags=("-u", "postgres"))
    for index in WORKERS:
        bouncer.wait_for_log(rf"worker {index} \(pid \d+\) is serving")
    uid = pwd.getpwnam("postgres").pw_uid
    for pid in [bouncer.pid, *worker_pids(bouncer).values()]:
        assert os.stat(f"/proc/{pid}").st_uid == uid
    sock, worker, key = session(private_dir(bouncer), 2)
    sock.sendall(pgwire.query("SELECT pg_sleep(10)"))
    time.sleep(0.3)
    with pgwire.connect(private_dir(bouncer), 1) as cancel:  # worker 1 forwards it to 2
        cancel.sendall(pgwire.cancel_request(*key))
        assert pgwire.closed_by_peer(cancel, 5)
    sock.settimeout(5)
    assert sqlstate(pgwire.read_until(sock, b"Z")) == QUERY_CANCELED
