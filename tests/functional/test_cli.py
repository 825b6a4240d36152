"""The command line, as an operator uses it: -V, -h, --check, -d with a pidfile, -q, -v, what a
broken config does (names file, line and key; exits non-zero; never listens), and the log lines
in PgBouncer's format."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from typing import List, Tuple

import psycopg2
import pytest

from tests.support import pgwire
from tests.support.bouncerproc import BOUNCER_PROGRAM, REPO_ROOT, userlist_text
from tests.support.inifile import common_ini
from tests.support.observe import read_pid, read_text
from tests.support.pgcluster import STANDARD_PASSWORDS
from tests.support.ports import accepts_connections, free_port, wait_until

#: PgBouncer's prefix: time with milliseconds and zone, [pid], level.
LINE_START = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+ \[\d+\] "


def run_cli(args: List[str], timeout: float = 20) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run([*BOUNCER_PROGRAM, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO_ROOT)


def write_config(directory, ini_text: str) -> Tuple[str, int]:
    """Write the ini (placeholders filled) and the standard userlist; returns (path, port)."""
    port = free_port()
    text = ini_text.replace("@PORT@", str(port)).replace("@DIR@", str(directory))
    path = os.path.join(str(directory), "bouncer.ini")
    with open(path, "w", encoding="utf-8") as ini:
        ini.write(text)
    with open(os.path.join(str(directory), "userlist.txt"), "w", encoding="utf-8") as users:
        users.write(userlist_text(STANDARD_PASSWORDS))
    return path, port


def line_of(path: str, start: str) -> int:
    with open(path, encoding="utf-8") as ini:
        return next(number for number, line in enumerate(ini, 1) if line.startswith(start))


def listening(port: int) -> bool:
    return accepts_connections(socket.AF_INET, ("127.0.0.1", port))


# -- information flags --------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag: str) -> None:
    result = run_cli([flag])
    assert result.returncode == 0
    assert result.stdout.startswith("bouncer ") and "PgBouncer 1." in result.stdout


def test_help_lists_pgbouncers_flags() -> None:
    result = run_cli(["-h"])
    assert result.returncode == 0
    for flag in ("--daemon", "--quiet", "--verbose", "--user", "--version", "--help"):
        assert flag in result.stdout


def test_missing_config_argument_is_an_error() -> None:
    result = run_cli([])
    assert result.returncode != 0
    assert "usage" in result.stderr.lower()


# -- --check --------------------------------------------------------------------------------------
def test_check_accepts_a_good_config_without_listening(pg, tmp_path) -> None:
    path, port = write_config(tmp_path, common_ini(pg))
    result = run_cli(["--check", path])
    assert (result.returncode, result.stdout.strip()) == (0, f"{path}: configuration OK")
    assert not listening(port)


BAD_CONFIGS = {
    "bad-enum": ({"pool_mode": "sometimes"}, None, "pool_mode ="),
    "bad-number": ({"max_client_conn": "lots"}, None, "max_client_conn ="),
    "unknown-key": ({"not_a_setting": "1"}, None, "not_a_setting ="),
    "bad-connstr": ({}, {"testdb": "host=127.0.0.1 dbname"}, "testdb ="),
}


@pytest.fixture(params=sorted(BAD_CONFIGS))
def bad_config(request, pg, tmp_path) -> Tuple[str, int, str]:
    """(path, port, where): a config with one error, and the ``file:line: key`` it must name."""
    settings, databases, bad_line = BAD_CONFIGS[request.param]
    path, port = write_config(tmp_path, common_ini(pg, databases=databases, **settings))
    key = bad_line.split(" =")[0]
    return path, port, f"{path}:{line_of(path, bad_line)}: {key}"


def test_check_names_file_line_and_key_of_a_bad_config(bad_config) -> None:
    path, _, where = bad_config
    result = run_cli(["--check", path])
    assert result.returncode != 0
    assert where in result.stderr


def test_bad_config_exits_without_listening(bad_config) -> None:
    path, port, where = bad_config
    result = run_cli([path])
    assert result.returncode != 0
    assert where in result.stderr
    assert not listening(port)


def test_missing_config_file_is_named(tmp_path) -> None:
    missing = str(tmp_path / "absent.ini")
    result = run_cli([missing])
    assert result.returncode != 0
    assert missing in result.stderr


# -- -d -------------------------------------------------------------------------------------------
def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_daemon_mode_detaches_and_writes_its_pidfile(pg, tmp_path) -> None:
    path, port = write_config(tmp_path, common_ini(pg))
    pidfile = str(tmp_path / "bouncer.pid")
    result = run_cli(["-d", path])  # returns once the parent has exited
    assert wait_until(lambda: read_pid(pidfile) is not None, 5), f"no pidfile: {result}"
    daemon = read_pid(pidfile)
    try:
        assert result.returncode == 0
        assert process_exists(daemon)
        conn = psycopg2.connect(host="127.0.0.1", port=port, dbname="testdb", user="md5user",
                                password="md5pass", connect_timeout=5)
        conn.close()
    finally:
        os.kill(daemon, signal.SIGQUIT)
        assert wait_until(lambda: not process_exists(daemon), 5), "the daemon did not stop"
    assert not os.path.exists(pidfile)


def test_daemon_mode_needs_a_pidfile(pg, tmp_path) -> None:
    path, port = write_config(tmp_path, common_ini(pg, pidfile=None))
    result = run_cli(["-d", path])
    assert result.returncode != 0
    assert "pidfile" in result.stderr
    assert not listening(port)


# -- -q -----------------------------------------------------------------------------------------
def test_quiet_keeps_stderr_empty_but_still_writes_the_logfile(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg), flags=["-q"])
    bouncer.connect().close()
    logfile = os.path.join(bouncer.workdir, "bouncer.log")
    assert wait_until(lambda: "login attempt" in read_text(logfile), 5)
    assert bouncer.log_text() == ""


@pytest.mark.parametrize("flags, shown", [([], False), (["-v"], True)], ids=["default", "-v"])
def test_verbose_adds_debug_lines(pg, bouncer_factory, flags: List[str], shown: bool) -> None:
    bouncer = bouncer_factory(common_ini(pg), flags=flags)
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(pgwire.cancel_request(1, 2))  # an unknown key: logged at DEBUG
        assert pgwire.closed_by_peer(sock, 3)
    bouncer.reload()  # a later LOG line, so the DEBUG one would be there by now
    bouncer.wait_for_log("got SIGHUP")
    assert bool(re.search(LINE_START + "DEBUG ", bouncer.log_text(), re.M)) is shown


def test_without_quiet_the_log_goes_to_stderr_too(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg))
    bouncer.connect().close()
    bouncer.wait_for_log("login attempt: db=testdb user=md5user tls=no")


# -- what the log says ----------------------------------------------------------------------------
def test_login_and_disconnect_lines_in_pgbouncers_format(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg))
    bouncer.connect().close()
    client = r"C-0x[0-9a-f]+: testdb/md5user@127\.0\.0\.1:\d+"
    bouncer.wait_for_log(LINE_START + "LOG " + client +
                         " login attempt: db=testdb user=md5user tls=no replication=no$")
    bouncer.wait_for_log(LINE_START + "LOG " + client + r" closing because: .* \(age=\d+s\)$")


def test_log_connections_off_silences_login_lines(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, log_connections=0, log_disconnections=0))
    conn = bouncer.connect()
    conn.close()
    bouncer.reload()  # a line logged after the client's visit: its own lines would be there
    bouncer.wait_for_log("got SIGHUP")
    assert "login attempt" not in bouncer.log_text()
    assert "closing because" not in bouncer.log_text()


def test_periodic_stats_line(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, stats_period=1))
    bouncer.wait_for_log(LINE_START + r"LOG stats: \d+ xacts/s, \d+ queries/s, .*"
                         r"in \d+ B/s, out \d+ B/s, xact \d+ us, query \d+ us, wait \d+ us$",
                         timeout=5)
