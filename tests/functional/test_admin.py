"""The admin console against a real PostgreSQL, through psycopg2, psql and raw protocol.

One bouncer serves the whole module (starting one costs ~0.3 s); every test leaves it as it
found it (resumed, enabled, default settings).  Tests that end the process start their own.
"""
from __future__ import annotations

import os
import socket
import subprocess
import threading
from typing import Any, Iterator, List, Optional, Tuple

import psycopg2
import pytest

from bouncer.proto import backend, frontend
from bouncer.proto.constants import Backend
from bouncer.proto.framing import MessageReader
from tests.support import pgwire
from bouncer.testing.process import BOUNCER_PROGRAM, REPO_ROOT, BouncerProcess
from bouncer.testing.ini import common_ini
from tests.support.observe import scalar
from bouncer.testing.pgcluster import PgCluster
from bouncer.testing.ports import wait_until

# Oids by the type letters of PgBouncer's admin.c.
TEXT, INT4, INT8, NUMERIC, BYTEA = 25, 23, 20, 1700, 17

SOCKET_COLUMNS = ["type", "user", "database", "replication", "state", "addr", "port",
                  "local_addr", "local_port", "connect_time", "request_time", "wait", "wait_us",
                  "close_needed", "ptr", "link", "remote_pid", "tls", "application_name",
                  "prepared_statements", "id"]
STATS_FIELDS = ["server_assignment_count", "xact_count", "query_count", "bytes_received",
                "bytes_sent", "xact_time", "query_time", "wait_time"]

#: PgBouncer 1.25's columns (plus master's client_login_count, and bouncer's pool_size at
#: the end of SHOW POOLS), written out from the reference rather than imported from the code.
EXPECTED_COLUMNS = {
    "SHOW POOLS": ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
                   "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
                   "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us",
                   "pool_mode", "load_balance_hosts", "pool_size"],
    "SHOW CLIENTS": SOCKET_COLUMNS,
    "SHOW SERVERS": SOCKET_COLUMNS,
    "SHOW SOCKETS": SOCKET_COLUMNS + ["recv_pos", "pkt_pos", "pkt_remain", "send_pos",
                                      "send_remain", "pkt_avail", "send_avail"],
    "SHOW STATS": ["database", "total_server_assignment_count", "total_xact_count",
                   "total_query_count", "total_received", "total_sent", "total_xact_time",
                   "total_query_time", "total_wait_time", "total_client_parse_count",
                   "total_server_parse_count", "total_bind_count", "total_client_login_count",
                   "avg_server_assignment_count", "avg_xact_count", "avg_query_count",
                   "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time",
                   "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count",
                   "avg_client_login_count"],
    "SHOW STATS_TOTALS": ["database", *STATS_FIELDS, "client_parse_count", "server_parse_count",
                          "bind_count", "client_login_count"],
    "SHOW STATS_AVERAGES": ["database", *STATS_FIELDS, "avg_client_parse_count",
                            "avg_server_parse_count", "avg_bind_count", "client_login_count"],
    "SHOW TOTALS": ["name", "value"],
    "SHOW DATABASES": ["name", "host", "port", "database", "force_user", "pool_size",
                       "min_pool_size", "reserve_pool_size", "server_lifetime", "pool_mode",
                       "load_balance_hosts", "max_connections", "current_connections",
                       "max_client_connections", "current_client_connections", "paused",
                       "disabled"],
    "SHOW USERS": ["name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
                   "current_connections", "max_user_client_connections",
                   "current_client_connections"],
    "SHOW CONFIG": ["key", "value", "default", "changeable"],
    "SHOW PEERS": ["peer_id", "host", "port", "pool_size"],
    "SHOW PEER_POOLS": ["peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req",
                        "sv_active_cancel", "sv_login"],
    "SHOW LISTS": ["list", "items"],
    "SHOW FDS": ["fd", "task", "user", "database", "addr", "port", "cancel", "link",
                 "client_encoding", "std_strings", "datestyle", "timezone", "password",
                 "scram_client_key", "scram_server_key",
                 "bouncer_state"],  # PgBouncer's columns, then bouncer's own (-R's client state)
    "SHOW MEM": ["name", "size", "used", "free", "memtotal"],
    "SHOW STATE": ["key", "value"],
    "SHOW DNS_HOSTS": ["hostname", "ttl", "addrs"],
    "SHOW DNS_ZONES": ["zonename", "serial", "count"],
    "SHOW VERSION": ["version"],
}
EXPECTED_COLUMNS["SHOW ACTIVE_SOCKETS"] = EXPECTED_COLUMNS["SHOW SOCKETS"]

ADMIN, STATS_USER = "scramuser", "md5user"

#: A plugin contributing console commands, loaded through the ``plugins`` setting.
PLUGIN = """
from bouncer.admin import grammar
from bouncer.admin.commands import Result, columns, show, stats_allowed
from bouncer.plugin import hookimpl


@stats_allowed
def show_greeting(console, args):
    grammar.no_arguments(args)
    return show(columns("s", "greeting"), [["hello " + console.client.user]])


def set_greeting(console, args):
    return Result("SET GREETING " + args)


def show_broken(console, args):
    raise RuntimeError("plugin bug")


def show_pools(console, args):
    return show(columns("s", "hijacked"), [])


@hookimpl
def bouncer_admin_commands(app):
    return {"SHOW GREETING": show_greeting, "SET GREETING": set_greeting,
            "SHOW BROKEN": show_broken, "SHOW POOLS": show_pools}
"""


@pytest.fixture(scope="module")
def bouncer(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BouncerProcess]:
    sessions = {"sessiondb": f"host=127.0.0.1 port={pg.port} dbname=testdb pool_mode=session"}
    ini = common_ini(pg, sessions, pool_mode="transaction", admin_users=ADMIN,
                     stats_users=STATS_USER, plugins="admin_test_plugin", stats_period=1)
    with BouncerProcess(tmp_path_factory.mktemp("admin"), ini,
                        extra_files={"admin_test_plugin.py": PLUGIN}) as proc:
        yield proc


def console(proc: BouncerProcess, user: str = ADMIN) -> Any:
    conn = proc.connect(dbname="pgbouncer", user=user)
    conn.autocommit = True
    return conn


def run(conn: Any, sql: str) -> Tuple[List[str], List[tuple]]:
    """(column names, rows) of one console command."""
    with conn.cursor() as cur:
        cur.execute(sql)
        if cur.description is None:
            return [], []
        return [column.name for column in cur.description], cur.fetchall()


def as_dicts(proc: BouncerProcess, sql: str) -> List[dict]:
    conn = console(proc)
    try:
        names, rows = run(conn, sql)
    finally:
        conn.close()
    return [dict(zip(names, row)) for row in rows]


def row_for(proc: BouncerProcess, sql: str, **match: Any) -> dict:
    found = [row for row in as_dicts(proc, sql)
             if all(row[key] == value for key, value in match.items())]
    assert len(found) == 1, f"{sql}: {match} matches {found}"
    return found[0]


def xacts(proc: BouncerProcess, count: int, **params: Any) -> None:
    conn = proc.connect(**params)
    try:
        for _ in range(count):
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.commit()
    finally:
        conn.close()


def backend_pid(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    conn.commit()
    return pid


# -- SHOW: columns, types, content -----------------------------------------------------------
@pytest.mark.parametrize("command", sorted(EXPECTED_COLUMNS))
def test_show_has_pgbouncers_columns_in_order(bouncer: BouncerProcess, command: str) -> None:
    conn = console(bouncer)
    try:
        names, _ = run(conn, command)
    finally:
        conn.close()
    assert names == EXPECTED_COLUMNS[command]


@pytest.mark.parametrize("command, types", [
    ("SHOW POOLS", [TEXT, TEXT] + [INT4] * 13 + [TEXT, TEXT, INT4]),
    ("SHOW STATS_TOTALS", [TEXT] + [NUMERIC] * 12),
    ("SHOW DNS_HOSTS", [TEXT, INT8, TEXT]),
    ("SHOW FDS", [INT4, TEXT, TEXT, TEXT, TEXT, INT4, INT8, INT4] + [TEXT] * 5 + [BYTEA] * 2
     + [TEXT]),
    ("SHOW CLIENTS", [TEXT] * 6 + [INT4, TEXT, INT4, TEXT, TEXT, INT4, INT4, INT4, TEXT, TEXT,
                                   INT4, TEXT, TEXT, INT4, INT4]),
])
def test_show_column_types_are_pgbouncers(bouncer: BouncerProcess, command: str,
                                          types: List[int]) -> None:
    conn = console(bouncer)
    try:
        with conn.cursor() as cur:
            cur.execute(command)
            assert [column.type_code for column in cur.description] == types
    finally:
        conn.close()


def test_show_version_equals_command_line_version(bouncer: BouncerProcess) -> None:
    printed = subprocess.run([*BOUNCER_PROGRAM, "--version"], capture_output=True, text=True,
                             check=True, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert as_dicts(bouncer, "SHOW VERSION") == [{"version": printed.stdout.splitlines()[0]}]


def test_select_is_an_alias_of_show(bouncer: BouncerProcess) -> None:
    assert as_dicts(bouncer, "select version;") == as_dicts(bouncer, "SHOW VERSION")


def test_xact_count_moves_by_the_number_of_transactions(bouncer: BouncerProcess) -> None:
    before = row_for(bouncer, "SHOW STATS_TOTALS", database="testdb")
    xacts(bouncer, 7)
    after = row_for(bouncer, "SHOW STATS_TOTALS", database="testdb")
    assert after["xact_count"] - before["xact_count"] == 7
    assert after["query_count"] - before["query_count"] >= 7
    assert after["bytes_received"] > before["bytes_received"]
    totals = {row["name"]: row["value"] for row in as_dicts(bouncer, "SHOW TOTALS")}
    assert totals["total_xact_count"] >= after["xact_count"]


def test_a_session_client_is_one_server_assignment(bouncer: BouncerProcess) -> None:
    """The first client of a pool also logs a server in to learn its parameters: that is not
    an assignment of its own (PgBouncer's session client keeps the server it got at login)."""
    for _ in range(3):
        xacts(bouncer, 2, dbname="sessiondb")
    stats = row_for(bouncer, "SHOW STATS_TOTALS", database="sessiondb")
    assert (stats["server_assignment_count"], stats["xact_count"]) == (3, 6)


def test_console_logins_and_commands_are_counted_as_its_own_database(
        bouncer: BouncerProcess) -> None:
    """As in PgBouncer, the pgbouncer row counts console logins, and each command as one
    transaction and one query (the SHOW that reads them included)."""
    before = row_for(bouncer, "SHOW STATS_TOTALS", database="pgbouncer")
    conn = console(bouncer)
    try:
        run(conn, "SHOW VERSION")
        run(conn, "SHOW LISTS")
    finally:
        conn.close()
    after = row_for(bouncer, "SHOW STATS_TOTALS", database="pgbouncer")
    assert [after[key] - before[key] for key in ("client_login_count", "xact_count",
                                                  "query_count")] == [2, 3, 3]


def test_averages_over_the_stats_period_reach_the_console(bouncer: BouncerProcess) -> None:
    def averaged() -> bool:
        xacts(bouncer, 3)
        average = row_for(bouncer, "SHOW STATS_AVERAGES", database="testdb")
        totals = {row["name"]: row["value"] for row in as_dicts(bouncer, "SHOW TOTALS")}
        return average["xact_count"] > 0 and average["xact_time"] > 0 and (
            totals["avg_xact_count"] > 0 and totals["avg_xact_time"] > 0)

    assert wait_until(averaged, 5, interval=0.2)


def test_show_pools_counts_clients_and_servers(bouncer: BouncerProcess) -> None:
    client = bouncer.connect(user="md5user", dbname="bench")
    try:
        backend_pid(client)
        pool = row_for(bouncer, "SHOW POOLS", database="bench", user="md5user")
        assert (pool["cl_active"], pool["cl_waiting"]) == (1, 0)
        assert pool["sv_idle"] + pool["sv_active"] == 1
        assert (pool["pool_mode"], pool["pool_size"]) == ("transaction", 20)
        admin_pool = row_for(bouncer, "SHOW POOLS", database="pgbouncer")
        assert admin_pool["cl_active"] >= 1
    finally:
        client.close()


def test_show_clients_and_servers_link_to_postgres(bouncer: BouncerProcess) -> None:
    client = bouncer.connect(application_name="clients-test")
    try:
        pid = backend_pid(client)
        row = row_for(bouncer, "SHOW CLIENTS", application_name="clients-test")
        assert (row["type"], row["user"], row["database"], row["state"]) == (
            "C", "md5user", "testdb", "idle")
        servers = as_dicts(bouncer, "SHOW SERVERS")
        assert pid in {server["remote_pid"] for server in servers}
        assert all(server["type"] == "S" for server in servers)
    finally:
        client.close()


def test_show_config_lists_every_setting_with_its_default(bouncer: BouncerProcess) -> None:
    config = {row["key"]: row for row in as_dicts(bouncer, "SHOW CONFIG")}
    assert config["pool_mode"]["value"] == "transaction"
    assert config["pool_mode"]["default"] == "session"
    assert config["listen_port"]["changeable"] == "no"
    assert config["default_pool_size"]["changeable"] == "yes"
    assert list(config) == sorted(config)
    # bouncer's own rows: the effective TLS policy, in words
    assert config["client_tls_policy"]["value"] == "disable: TLS refused: clients connect in " \
        "plaintext"
    assert config["server_tls_policy"]["value"].startswith("prefer: TLS when the server offers")


def test_show_state_and_lists(bouncer: BouncerProcess) -> None:
    assert {row["key"]: row["value"] for row in as_dicts(bouncer, "SHOW STATE")} == {
        "active": "yes", "paused": "no", "suspended": "no"}
    lists = {row["list"]: row["items"] for row in as_dicts(bouncer, "SHOW LISTS")}
    assert lists["databases"] == 4  # testdb, bench, sessiondb and the console's own
    assert lists["used_clients"] >= 1


def test_show_help_is_a_notice(bouncer: BouncerProcess) -> None:
    result = bouncer.psql("SHOW HELP", user=ADMIN, dbname="pgbouncer")
    assert result.returncode == 0
    assert "NOTICE:  Console usage" in result.stderr
    assert "KILL_CLIENT <client_id>" in result.stderr


def test_fake_parameters_for_drivers(bouncer: BouncerProcess) -> None:
    conn = console(bouncer, STATS_USER)
    try:
        assert run(conn, "SHOW client_encoding") == (["client_encoding"], [("UTF-8",)])
        run(conn, "SET client_encoding = 'UTF8'")
        assert conn.notices[-1].startswith("NOTICE:  SET ignored")
    finally:
        conn.close()


# -- access ----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["PAUSE", "RELOAD", "SHOW FDS", "SET default_pool_size = 5",
                                     "KILL_CLIENT 1", "SHUTDOWN"])
def test_stats_users_are_refused_commands(bouncer: BouncerProcess, command: str) -> None:
    conn = console(bouncer, STATS_USER)
    try:
        with pytest.raises(psycopg2.Error, match="admin access needed") as refused:
            run(conn, command)
        assert refused.value.pgcode == "42501"
        names, _ = run(conn, "SHOW POOLS")  # still usable, and SHOW is allowed
        assert names[0] == "database"
    finally:
        conn.close()
    assert row_for(bouncer, "SHOW STATE", key="active")["value"] == "yes"


# -- errors keep the console usable ----------------------------------------------------------
@pytest.mark.parametrize("command", ["SHOW NONSENSE", "SHOW POOLS; SHOW STATS", "SHOW POOLS x",
                                     "PAUSE a b", "bogus", "SHOW \"unterminated",
                                     "SET = 5", "SHUTDOWN NOW"])
def test_malformed_command_is_an_error_and_the_console_survives(bouncer: BouncerProcess,
                                                                command: str) -> None:
    conn = console(bouncer)
    try:
        with pytest.raises(psycopg2.Error, match="invalid command") as invalid:
            run(conn, command)
        assert invalid.value.pgcode == "08P01"  # PgBouncer's code for every console error
        assert run(conn, "SHOW VERSION")[0] == ["version"]
    finally:
        conn.close()


def test_clients_and_servers_share_one_id_sequence(bouncer: BouncerProcess) -> None:
    # PgBouncer numbers every socket from one counter: a client and a server never share an
    # id, so an id names one connection in logs, SHOW output and KILL_CLIENT.
    held = bouncer.connect()
    conn = console(bouncer)
    try:
        scalar(held, "SELECT 1")  # its transaction stays open: its server stays linked
        ids = []
        for command in ("SHOW CLIENTS", "SHOW SERVERS"):
            columns, rows = run(conn, command)
            ids += [row[columns.index("id")] for row in rows]
        assert len(ids) >= 3 and len(set(ids)) == len(ids), ids
    finally:
        conn.close()
        held.close()


def test_command_errors_use_pgbouncers_wording(bouncer: BouncerProcess) -> None:
    conn = console(bouncer)
    try:
        for command, message in [("PAUSE pgbouncer", "cannot pause admin db: pgbouncer"),
                                 ("DISABLE", "a database is required"),
                                 ("RESUME", "pooler is not paused/suspended"),
                                 ("KILL_CLIENT abc", "invalid client pointer supplied"),
                                 ("KILL_CLIENT 100000", "client not found"),
                                 ("KILL nosuchdb", "no such database: nosuchdb"),
                                 ("PAUSE nosuchdb", "no such database: nosuchdb")]:
            with pytest.raises(psycopg2.Error, match=message) as refused:
                run(conn, command)
            assert refused.value.pgcode == "08P01", command  # PgBouncer's, for every one
    finally:
        conn.close()


# -- plugin commands -------------------------------------------------------------------------
def test_plugin_commands_join_the_table_without_replacing_built_ins(
        bouncer: BouncerProcess) -> None:
    conn = console(bouncer, STATS_USER)
    try:
        assert run(conn, "show greeting;") == (["greeting"], [("hello md5user",)])
        assert run(conn, "SHOW POOLS")[0][0] == "database"
        with pytest.raises(psycopg2.Error, match="admin access needed"):
            run(conn, "SET GREETING x")  # not marked stats_allowed: admins only
    finally:
        conn.close()


def test_longest_command_wins(bouncer: BouncerProcess) -> None:
    conn = console(bouncer)
    try:
        with conn.cursor() as cur:
            cur.execute("set greeting \"to all\"")
            assert cur.statusmessage == 'SET GREETING "to all"'
            cur.execute("SET stats_period = 1")
            assert cur.statusmessage == "SET"  # PgBouncer's tag for every SET
    finally:
        conn.close()


def test_a_failing_plugin_command_is_an_error_not_a_disconnect(bouncer: BouncerProcess) -> None:
    conn = console(bouncer)
    try:
        with pytest.raises(psycopg2.Error, match="admin command failed: plugin bug"):
            run(conn, "SHOW BROKEN")
        assert run(conn, "SHOW VERSION")[0] == ["version"]
    finally:
        conn.close()
    assert "SHOW GREETING" in bouncer.psql("SHOW HELP", user=ADMIN, dbname="pgbouncer").stderr


# -- SET and RELOAD --------------------------------------------------------------------------
def test_set_changes_a_reloadable_setting_and_reload_restores_it(bouncer: BouncerProcess) -> None:
    conn = console(bouncer)
    try:
        with conn.cursor() as cur:
            cur.execute("SET default_pool_size = 7")
            assert cur.statusmessage == "SET"
        assert row_for(bouncer, "SHOW CONFIG", key="default_pool_size")["value"] == "7"
        assert row_for(bouncer, "SHOW DATABASES", name="testdb")["pool_size"] == 7
        run(conn, "SET server_reset_query TO 'DISCARD ALL'")
        run(conn, "RELOAD")
        assert row_for(bouncer, "SHOW CONFIG", key="default_pool_size")["value"] == "20"
    finally:
        conn.close()


@pytest.mark.parametrize("command, reason", [
    ("SET listen_port = 1", "listen_port cannot be changed while running"),
    ("SET default_pool_size = lots", "invalid integer"),
    ("SET no_such_setting = 1", "unknown setting"),
    ("SET pool_mode = 'sometimes'", "expected one of"),
])
def test_set_refusals_say_why(bouncer: BouncerProcess, command: str, reason: str) -> None:
    conn = console(bouncer)
    try:
        with pytest.raises(psycopg2.Error, match="SET failed") as refused:
            run(conn, command)
        assert reason in refused.value.pgerror
    finally:
        conn.close()


# -- effects seen from clients ---------------------------------------------------------------
def test_pause_holds_queries_until_resume(bouncer: BouncerProcess) -> None:
    client = bouncer.connect()
    conn = console(bouncer)
    results: List[Any] = []
    try:
        backend_pid(client)
        run(conn, "PAUSE testdb")
        assert row_for(bouncer, "SHOW DATABASES", name="testdb")["paused"] == 1
        worker = threading.Thread(target=lambda: results.append(backend_pid(client)))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and not results
        # Held by PAUSE, it counts as waiting, as in PgBouncer.
        pool = row_for(bouncer, "SHOW POOLS", database="testdb", user="md5user")
        assert (pool["cl_waiting"], pool["maxwait_us"] > 0 or pool["maxwait"] > 0) == (1, True)
        assert "waiting" in {row["state"] for row in as_dicts(bouncer, "SHOW CLIENTS")
                             if row["database"] == "testdb"}
        run(conn, "RESUME testdb")
        worker.join(5)
        assert len(results) == 1
    finally:
        conn.close()
        client.close()


def test_kill_drops_clients_and_leaves_the_database_paused(bouncer: BouncerProcess) -> None:
    client = bouncer.connect(dbname="bench")
    try:
        backend_pid(client)
        admin = console(bouncer)
        run(admin, "KILL bench")
        with pytest.raises(psycopg2.OperationalError):
            backend_pid(client)
        assert row_for(bouncer, "SHOW DATABASES", name="bench")["paused"] == 1
        run(admin, "RESUME bench")
        admin.close()
        xacts(bouncer, 1, dbname="bench")
    finally:
        client.close()


def test_kill_client_drops_only_that_client(bouncer: BouncerProcess) -> None:
    victim = bouncer.connect(application_name="victim")
    bystander = bouncer.connect(application_name="bystander")
    try:
        backend_pid(victim)
        client_id = row_for(bouncer, "SHOW CLIENTS", application_name="victim")["id"]
        admin = console(bouncer)
        with admin.cursor() as cur:
            cur.execute(f"KILL_CLIENT {client_id}")
            assert cur.statusmessage == "KILL_CLIENT"
        admin.close()
        with pytest.raises(psycopg2.OperationalError):
            backend_pid(victim)
        backend_pid(bystander)
    finally:
        victim.close()
        bystander.close()


def test_kill_client_reaches_a_client_still_logging_in(bouncer: BouncerProcess) -> None:
    # Its login runs in a spare greenlet; the kill must reach it there, waiting for the password.
    sock = pgwire.connect(bouncer.host, bouncer.port)
    try:
        sock.sendall(pgwire.startup({"user": "md5user", "database": "bench",
                                     "application_name": "midlogin"}))
        kind, payload = pgwire.read_message(sock)
        assert (kind, pgwire.auth_code(payload)) == (b"R", 5)  # md5: it waits for the password
        client_id = row_for(bouncer, "SHOW SOCKETS", application_name="midlogin")["id"]
        admin = console(bouncer)
        run(admin, f"KILL_CLIENT {client_id}")
        admin.close()
        error = pgwire.first_error(pgwire.read_until(sock, b"E"))
        assert error is not None and error["M"] == "client killed by admin"
    finally:
        sock.close()


def test_disable_refuses_new_logins_until_enable(bouncer: BouncerProcess) -> None:
    admin = console(bouncer)
    try:
        run(admin, "DISABLE bench")
        assert row_for(bouncer, "SHOW DATABASES", name="bench")["disabled"] == 1
        with pytest.raises(psycopg2.OperationalError, match='database "bench" is disabled'):
            bouncer.connect(dbname="bench")
        run(admin, "ENABLE bench")
        xacts(bouncer, 1, dbname="bench")
    finally:
        admin.close()


def test_reconnect_replaces_server_connections(bouncer: BouncerProcess, pg: PgCluster) -> None:
    client = bouncer.connect(application_name="reconnect-test")
    try:
        old_pid = backend_pid(client)
        admin = console(bouncer)
        run(admin, "RECONNECT testdb")
        run(admin, "WAIT_CLOSE testdb")
        admin.close()
        new_pid = backend_pid(client)
        assert new_pid != old_pid
        query = f"SELECT count(*) FROM pg_stat_activity WHERE pid = {old_pid}"
        assert wait_until(lambda: pg.psql(query) == "0", 5)
    finally:
        client.close()


def test_server_fast_close_ends_sessions_between_transactions(pg: PgCluster,
                                                               bouncer_factory) -> None:
    proc = bouncer_factory(common_ini(pg, server_fast_close=1))
    idle, _ = pgwire.open_session(proc.host, proc.port, "md5user", "md5pass")
    busy, _ = pgwire.open_session(proc.host, proc.port, "md5user", "md5pass")
    with idle, busy:
        pgwire.run_query(idle, "SELECT 1")  # both sessions hold a server now
        pgwire.run_query(busy, "BEGIN")
        admin = console(proc)
        run(admin, "RECONNECT testdb")
        error = pgwire.first_error(pgwire.messages_until_closed(idle, 5))
        assert error is not None and error["M"] == "database configuration changed"
        assert error["C"] == "08P01"
        # A session inside a transaction keeps its server until the transaction ends.
        assert pgwire.first_error(pgwire.run_query(busy, "SELECT 1")) is None
        pgwire.run_query(busy, "COMMIT")
        assert pgwire.first_error(pgwire.messages_until_closed(busy, 5))["M"] == (
            "database configuration changed")
        admin.close()
    proc.wait_for_log(r"S-0x[0-9a-f]+: testdb/md5user@\S+ closing because: database "
                      r"configuration changed")


# -- raw protocol, as the local pgbouncer user over the unix socket --------------------------
class RawConsole:
    """A minimal frontend: the console user ``pgbouncer`` needs no password on the socket."""

    def __init__(self, proc: BouncerProcess) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(os.path.join(proc.socket_dir or "", f".s.PGSQL.{proc.port}"))
        self.reader = MessageReader()
        self.fds: List[int] = []
        self.sock.sendall(frontend.startup_message({"user": "pgbouncer",
                                                    "database": "pgbouncer"}))
        self.until_ready()

    def send(self, data: bytes) -> List[Tuple[int, bytes]]:
        self.sock.sendall(data)
        return self.until_ready()

    def until_ready(self) -> List[Tuple[int, bytes]]:
        messages = []
        while True:
            message = self.reader.next_message()
            if message is None:
                data, fds, _, _ = socket.recv_fds(self.sock, 65536, 16)
                assert data, "connection closed"
                self.fds += fds
                self.reader.feed(data)
                continue
            messages.append(message)
            if message[0] == Backend.READY_FOR_QUERY:
                return messages

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.sock.close()


def kinds(messages: List[Tuple[int, bytes]]) -> str:
    return "".join(chr(kind) for kind, _ in messages)


def test_extended_protocol_is_refused_once_and_the_console_survives(
        bouncer: BouncerProcess) -> None:
    raw = RawConsole(bouncer)
    try:
        reply = raw.send(frontend.parse("", "SHOW POOLS") + frontend.bind("", "", [])
                         + frontend.execute("") + frontend.sync())
        assert kinds(reply) == "EZ"
        assert "extended query protocol" in backend.parse_error_fields(reply[0][1])["M"]
        assert kinds(raw.send(frontend.query("SHOW VERSION"))) == "TDCZ"
        assert kinds(raw.send(frontend.query(" ; "))) == "IZ"
    finally:
        raw.close()


def test_show_fds_passes_the_listening_sockets(bouncer: BouncerProcess) -> None:
    raw = RawConsole(bouncer)
    try:
        reply = raw.send(frontend.query("SHOW FDS"))
        rows = [backend.parse_data_row(payload) for kind, payload in reply
                if kind == Backend.DATA_ROW]
        assert {row[1] for row in rows} == {b"pooler"}
        assert len(raw.fds) == len(rows)
        passed = [socket.socket(fileno=os.dup(fd)) for fd in raw.fds]
        try:
            tcp = [sock.getsockname() for sock in passed if sock.family == socket.AF_INET]
            assert (bouncer.host, bouncer.port) in tcp
        finally:
            for sock in passed:
                sock.close()
    finally:
        raw.close()


def test_suspend_resumes_when_its_admin_leaves(bouncer: BouncerProcess) -> None:
    raw = RawConsole(bouncer)
    suspended = raw.send(frontend.query("SUSPEND"))
    assert backend.parse_command_complete(suspended[0][1]) == "SUSPEND"
    raw.close()
    assert wait_until(lambda: _state(bouncer) == "active", 5)
    xacts(bouncer, 1)


def _state(proc: BouncerProcess) -> Optional[str]:
    raw = RawConsole(proc)
    try:
        reply = raw.send(frontend.query("SHOW STATE"))
    finally:
        raw.close()
    states = {row[0]: row[1] for row in (backend.parse_data_row(payload)
                                         for kind, payload in reply if kind == Backend.DATA_ROW)}
    return next((key.decode() for key, value in states.items() if value == b"yes"), None)


# -- SHUTDOWN (its own process) --------------------------------------------------------------
def test_shutdown_answers_then_exits(pg: PgCluster, bouncer_factory: Any) -> None:
    proc = bouncer_factory(common_ini(pg))
    conn = console(proc)
    with conn.cursor() as cur:
        cur.execute("SHUTDOWN")
        assert cur.statusmessage == "SHUTDOWN"
    assert proc.wait(10) == 0
    conn.close()
