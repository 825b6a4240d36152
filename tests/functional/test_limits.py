"""Connection limits against a real PostgreSQL: each limit reached and enforced, changed at run
time with SET USER / SET POOL, shrinking, RELOAD, the reserve pool, min_pool_size and a noisy
tenant throttled while another keeps working.

Server connections are counted in ``pg_stat_activity`` by role: each test logs
in as its own throwaway roles, so nothing else on the cluster is counted.  Clients "hold" a
server by staying inside a transaction (psycopg2 opens one with the first query) in
transaction pooling mode.
"""
from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import psycopg2
import pytest

from tests.functional.pgroles import Roles, literal, roles  # roles: a fixture
from tests.support import pgwire
from bouncer.testing.process import BouncerProcess
from bouncer.testing.ini import common_ini
from tests.support.observe import Background, scalar
from bouncer.testing.pgcluster import STANDARD_PASSWORDS, PgCluster
from bouncer.testing.ports import wait_until

PASSWORD = "limits-pw"
ADMIN = "scramuser"
#: Long enough to see a client waiting, short enough to keep the module quick.
STILL_WAITING = 0.6



@pytest.fixture
def tenants(roles: Roles) -> List[str]:
    """Two fresh login roles (md5 passwords), so counts by role see only this test."""
    return [roles.create("h11_tenant", PASSWORD) for _ in range(2)]


@pytest.fixture
def start(pg: PgCluster, bouncer_factory: Callable[..., BouncerProcess],
          tenants: List[str]) -> Callable[..., BouncerProcess]:
    """``start(users=, pools=, databases=, **settings)``: transaction pooling, both tenants.

    ``databases`` maps a standard database to keys added to its line (``pool_size=2``).
    """
    def start_bouncer(users: Optional[Mapping[str, str]] = None,
                      pools: Optional[Mapping[str, str]] = None,
                      databases: Optional[Mapping[str, str]] = None,
                      **settings: Any) -> BouncerProcess:
        settings.setdefault("pool_mode", "transaction")
        lines = {name: f"host=127.0.0.1 port={pg.port} dbname={name} {extra}"
                 for name, extra in (databases or {}).items()}
        text = common_ini(pg, databases=lines, users=users, **settings)
        text += "\n[pools]\n" + "".join(f"{key} = {value}\n"
                                        for key, value in (pools or {}).items())
        return bouncer_factory(text, {**STANDARD_PASSWORDS, **{t: PASSWORD for t in tenants}})
    return start_bouncer


# -- observing -------------------------------------------------------------------------------

def servers(pg: PgCluster, user: str) -> int:
    """Backends of *user* as PostgreSQL counts them."""
    return int(pg.psql("SELECT count(*) FROM pg_stat_activity "
                       f"WHERE backend_type = 'client backend' AND usename = {literal(user)}"))


def wait_for_servers(pg: PgCluster, user: str, expected: int, timeout: float = 5) -> None:
    seen: List[int] = []

    def reached() -> bool:
        seen.append(servers(pg, user))
        return seen[-1] == expected

    assert wait_until(reached, timeout, interval=0.05), \
        f"{user} has {seen[-1]} server connections, expected {expected}"


def connect(bouncer: BouncerProcess, user: str, db: str = "testdb") -> Any:
    return bouncer.connect(user=user, password=PASSWORD, dbname=db)


def holding(bouncer: BouncerProcess, user: str, db: str = "testdb") -> Any:
    """A client inside a transaction: in transaction mode it keeps its server."""
    conn = connect(bouncer, user, db)
    scalar(conn, "SELECT 1")
    return conn


def waiting_query(bouncer: BouncerProcess, user: str, db: str = "testdb") -> Background:
    """A client that logs in and runs one query in the background (it may have to wait)."""
    def run() -> int:
        conn = connect(bouncer, user, db)
        conn.autocommit = True  # the server goes back to the pool after the query
        try:
            return scalar(conn, "SELECT 1")
        finally:
            conn.close()
    return Background(run)


def assert_still_waiting(query: Background) -> None:
    time.sleep(STILL_WAITING)
    assert not query.done(), "the client was served although the limit is reached"


def admin_error(bouncer: BouncerProcess, sql: str, user: str = ADMIN) -> Any:
    with pytest.raises(psycopg2.Error) as info:
        bouncer.admin(sql, user=user)
    return info.value.diag


def close_all(conns: List[Any]) -> None:
    for conn in conns:
        conn.close()


# -- each limit reached and enforced ---------------------------------------------------------

#: The ini pieces, the two clients that reach the limit (tenant, database) and the one that
#: waits, served once the second holder commits.
LIMITS = {
    "default_pool_size": (dict(default_pool_size=2), [(0, "testdb")] * 2, (0, "testdb")),
    "database pool_size": (dict(databases={"testdb": "pool_size=2"}), [(0, "testdb")] * 2,
                           (0, "testdb")),
    "user pool_size": (dict(users={"T0": "pool_size=2"}), [(0, "testdb")] * 2, (0, "testdb")),
    "[pools] pool_size": (dict(pools={"T0.testdb": "pool_size=2"}), [(0, "testdb")] * 2,
                          (0, "testdb")),
    "min of [pools] and database": (dict(databases={"testdb": "pool_size=2"},
                                         pools={"T0.testdb": "pool_size=5"}),
                                    [(0, "testdb")] * 2, (0, "testdb")),
    "max_user_connections across databases": (dict(users={"T0": "max_user_connections=2"}),
                                              [(0, "testdb"), (0, "bench")], (0, "testdb")),
    "max_db_connections across users": (dict(databases={"testdb": "max_db_connections=2"}),
                                        [(0, "testdb"), (1, "testdb")], (1, "testdb")),
}


def _named(pieces: Dict[str, Any], tenants: List[str]) -> Dict[str, Any]:
    """Replace the T0 placeholder by the test's first role name."""
    return {key: {k.replace("T0", tenants[0]): v for k, v in value.items()}
            if isinstance(value, dict) else value for key, value in pieces.items()}


@pytest.mark.parametrize("limit", LIMITS)
def test_limit_reached_makes_clients_wait_until_a_server_is_released(
        pg: PgCluster, start: Callable[..., BouncerProcess], tenants: List[str],
        limit: str) -> None:
    pieces, held, (waiter, db) = LIMITS[limit]
    bouncer = start(**_named(pieces, tenants))
    holders = [holding(bouncer, tenants[index], held_db) for index, held_db in held]
    try:
        query = waiting_query(bouncer, tenants[waiter], db)
        assert_still_waiting(query)
        assert sum(servers(pg, tenant) for tenant in tenants) == 2
        # The second holder's server is the waiter's to take, or to make room for.
        holders[-1].commit()
        assert query.result(timeout=5) == 1
    finally:
        close_all(holders)


@pytest.mark.parametrize("setting, value", [
    ("max_client_conn", 2), ("max_db_client_connections", 2),
    ("max_user_client_connections", 2)])
def test_client_limits_refuse_with_pgbouncers_message(start: Callable[..., BouncerProcess],
                                                      tenants: List[str], setting: str,
                                                      value: int) -> None:
    bouncer = start(**{setting: value})
    clients = [connect(bouncer, tenants[0]) for _ in range(value)]
    try:
        with pytest.raises(psycopg2.OperationalError,
                           match=rf"no more connections allowed \({setting}\)"):
            connect(bouncer, tenants[0])
    finally:
        close_all(clients)


# -- raising a limit -------------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    "SET POOL {user}.testdb = 'pool_size=3'", "SET USER {user} TO 'max_user_connections=3'"])
def test_raised_limit_lets_waiting_clients_through(
        pg: PgCluster, start: Callable[..., BouncerProcess], tenants: List[str],
        command: str) -> None:
    user = tenants[0]
    bouncer = start(default_pool_size=5, pools={f"{user}.testdb": "pool_size=1"},
                    users={user: "max_user_connections=1"})
    holder = holding(bouncer, user)
    try:
        queries = [waiting_query(bouncer, user) for _ in range(2)]
        assert_still_waiting(queries[-1])
        bouncer.admin(f"SET POOL {user}.testdb = 'pool_size=3'" if "USER" in command
                      else f"SET USER {user} = 'max_user_connections=3'")
        assert_still_waiting(queries[-1])  # the other limit still holds them back
        bouncer.admin(command.format(user=user))
        assert [query.result(timeout=3) for query in queries] == [1, 1]
        assert servers(pg, user) == 3
    finally:
        holder.close()


# -- shrinking -------------------------------------------------------------------------------

@pytest.mark.parametrize("command, limit", [
    ("SET POOL {user}.testdb = 'pool_size=1'", "pool_size"),
    ("SET USER {user} = 'max_user_connections=1'", "max_user_connections")])
def test_lowered_limit_shrinks_idle_then_active_connections(
        pg: PgCluster, start: Callable[..., BouncerProcess], tenants: List[str],
        command: str, limit: str) -> None:
    user = tenants[0]
    bouncer = start(default_pool_size=10, limit_shrink_timeout=2)
    clients = [holding(bouncer, user) for _ in range(9)]  # nine servers, all active
    # The tenth, most recently active, stays in its transaction; a raw connection shows the
    # error it is sent (libpq would only report the connection closing).
    overstaying, _ = pgwire.open_session(bouncer.host, bouncer.port, user, PASSWORD)
    oldest, finishing = clients[0], clients[8]
    try:
        pgwire.run_query(overstaying, "BEGIN; SELECT 1")
        for conn in clients[1:8]:
            conn.commit()  # seven of them go back to the pool: idle
        wait_for_servers(pg, user, 10)
        bouncer.admin(command.format(user=user))
        wait_for_servers(pg, user, 3, timeout=1)  # the idle ones closed at once
        finishing.commit()  # an active one finishes its transaction, then closes
        wait_for_servers(pg, user, 2, timeout=1)
        error = pgwire.first_error(pgwire.messages_until_closed(overstaying, timeout=4))
        assert error is not None and (error["S"], error["C"]) == ("FATAL", "57P01")
        assert error["M"] == f"{limit} lowered to 1"
        wait_for_servers(pg, user, 1, timeout=1)
        assert scalar(oldest, "SELECT 2") == 2  # the least recently active one stays
        oldest.commit()
        assert scalar(clients[1], "SELECT 3") == 3  # and serves the others
    finally:
        overstaying.close()
        close_all(clients)


def test_reload_restores_ini_values_and_shrinks_to_them(
        pg: PgCluster, start: Callable[..., BouncerProcess], tenants: List[str]) -> None:
    user = tenants[0]
    bouncer = start(users={user: "max_user_connections=2"}, limit_shrink_timeout=2)
    bouncer.admin(f"SET USER {user} = 'max_user_connections=6'")
    clients = [holding(bouncer, user) for _ in range(5)]
    try:
        for conn in clients:
            conn.commit()  # five idle servers, allowed by the runtime value
        wait_for_servers(pg, user, 5)
        bouncer.admin("RELOAD")
        wait_for_servers(pg, user, 2, timeout=1)
        assert user_row(bouncer, user)["max_user_connections"] == 2
        bouncer.write_ini(bouncer.ini_text.replace("max_user_connections=2",
                                                   "max_user_connections=1"))
        bouncer.admin("RELOAD")  # the file's own value went down too
        wait_for_servers(pg, user, 1, timeout=1)
        assert user_row(bouncer, user)["max_user_connections"] == 1
    finally:
        close_all(clients)


def user_row(bouncer: BouncerProcess, user: str) -> Dict[str, Any]:
    return admin_rows(bouncer, "SHOW USERS", name=user)


def limits_of(bouncer: BouncerProcess, user: str) -> List[Any]:
    row = user_row(bouncer, user)
    return [row[key] for key in ("pool_size", "reserve_pool_size", "pool_mode",
                                 "max_user_connections", "max_user_client_connections")]


# -- malformed commands ----------------------------------------------------------------------

MALFORMED = [
    "SET USER {user} = 'max_user_connections=0d'", "SET USER {user} = ''",
    "SET USER {user} = 'max_user_connections='", "SET USER {user} = 'no_such_key=1'",
    "SET USER {user} = 'pool_mode=sometimes'", "SET USER {user} = 'pool_size=-5'",
    "SET POOL {user}.testdb = 'pool_size=0d'", "SET POOL {user}.testdb = ''",
    "SET POOL {user}.testdb.x = 'pool_size=1'", "SET POOL .testdb = 'pool_size=1'",
    "SET POOL {user}. = 'pool_size=1'", "SET POOL {user}testdb = 'pool_size=1'",
    "SET POOL {user}.testdb = 'pool_mode=session'", "SET POOL lo.ngpass.p0 = 'pool_size=1'",
]


def test_every_malformed_set_fails_with_a_reason_and_changes_nothing(
        start: Callable[..., BouncerProcess], tenants: List[str]) -> None:
    user = tenants[0]
    bouncer = start(users={user: "max_user_connections=4 pool_size=3"}, stats_users="md5user")
    before = limits_of(bouncer, user)
    for command in MALFORMED:
        diag = admin_error(bouncer, command.format(user=user))
        assert (diag.message_primary, bool(diag.message_detail)) == ("SET failed", True), command
    assert limits_of(bouncer, user) == before
    assert [row[-1] for row in bouncer.admin("SHOW POOLS") if row[1] == user] == []
    diag = admin_error(bouncer, f"SET USER {user} 'pool_size=1'")
    assert diag.message_primary.startswith("invalid command")
    diag = admin_error(bouncer, f"SET USER {user} = 'pool_size=1'", user="md5user")
    assert diag.message_primary == "admin access needed"


def test_set_user_keeps_unnamed_keys_and_minus_one_restores_the_ini_value(
        start: Callable[..., BouncerProcess], tenants: List[str]) -> None:
    user, newcomer = tenants
    bouncer = start(users={user: "max_user_connections=4 pool_mode=session"})
    bouncer.admin(f"SET USER {user} = 'max_user_connections=9'")
    bouncer.admin(f"SET USER {user} = 'pool_size=2'")
    assert (user_row(bouncer, user)["max_user_connections"],
            user_row(bouncer, user)["pool_mode"], user_row(bouncer, user)["pool_size"].strip()) \
        == (9, "session", "2")
    bouncer.admin(f"SET USER {user} = 'max_user_connections=-1 pool_mode=transaction'")
    row = user_row(bouncer, user)
    assert (row["max_user_connections"], row["pool_mode"]) == (4, "transaction")
    bouncer.admin(f"SET USER {newcomer} = 'max_user_connections=7'")  # not seen before
    assert user_row(bouncer, newcomer)["max_user_connections"] == 7


def test_show_commands_report_effective_limits_and_counts(
        pg: PgCluster, start: Callable[..., BouncerProcess], tenants: List[str]) -> None:
    user = tenants[0]
    bouncer = start(databases={"testdb": "pool_size=6 max_db_connections=9"},
                    pools={f"{user}.testdb": "pool_size=4"})
    holders = [holding(bouncer, user) for _ in range(2)]
    try:
        bouncer.admin(f"SET POOL {user}.testdb = 'pool_size=3'")
        bouncer.admin(f"SET USER {user} = 'max_user_connections=5'")
        pool = admin_rows(bouncer, "SHOW POOLS", database="testdb", user=user)
        assert (pool["pool_size"], pool["sv_active"]) == (3, 2)
        row = user_row(bouncer, user)
        assert (row["max_user_connections"], row["current_connections"],
                row["current_client_connections"]) == (5, 2, 2)
        database = admin_rows(bouncer, "SHOW DATABASES", name="testdb")
        assert (database["pool_size"], database["max_connections"],
                database["current_connections"]) == (6, 9, 2)
        _, help_text = admin_query(bouncer, "SHOW HELP")
        assert "SET USER" in help_text and "SET POOL" in help_text
    finally:
        close_all(holders)


def test_show_users_counts_clients_by_login_user_and_lists_auth_file_users(
        pg: PgCluster, start: Callable[..., BouncerProcess], tenants: List[str]) -> None:
    user, idle_user = tenants
    # A forced user: the pool belongs to trustuser, the client is still the tenant's.
    bouncer = start(databases={"bench": "user=trustuser"})
    clients = [connect(bouncer, user), connect(bouncer, user, db="bench")]
    try:
        assert user_row(bouncer, user)["current_client_connections"] == 2
        assert user_row(bouncer, "trustuser")["current_client_connections"] == 0
        # Known from auth_file only, never connected: listed as PgBouncer lists it.
        assert user_row(bouncer, idle_user)["current_client_connections"] == 0
        # The console client asking counts for its own user.
        assert user_row(bouncer, ADMIN)["current_client_connections"] >= 1
    finally:
        close_all(clients)


def test_admin_users_are_never_locked_out_of_the_console(
        start: Callable[..., BouncerProcess]) -> None:
    # PgBouncer's rule: client limits do not count against an admin user on the console.
    bouncer = start(max_db_client_connections=1, max_user_client_connections=1)
    first = bouncer.connect(dbname="pgbouncer", user=ADMIN)
    try:
        assert admin_rows(bouncer, "SHOW DATABASES", name="pgbouncer")["name"] == "pgbouncer"
    finally:
        first.close()


def admin_rows(bouncer: BouncerProcess, sql: str, **match: Any) -> Dict[str, Any]:
    """The one row of an admin SHOW whose columns have the values in *match*."""
    rows, _ = admin_query(bouncer, sql)
    found = [row for row in rows if all(row[key] == value for key, value in match.items())]
    assert len(found) == 1, rows
    return found[0]


def admin_query(bouncer: BouncerProcess, sql: str) -> Tuple[List[Dict[str, Any]], str]:
    """The rows (by column name) of an admin command, and the notices it sent."""
    conn = bouncer.connect(dbname="pgbouncer", user=ADMIN)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(sql)
            names = [column.name for column in cursor.description or ()]
            rows = [dict(zip(names, row)) for row in cursor.fetchall()] if names else []
        return rows, "".join(conn.notices)
    finally:
        conn.close()


# -- reserve pool and min_pool_size ----------------------------------------------------------

def test_reserve_pool_opens_after_reserve_pool_timeout(
        pg: PgCluster, start: Callable[..., BouncerProcess], tenants: List[str]) -> None:
    user = tenants[0]
    bouncer = start(default_pool_size=1, reserve_pool_size=1, reserve_pool_timeout=1)
    holder = holding(bouncer, user)
    second: Optional[Any] = None
    try:
        began = time.monotonic()
        query = waiting_query(bouncer, user)
        assert_still_waiting(query)
        assert query.result(timeout=3) == 1
        assert time.monotonic() - began >= 1.0
        second = holding(bouncer, user)  # the reserve server, now idle, is taken again
        assert servers(pg, user) == 2
        third = waiting_query(bouncer, user)  # the reserve is used up: this one waits
        time.sleep(1.5)
        assert not third.done() and servers(pg, user) == 2
        holder.commit()
        assert third.result(timeout=3) == 1
        # PgBouncer's warning, once: for the one reserve connection opened.
        taken = re.findall(rf"WARNING C-0x\w+: testdb/{user}@\S+ taking connection from "
                           r"reserve_pool$", bouncer.log_text(), re.M)
        assert len(taken) == 1
    finally:
        holder.close()
        if second is not None:
            second.close()


def test_min_pool_size_opens_servers_for_a_pool_with_clients(
        pg: PgCluster, start: Callable[..., BouncerProcess], tenants: List[str]) -> None:
    user = tenants[0]
    bouncer = start(databases={"testdb": "min_pool_size=3"})
    client = connect(bouncer, user)
    try:
        wait_for_servers(pg, user, 3, timeout=4)
    finally:
        client.close()


# -- a noisy tenant --------------------------------------------------------------------------

class Tenant:
    """*count* clients looping on a short query; counts the queries completed."""

    def __init__(self, bouncer: BouncerProcess, user: str, count: int, sql: str) -> None:
        self.completed = 0
        self.errors: List[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns = [connect(bouncer, user) for _ in range(count)]
        self._threads = [threading.Thread(target=self._loop, args=(conn, sql), daemon=True)
                         for conn in self._conns]
        for thread in self._threads:
            thread.start()

    def _loop(self, conn: Any, sql: str) -> None:
        conn.autocommit = True
        try:
            while not self._stop.is_set():
                scalar(conn, sql)
                with self._lock:
                    self.completed += 1
        except psycopg2.Error as exc:  # shown by the test if it matters
            self.errors.append(exc)

    def completed_during(self, seconds: float) -> int:
        before = self.completed
        time.sleep(seconds)
        return self.completed - before

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        close_all(self._conns)


def test_noisy_tenant_throttled_by_set_user_while_another_keeps_working(
        pg: PgCluster, start: Callable[..., BouncerProcess], tenants: List[str]) -> None:
    noisy_user, quiet_user = tenants
    bouncer = start(databases={"testdb": "max_db_connections=8"},
                    default_pool_size=8, max_client_conn=100, limit_shrink_timeout=2)
    noisy = Tenant(bouncer, noisy_user, 50, "SELECT pg_sleep(0.05)")
    quiet: Optional[Tenant] = None
    try:
        wait_for_servers(pg, noisy_user, 8)  # the noisy tenant holds the whole database
        # The quiet tenant's first login needs a server: it waits until the throttling.
        arriving = Background(lambda: Tenant(bouncer, quiet_user, 2, "SELECT 1"))
        bouncer.admin(f"SET USER {noisy_user} = 'max_user_connections=2'")
        wait_for_servers(pg, noisy_user, 2, timeout=3)
        quiet = arriving.result(timeout=5)
        assert quiet.completed_during(1.0) > 0
        assert noisy.completed_during(0.5) > 0  # throttled, not starved
        assert servers(pg, noisy_user) <= 2
        assert (quiet.errors, noisy.errors) == ([], [])  # evicted servers finished their work
    finally:
        noisy.stop()
        if quiet is not None:
            quiet.stop()
