"""The command line, as an operator uses it: -V, -h, --check, -d with a pidfile, -q, -v, what a
broken config does (names file, line and key; exits non-zero; never listens), and the log lines
in PgBouncer's format."""
from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
from typing import List, Tuple

import psycopg2
import pytest

from tests.support import pgwire
from bouncer.testing.process import BOUNCER_PROGRAM, REPO_ROOT, userlist_text
from bouncer.testing.ini import common_ini
from tests.support.observe import read_pid, read_text
from bouncer.testing.pgcluster import STANDARD_PASSWORDS
from bouncer.testing.ports import accepts_connections, free_port, wait_until

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
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, f"{path}: configuration OK")
    assert result.stderr == ""
    assert not listening(port)


def test_check_says_what_a_good_config_would_do(pg, tmp_path) -> None:
    path, port = write_config(tmp_path, common_ini(pg, databases={"*": f"port={pg.port}"},
                                                   auth_user="scramuser"))
    lines = run_cli(["--check", path]).stdout.splitlines()
    assert lines[0] == f"listen: 127.0.0.1 port {port}, unix socket {tmp_path}/.s.PGSQL.{port}"
    assert lines[1:4] == [
        f"database bench: 127.0.0.1 port {pg.port}, dbname bench, session pooling, pool_size 20",
        f"database testdb: 127.0.0.1 port {pg.port}, dbname testdb, session pooling, "
        "pool_size 20",
        f"database * (any other name a client asks for): unix socket in {tmp_path} port "
        f"{pg.port}, dbname the name asked for, session pooling, pool_size 20"]
    assert lines[4] == (
        "auth: auth_type = md5: clients answer an md5 challenge (SCRAM instead when the stored "
        f"secret is SCRAM); secrets from auth_file {tmp_path}/userlist.txt (2 users), then "
        "auth_query as scramuser in the database the client asks for")
    assert lines[6:8] == [
        "clients: TLS is off (client_tls_sslmode = disable): they must connect with "
        "sslmode=disable, allow or prefer",
        "servers: TLS when a server offers it, plaintext otherwise; certificates are not "
        "checked"]


def test_check_names_every_problem_of_a_file_in_one_run(pg, certs, tmp_path) -> None:
    # Independent problems of every kind: a bad value, a bad database line, an unknown key, a
    # syntax error, a cross-setting problem, a plugin's (auth_query) and a TLS file's.
    ini = common_ini(pg, databases={"broken": "host=127.0.0.1 port=99999"},
                     pool_mode="sesion", client_tls_sslmode="verify-full",
                     client_tls_key_file=certs.server_key,
                     client_tls_cert_file=certs.client_cert, auth_user="scramuser",
                     auth_query="SELECT usename, passwd FROM pg_shadow WHERE usename = 'x'",
                     not_a_setting="1") + "this is not a line\n"
    path, _ = write_config(tmp_path, ini)
    result = run_cli(["--check", path])
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR ")]
    assert result.returncode == 1
    assert errors == [
        f"ERROR {path}:{line_of(path, 'broken =')}: broken: port: port 99999 is out of range "
        "1-65535",
        f"ERROR {path}:{line_of(path, 'pool_mode =')}: pool_mode: invalid value 'sesion': "
        "expected one of session, transaction, statement",
        f"ERROR {path}:{line_of(path, 'not_a_setting =')}: not_a_setting: unknown parameter",
        f"ERROR {path}:{line_of(path, 'this is')}: syntax error: expected 'key = value'",
        f"ERROR {path}: client_tls_sslmode = verify-full needs client_tls_ca_file: in this "
        "mode every *client* must present a certificate signed by that CA (verify-full also "
        "requires the certificate's CN to be the user name)",
        f"ERROR {path}: auth_query must use $1 where the user name goes",
        f"ERROR {path}: client_tls_key_file: {certs.server_key} does not match "
        f"client_tls_cert_file {certs.client_cert}: use the key that certificate was issued "
        "for"], result.stderr
    assert result.stderr.splitlines()[-1] == f"{path}: 7 problem(s) found"


@pytest.mark.parametrize("auth_type", ["ldap", "pam"])
def test_an_auth_type_no_loaded_plugin_verifies_is_refused(pg, tmp_path, auth_type: str) -> None:
    """Accepted, it would fail every login; PgBouncer builds with LDAP and PAM, bouncer has
    them only through a plugin."""
    path, port = write_config(tmp_path, common_ini(pg, auth_type=auth_type))
    for args in (["--check", path], [path]):
        result = run_cli(args)
        assert result.returncode == 1, result.stderr
        assert (f"auth_type = {auth_type}: no loaded plugin verifies {auth_type} logins"
                in result.stderr), result.stderr
    assert not accepts_connections(socket.AF_INET, ("127.0.0.1", port))


def test_an_hba_ldap_line_no_loaded_plugin_verifies_is_refused(pg, tmp_path) -> None:
    hba = tmp_path / "hba.conf"
    hba.write_text("host all md5user 0.0.0.0/0 md5\n"
                   "host all all 0.0.0.0/0 ldap ldapserver=127.0.0.1 ldapbasedn=dc=x\n",
                   encoding="utf-8")
    path, _ = write_config(tmp_path, common_ini(pg, auth_type="hba", auth_hba_file=str(hba)))
    result = run_cli(["--check", path])
    assert result.returncode == 1, result.stderr
    assert f"{hba}:2: no loaded plugin verifies ldap logins" in result.stderr, result.stderr


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


def connect_lines(result: subprocess.CompletedProcess) -> List[str]:
    """The --connect lines: one per (database, login user), after the summary."""
    return [line for line in result.stdout.splitlines()
            if line.split(" ")[0] in ("OK", "FAIL", "WARN", "SKIP")]


def test_check_connect_gives_each_database_its_own_line(pg, tmp_path) -> None:
    down = free_port()
    path, _ = write_config(tmp_path, common_ini(pg, databases={
        "bench": None,
        "wrongpw": f"host=127.0.0.1 port={pg.port} dbname=testdb user=md5user password=wrong",
        "fromfile": f"host=127.0.0.1 port={pg.port} dbname=testdb user=scramuser",
        "nosecret": f"host=127.0.0.1 port={pg.port} dbname=testdb user=ghostuser",
        "down": f"host=127.0.0.1 port={down} dbname=testdb user=md5user password=md5pass",
        "*": f"port={pg.port}"}))
    result = run_cli(["--check", "--connect", path])
    lines = [re.sub(r"; \d+ ms$", "; N ms", line) for line in connect_lines(result)]
    no_tls = "no TLS: the server does not offer it (server_tls_sslmode = prefer allows that)"
    at = f"at 127.0.0.1 port {pg.port}"
    assert result.returncode == 1
    assert lines[0].startswith(f"OK database testdb (user md5user) {at}: reachable (PostgreSQL ")
    assert lines[0].endswith(f"{no_tls}; server asks md5 for user md5user, bouncer has a "
                             "plain password: logged in; N ms")
    version = re.search(r"\(PostgreSQL (.*?)\);", lines[0]).group(1)
    assert lines[1].endswith("server asks SCRAM for user scramuser, bouncer has a plain "
                             "password: logged in; N ms")
    assert lines[2:] == [
        f"FAIL database wrongpw (user md5user) {at}: reachable; {no_tls}; server asks md5 for "
        "user md5user and refused bouncer's plain password (password authentication failed "
        'for user "md5user"); N ms',
        f"OK database fromfile (user scramuser) {at}: reachable (PostgreSQL {version}); "
        f"{no_tls}; server asks SCRAM for user scramuser, bouncer has a plain password"
        ": logged in; N ms",
        f"FAIL database nosecret (user ghostuser) {at}: reachable; {no_tls}; server asks SCRAM "
        "for user ghostuser but no secret is known (give it password= on its [databases] "
        "line or an auth_file entry for the user); N ms",
        f"FAIL database down (user md5user) at 127.0.0.1 port {down}: unreachable: could not "
        "connect to server: Connection refused; N ms",
        "SKIP database *: not checked: it stands for any database name a client asks for"]
    assert result.stderr.splitlines()[-1] == f"{path}: 3 database login(s) would fail"


def test_check_connect_is_bounded_by_server_connect_timeout(pg, tmp_path) -> None:
    with socket.socket() as silent:  # accepts (the kernel does) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        path, _ = write_config(tmp_path, common_ini(pg, server_connect_timeout=1, databases={
            "testdb": f"host=127.0.0.1 port={port} user=md5user password=md5pass"}))
        result = run_cli(["--check", "--connect", path])
    assert result.returncode == 1
    # It stalls where bouncer waits for the answer to its SSLRequest (server_tls_sslmode=prefer).
    assert (f"FAIL database testdb (user md5user) at 127.0.0.1 port {port}: reachable; TLS "
            "failed: server connect timeout; 1") in result.stdout, result.stdout


def test_unreadable_auth_file_is_a_problem_for_check_and_start(pg, tmp_path) -> None:
    path, port = write_config(tmp_path, common_ini(pg, auth_file="@DIR@/missing.txt"))
    checked = run_cli(["--check", path])
    assert (checked.returncode, checked.stderr.splitlines()[0]) == (
        1, f"ERROR auth_file: {tmp_path}/missing.txt cannot be read (No such file or "
           "directory): fix the path or the permissions")
    started = run_cli([path])
    assert started.returncode == 1 and "Traceback" not in started.stderr
    assert f"{tmp_path}/missing.txt" in started.stderr and not listening(port)


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
def test_the_file_descriptor_limit_is_raised_to_the_hard_limit(pg, bouncer_factory) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"needs a finite hard RLIMIT_NOFILE above 256, this machine has {hard}")
    bouncer = bouncer_factory(common_ini(pg, max_client_conn=5000),
                              program=["prlimit", f"--nofile=256:{hard}", *BOUNCER_PROGRAM])
    bouncer.wait_for_log(rf"raised the file descriptor limit from 256 to {hard}")
    found = bouncer.wait_for_log(rf"kernel file descriptor limit: {hard} \(hard: {hard}\); "
                                 r"max_client_conn: 5000, max expected fd use: (\d+)")
    assert int(found.group(1)) > 5000
    with open(f"/proc/{bouncer.pid}/limits", encoding="ascii") as limits:
        assert re.search(rf"Max open files\s+{hard}\s+{hard}", limits.read())


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


@pytest.mark.parametrize("auth_type, user, told", [
    ("md5", "md5user", "password authentication failed"),
    ("md5", "nobody", "password authentication failed"),
    ("scram-sha-256", "nobody", "SASL authentication failed"),
    ("trust", "nobody", '"trust" authentication failed'),
])
def test_a_refused_login_is_logged_before_the_client_hears_of_it(
        pg, bouncer_factory, auth_type: str, user: str, told: str) -> None:
    # PgBouncer's order and words, which its own tests read the moment the client is refused;
    # what really went wrong (an unknown user) has a line of its own.
    bouncer = bouncer_factory(common_ini(pg, auth_type=auth_type))
    with pytest.raises(psycopg2.OperationalError, match=told):
        bouncer.connect(user=user, password="wrong")
    log = bouncer.log_text()
    client = rf"C-0x[0-9a-f]+: testdb/{user}@127\.0\.0\.1:\d+"
    closing = re.search(rf"{client} closing because: {told}( for user \S+)? \(age=0s\)$", log,
                        re.M)
    refused = re.search(rf"{client} pooler error: {told}", log)
    assert closing and refused and closing.start() < refused.start(), log
    assert (f"no such user: {user}" in log) == (user == "nobody")


def test_log_connections_off_silences_login_lines(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, log_connections=0, log_disconnections=0))
    conn = bouncer.connect()
    conn.close()
    bouncer.reload()  # a line logged after the client's visit: its own lines would be there
    bouncer.wait_for_log("got SIGHUP")
    assert "login attempt" not in bouncer.log_text()
    assert "closing because" not in bouncer.log_text()


@pytest.mark.parametrize("setting, logged", [(1, True), (0, False)])
def test_log_pooler_errors_gates_the_line_for_errors_sent_to_clients(
        pg, bouncer_factory, setting: int, logged: bool) -> None:
    bouncer = bouncer_factory(common_ini(pg, log_pooler_errors=setting))
    with pytest.raises(psycopg2.OperationalError, match="no such database: nosuchdb"):
        bouncer.connect(dbname="nosuchdb")
    bouncer.reload()  # a line logged after the refusal: the refusal's own would be there
    bouncer.wait_for_log("got SIGHUP")
    assert ("pooler error: no such database: nosuchdb" in bouncer.log_text()) is logged


def test_periodic_stats_line(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, stats_period=1))
    bouncer.wait_for_log(LINE_START + r"LOG stats: \d+ xacts/s, \d+ queries/s, .*"
                         r"in \d+ B/s, out \d+ B/s, xact \d+ us, query \d+ us, wait \d+ us$",
                         timeout=5)
