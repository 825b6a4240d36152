"""Replication clients through the pooler (PgBouncer 1.23+): ``replication=database`` (logical)
and ``replication=true`` (physical) get a server connection of their own, opened with their
own startup parameters, kept for their whole session whatever the pool_mode, and closed when
they leave."""
from __future__ import annotations

import os
import subprocess
from typing import Dict, List

import psycopg2
import pytest

from tests.support import pgwire
from bouncer.testing.ini import common_ini
from tests.support.observe import scalar
from bouncer.testing.pgcluster import STANDARD_PASSWORDS, find_pg_bindir

#: scramuser is a superuser; md5user has no REPLICATION attribute.
REPLICATOR = "scramuser"


@pytest.fixture(scope="module")
def replication_hba(pg) -> None:
    """Physical replication connections match only the ``replication`` keyword in pg_hba.conf."""
    pg.add_hba_line(f"host replication {REPLICATOR} 127.0.0.1/32 scram-sha-256")
    pg.reload()


@pytest.fixture
def start(pg, bouncer_factory, replication_hba):
    def start_bouncer(**settings):
        settings.setdefault("auth_type", "scram-sha-256")
        # pg_basebackup and pg_receivewal always ask for database "replication".
        physical = {"replication": f"host=127.0.0.1 port={pg.port} dbname=replication"}
        return bouncer_factory(common_ini(pg, databases=physical, **settings))
    return start_bouncer


def run_tool(bouncer, tool: str, args: List[str], user: str = REPLICATOR,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """A PostgreSQL client program against the pooler, with the user's standard password."""
    env = dict(os.environ, PGHOST=bouncer.host, PGPORT=str(bouncer.port), PGUSER=user,
               PGCONNECT_TIMEOUT="5")
    env.pop("PGPASSWORD", None)
    if STANDARD_PASSWORDS.get(user):
        env["PGPASSWORD"] = STANDARD_PASSWORDS[user]
    return subprocess.run([os.path.join(find_pg_bindir(), tool), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def psql_lines(bouncer, conninfo: str, *commands: str, user: str = REPLICATOR) -> List[str]:
    args = ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo]
    for command in commands:
        args += ["-c", command]
    result = run_tool(bouncer, "psql", args, user=user)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def pool_servers(bouncer, database: str = "testdb", user: str = REPLICATOR) -> Dict[str, int]:
    rows = bouncer.admin("SHOW SERVERS")
    counts: Dict[str, int] = {}
    for row in rows:
        if row[1] == user and row[2] == database:
            counts[row[4]] = counts.get(row[4], 0) + 1
    return counts


def system_identifier(pg) -> str:
    return pg.psql("SELECT system_identifier FROM pg_control_system()")


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_logical_replication_client_runs_commands_with_its_own_startup_options(
        pg, start, pool_mode: str) -> None:
    bouncer = start(pool_mode=pool_mode)
    conninfo = ("dbname=testdb replication=database application_name=abc "
                "options='-c enable_seqscan=off'")
    identify, seqscan, name = psql_lines(bouncer, conninfo, "IDENTIFY_SYSTEM",
                                         "SHOW enable_seqscan", "SHOW application_name")
    system_id, _timeline, _lsn, dbname = identify.split("|")
    assert (system_id, dbname) == (system_identifier(pg), "testdb")
    assert (seqscan, name) == ("off", "abc")
    # A normal client of the same pool is served as ever.
    assert scalar(bouncer.connect(user=REPLICATOR), "SELECT current_user") == REPLICATOR


def test_physical_replication_client_takes_a_base_backup(start, tmp_path) -> None:
    bouncer = start(pool_mode="transaction")
    identify, = psql_lines(bouncer, "dbname=testdb replication=true", "IDENTIFY_SYSTEM")
    assert identify.split("|")[3] == ""  # physical: not connected to a database
    target = tmp_path / "backup"
    # -X stream opens a second replication connection beside the first one.
    result = run_tool(bouncer, "pg_basebackup", ["-D", str(target), "-X", "stream",
                                                 "--checkpoint=fast", "--no-sync"],
                      timeout=120)
    assert result.returncode == 0, result.stderr
    assert (target / "PG_VERSION").exists() and (target / "global" / "pg_control").exists()


def test_replication_server_is_its_clients_alone_and_closes_with_it(start) -> None:
    bouncer = start(pool_mode="transaction", auth_type="md5")  # pgwire.login speaks md5
    sock, _ = pgwire.open_session(bouncer.host, bouncer.port, REPLICATOR,
                                  STANDARD_PASSWORDS[REPLICATOR],
                                  params={"replication": "database"})
    with sock:
        assert pgwire.run_query(sock, "IDENTIFY_SYSTEM")[-1] == (b"Z", b"I")
        # Idle between commands, yet still linked: transaction pooling does not apply.
        assert pool_servers(bouncer) == {"active": 1}
        clients = {row[4]: row[3] for row in bouncer.admin("SHOW CLIENTS") if row[2] == "testdb"}
        assert clients == {"active": "logical"}
        normal = bouncer.connect(user=REPLICATOR)
        normal.autocommit = True
        assert scalar(normal, "SELECT pg_is_in_recovery()") is False
        assert pool_servers(bouncer) == {"active": 1, "idle": 1}
        normal.close()
        since = len(bouncer.log_text())
        sock.sendall(pgwire.typed(b"X"))
    bouncer.wait_for_log(r"S-0x\w+: testdb/scramuser@\S+ closing because: replication client "
                         r"disconnected", since=since)
    assert pool_servers(bouncer) == {"idle": 1}


def test_a_role_without_replication_rights_is_refused_alone(start) -> None:
    bouncer = start(auth_type="md5")
    result = run_tool(bouncer, "psql", ["-X", "-d", "dbname=testdb replication=true",
                                        "-c", "IDENTIFY_SYSTEM"], user="md5user")
    assert result.returncode == 2 and "login failed" in result.stderr, result.stderr
    log = bouncer.wait_for_log(r"md5user@\S+ server login failed: FATAL (.*)")
    assert "replication" in log.group(1)
    bouncer.wait_for_log(r"S-0x\w+: testdb/md5user@\S+ closing because: login failed \(age=0s\)")
    bouncer.wait_for_log(r"C-0x\w+: testdb/md5user@\S+ closing because: login failed \(age=0s\)")
    # Normal logins of the same pool are not refused after it (no cached login failure).
    assert scalar(bouncer.connect(), "SELECT current_user") == "md5user"


def test_a_replication_client_evicts_an_idle_server_from_a_full_pool(start) -> None:
    bouncer = start(pool_mode="transaction", default_pool_size=1)
    normal = bouncer.connect(user=REPLICATOR)
    normal.autocommit = True
    scalar(normal, "SELECT 1")
    assert pool_servers(bouncer) == {"idle": 1}
    identify, = psql_lines(bouncer, "dbname=testdb replication=database", "IDENTIFY_SYSTEM")
    assert identify.endswith("|testdb")
    bouncer.wait_for_log(r"S-0x\w+: testdb/scramuser@\S+ closing because: evicted")
    assert scalar(normal, "SELECT 2") == 2  # and the normal client gets a new one after it


def test_an_invalid_replication_value_is_refused(start) -> None:
    bouncer = start()
    with pytest.raises(psycopg2.OperationalError, match='invalid value for parameter "replication"'):
        bouncer.connect(user=REPLICATOR, replication="sometimes")


def test_a_replication_client_waits_for_room_at_most_query_wait_timeout(start) -> None:
    bouncer = start(pool_mode="transaction", default_pool_size=1, query_wait_timeout=1)
    busy = bouncer.connect(user=REPLICATOR)
    scalar(busy, "SELECT 1")  # psycopg2 leaves the transaction open: the one server is taken
    with pytest.raises(psycopg2.OperationalError, match="query_wait_timeout"):
        bouncer.connect(user=REPLICATOR, replication="database")
    busy.close()
