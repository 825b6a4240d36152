"""The test harness itself: the cluster's auth matrix, the pooler process wrapper and the PKI.

Every bouncer test trusts these: if md5user did not really use md5 against PostgreSQL, an auth
test passing through bouncer would prove nothing.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
from typing import Any, Iterator, Optional

import psycopg2
import pytest

from bouncer.testing.process import (BouncerProcess, BouncerStartError, find_pgbouncer,
                                       pgbouncer_user, userlist_text)
from tests.support.certgen import CertPaths
from bouncer.testing.ini import common_ini
from bouncer.testing.pgcluster import PgCluster, make_shared_tempdir
from bouncer.testing.ports import accepts_connections

FAKE_POOLER = (sys.executable, "-m", "tests.support.fakepooler")
FAKE_INI = "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = @PORT@\nunix_socket_dir = @DIR@\n"


def query_one(conn: Any, sql: str) -> Optional[tuple]:
    """First row of ``sql``; closes ``conn`` (psycopg2's ``with`` only ends the transaction)."""
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()
    finally:
        conn.close()


# -- the PostgreSQL auth matrix --------------------------------------------------------------
@pytest.mark.parametrize("user, stored_prefix", [("md5user", "md5"),
                                                  ("scramuser", "SCRAM-SHA-256$")])
def test_password_roles_log_in_over_tcp_with_their_hash_type(pg: PgCluster, user: str,
                                                             stored_prefix: str) -> None:
    row = query_one(psycopg2.connect(pg.dsn(user=user, db="bench")),
                    "SELECT current_user, count(*) FROM pgbench_branches")
    assert row == (user, 1)
    stored = pg.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'")
    assert stored.startswith(stored_prefix)


def test_trustuser_logs_in_over_tcp_without_password(pg: PgCluster) -> None:
    assert query_one(psycopg2.connect(pg.dsn(user="trustuser")), "SELECT current_user") == (
        "trustuser",)


@pytest.mark.parametrize("user", ["md5user", "scramuser"])
def test_wrong_password_is_refused(pg: PgCluster, user: str) -> None:
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(pg.dsn(user=user, password="wrong"))


def test_postgres_superuser_is_local_only(pg: PgCluster) -> None:
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(pg.dsn(user="postgres", db="postgres"))
    assert pg.psql("SELECT current_user") == "postgres"


def test_readers_can_read_bench_but_not_write(pg: PgCluster) -> None:
    conn = psycopg2.connect(pg.dsn(user="md5user", db="bench"))
    assert query_one(conn, "SELECT count(*) FROM pgbench_accounts") == (100000,)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        query_one(psycopg2.connect(pg.dsn(user="md5user", db="bench")),
                  "DELETE FROM pgbench_history RETURNING 1")


def test_hba_line_and_reload_take_effect(pg: PgCluster) -> None:
    rule = "host all trustuser 127.0.0.1/32 reject"
    pg.add_hba_line(rule)
    pg.reload()
    try:
        with pytest.raises(psycopg2.OperationalError, match="rejects connection"):
            psycopg2.connect(pg.dsn(user="trustuser"))
    finally:
        _remove_hba_line(pg, rule)
    psycopg2.connect(pg.dsn(user="trustuser")).close()


def _remove_hba_line(pg: PgCluster, line: str) -> None:
    path = os.path.join(pg.datadir, "pg_hba.conf")
    with open(path, encoding="utf-8") as hba:
        kept = [old for old in hba.read().splitlines() if old != line]
    with open(path, "w", encoding="utf-8") as hba:
        hba.write("\n".join(kept) + "\n")
    pg.reload()


# -- the pooler process wrapper (with a stand-in pooler) --------------------------------------
def test_process_fills_placeholders_and_waits_for_listener(tmp_path) -> None:
    with BouncerProcess(tmp_path, FAKE_INI, program=FAKE_POOLER) as proc:
        assert accepts_connections(socket.AF_INET, (proc.host, proc.port))
        with open(proc.ini_path, encoding="utf-8") as ini:
            assert f"listen_port = {proc.port}\nunix_socket_dir = {tmp_path}\n" in ini.read()
        assert proc.socket_dir == str(tmp_path)
    assert not proc.alive and proc.stop() == 0


def test_reload_sends_sighup_and_wait_for_log_skips_older_output(tmp_path) -> None:
    with BouncerProcess(tmp_path, FAKE_INI, program=FAKE_POOLER) as proc:
        proc.reload()
        first = proc.wait_for_log("got SIGHUP")
        proc.reload()
        second = proc.wait_for_log("got SIGHUP", since=first.end())
        assert second.start() > first.start()
        with pytest.raises(AssertionError, match="no 'never printed'"):
            proc.wait_for_log("never printed", timeout=0.2)


def test_start_failure_raises_with_the_output(tmp_path) -> None:
    with pytest.raises(BouncerStartError) as failed:
        BouncerProcess(tmp_path, FAKE_INI + "fake_fail = bad setting\n", program=FAKE_POOLER)
    assert failed.value.returncode == 1
    assert "FATAL bad setting" in failed.value.log


def test_stop_kills_a_process_that_ignores_sigquit(tmp_path) -> None:
    proc = BouncerProcess(tmp_path, FAKE_INI + "fake_ignore_sigquit = 1\n", program=FAKE_POOLER)
    assert proc.stop(timeout=0.5) == -signal.SIGKILL


def test_userlist_doubles_quotes_and_defaults_to_standard_users(tmp_path) -> None:
    assert userlist_text({'we"ird': 'pa"ss'}) == '"we""ird" "pa""ss"\n'
    with BouncerProcess(tmp_path, FAKE_INI, program=FAKE_POOLER) as proc:
        with open(os.path.join(proc.workdir, "userlist.txt"), encoding="utf-8") as userlist:
            assert userlist.read() == '"md5user" "md5pass"\n"scramuser" "scrampass"\n'


def test_bouncer_factory_gives_each_process_its_own_workdir(bouncer_factory) -> None:
    first = bouncer_factory(FAKE_INI, program=FAKE_POOLER)
    second = bouncer_factory(FAKE_INI, {}, program=FAKE_POOLER)
    assert first.workdir != second.workdir and first.port != second.port
    assert os.path.getsize(os.path.join(second.workdir, "userlist.txt")) == 0


# -- common_ini against the real PgBouncer (when installed) -----------------------------------
@pytest.fixture
def real_pgbouncer(pg: PgCluster) -> Iterator[BouncerProcess]:
    program = find_pgbouncer()
    if program is None:
        pytest.skip("pgbouncer is not installed")
    basedir = make_shared_tempdir("bouncer-pgbouncer-")  # readable by postgres, unlike tmp_path
    try:
        with BouncerProcess(os.path.join(basedir, "work"), common_ini(pg, pool_mode="transaction"),
                            program=[program], run_as=pgbouncer_user()) as proc:
            yield proc
    finally:
        shutil.rmtree(basedir, ignore_errors=True)


def test_common_ini_runs_real_pgbouncer_for_all_clients(real_pgbouncer: BouncerProcess) -> None:
    for user in ("md5user", "scramuser"):
        assert query_one(real_pgbouncer.connect(user=user), "SELECT current_user") == (user,)
    databases = {row[0] for row in real_pgbouncer.admin("SHOW DATABASES")}
    assert {"testdb", "bench", "pgbouncer"} <= databases
    result = real_pgbouncer.psql(["-At", "-c", "SELECT count(*) FROM pgbench_branches"],
                                 dbname="bench")
    assert (result.returncode, result.stdout) == (0, "1\n")


# -- the PKI, checked by PostgreSQL itself -----------------------------------------------------
@pytest.fixture(scope="module")
def tls_pg(certs: CertPaths) -> Iterator[PgCluster]:
    """A separate cluster: TLS and cert-only hba lines must not leak into the shared one."""
    basedir = make_shared_tempdir("bouncer-tls-pg-")
    cluster = PgCluster(os.path.join(basedir, "pg"))
    try:
        cluster.start()
        cluster.enable_ssl(certs.server_cert, certs.server_key, ca=certs.ca_cert)
        cluster.add_hba_line("hostssl all md5user 127.0.0.1/32 cert")
        cluster.reload()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(basedir, ignore_errors=True)


def test_server_cert_verifies_for_127_0_0_1(tls_pg: PgCluster, certs: CertPaths) -> None:
    dsn = tls_pg.dsn(user="scramuser") + f" sslmode=verify-full sslrootcert={certs.ca_cert}"
    row = query_one(psycopg2.connect(dsn),
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert row == (True,)


def test_unrelated_ca_does_not_verify_server_cert(tls_pg: PgCluster, certs: CertPaths) -> None:
    dsn = tls_pg.dsn(user="scramuser") + f" sslmode=verify-ca sslrootcert={certs.other_ca_cert}"
    with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
        psycopg2.connect(dsn)


@pytest.mark.parametrize("client, accepted", [("client", True), ("someoneelse", False),
                                              ("expired_client", False),
                                              ("untrusted_client", False)])
def test_client_certs_under_cert_auth(tls_pg: PgCluster, certs: CertPaths, client: str,
                                      accepted: bool) -> None:
    dsn = (tls_pg.dsn(user="md5user", password="") + f" sslmode=require"
           f" sslcert={getattr(certs, client + '_cert')} sslkey={getattr(certs, client + '_key')}")
    if accepted:
        psycopg2.connect(dsn).close()
    else:
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(dsn)
