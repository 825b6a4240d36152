"""auth_query cannot be redirected by a client's session state (PgBouncer's CVE-2025-12819 and
the plain-SQL form of the same hole).

The attacker is a client of the auth_user's pool (``scramuser`` in ``testdb``, or any user of a
database whose forced user is the auth_user).  It creates its own ``evil`` schema, points its
session's search_path there and leaves; then it logs in as ``trustuser`` (no password in
PostgreSQL, trust over TCP) with a password of its choosing.  Were the lookup run on the
attacker's server connection, bouncer would accept that password and PostgreSQL would let the
trust role in.  Lookups run on dedicated connections with a pinned search_path, so it fails.
"""
from __future__ import annotations

import hashlib
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import pytest

from tests.functional.pgroles import login_outcome, roles, unique_name  # roles: a fixture
from tests.support import pgwire
from bouncer.testing.ini import common_ini
from bouncer.testing.ports import wait_until

VICTIM = "trustuser"
ATTACKER_PASSWORD = "chosen-by-the-attacker"
ATTACKER_SECRET = hashlib.md5((ATTACKER_PASSWORD + VICTIM).encode()).hexdigest()
#: PgBouncer's default auth_query: every name in it is unqualified.
UNQUALIFIED_DEFAULT = ("SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE "
                       "rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin")
REFUSED = 'refused: .*password authentication failed for user "trustuser"'


@pytest.fixture
def evil(pg) -> Iterator[str]:
    """A schema name for the attacker's objects, dropped at teardown."""
    schema = unique_name("evil")
    yield schema
    pg.psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE", db="testdb")


@pytest.fixture
def start(pg, bouncer_factory) -> Callable:
    """A transaction-mode bouncer whose auth_user is scramuser, one server per pool (so a
    lookup through the pool would meet the attacker's server)."""
    def start_bouncer(auth_query: str = UNQUALIFIED_DEFAULT, **settings):
        databases = {"authdb": f"host=127.0.0.1 port={pg.port} dbname=testdb "
                               f"user=scramuser password=scrampass"}
        return bouncer_factory(common_ini(pg, databases=databases, auth_user="scramuser",
                                          auth_query=auth_query, pool_mode="transaction",
                                          default_pool_size=1, **settings))
    return start_bouncer


@pytest.fixture
def lookup(pg, evil) -> Iterator[str]:
    """An honest ``public.<name>(text)`` lookup function in testdb; returns its name.

    ``evil_lookup_sql(schema, name)`` makes the attacker's function of the same name."""
    name = unique_name("h12_lookup")
    pg.psql(f"CREATE FUNCTION public.{name}(text) RETURNS TABLE (u text, p text) "
            f"LANGUAGE sql AS $$ SELECT rolname::text, rolpassword FROM pg_catalog.pg_authid "
            f"WHERE rolname = $1 $$", db="testdb")
    yield name
    pg.psql(f"DROP FUNCTION IF EXISTS public.{name}(text)", db="testdb")


def evil_lookup_sql(schema: str, name: str) -> str:
    """SQL making ``<schema>.<name>(text)`` answer the victim's name and the attacker's secret."""
    return (f"CREATE SCHEMA {schema}; CREATE FUNCTION {schema}.{name}(text) "
            f"RETURNS TABLE (u text, p text) LANGUAGE sql AS "
            f"$$ SELECT '{VICTIM}'::text, 'md5{ATTACKER_SECRET}'::text $$;")


def shadow_pg_authid(relation: str) -> str:
    """SQL making *relation* a pg_authid look-alike listing the victim with the attacker's
    md5 secret."""
    return (f"CREATE {relation} AS SELECT '{VICTIM}'::name AS rolname, "
            f"'md5{ATTACKER_SECRET}'::text AS rolpassword, NULL::timestamptz AS rolvaliduntil,"
            f" true AS rolcanlogin;")


def poison_and_leave(bouncer, sql: str, user: str = "scramuser", dbname: str = "testdb") -> None:
    """Run *sql* as a client of the pool, leaving its session state on the server."""
    conn = bouncer.connect(user=user, dbname=dbname)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def assert_victim_refused(bouncer) -> None:
    outcome = login_outcome(bouncer.connect, user=VICTIM, password=ATTACKER_PASSWORD)
    assert re.match(REFUSED, outcome), outcome


@pytest.mark.parametrize("attacker", [("scramuser", "testdb", None),
                                      ("md5user", "authdb", "authdb")],
                         ids=["auth-user-pool", "forced-user-database"])
@pytest.mark.parametrize("poison", ["search_path", "temp_table"])
def test_session_state_left_by_a_client_does_not_redirect_pg_authid(roles, start, evil,
                                                                    attacker, poison) -> None:
    # PgBouncer's default query names pg_authid, now() and < unqualified.  A schema put before
    # pg_catalog, or a temp table (pg_temp is searched first unless listed), would shadow it.
    user, dbname, auth_dbname = attacker
    bouncer = start(**({"auth_dbname": auth_dbname} if auth_dbname else {}))
    honest = roles.create("h12_honest", "honest-pw")
    assert login_outcome(bouncer.connect, user=honest, password="honest-pw") == honest
    sql = (f"CREATE SCHEMA {evil};" + shadow_pg_authid(f"TABLE {evil}.pg_authid")
           + f"SET search_path = {evil}, pg_catalog" if poison == "search_path"
           else shadow_pg_authid("TEMP TABLE pg_authid"))
    poison_and_leave(bouncer, sql, user=user, dbname=dbname)
    assert_victim_refused(bouncer)
    assert login_outcome(bouncer.connect, user=honest, password="honest-pw") == honest


def test_an_unqualified_function_the_client_shadows_is_never_called(start, evil,
                                                                    lookup) -> None:
    # auth_query calls lookup() from public; the attacker's own comes first in its search_path.
    # Under the pinned search_path neither resolves: the login fails closed, and the log says
    # to schema-qualify the query.
    bouncer = start(auth_query=f"SELECT * FROM {lookup}($1)")
    poison_and_leave(bouncer, evil_lookup_sql(evil, lookup) + f"SET search_path = {evil}, public")
    outcome = login_outcome(bouncer.connect, user=VICTIM, password=ATTACKER_PASSWORD)
    assert outcome.startswith("refused:"), outcome
    bouncer.wait_for_log(rf"auth_query .* failed: .*{lookup}.*does not exist.*schema-qualif")


def test_search_path_in_the_attackers_own_startup_packet_is_not_applied(start, evil,
                                                                       lookup) -> None:
    # CVE-2025-12819 proper: the unauthenticated login itself carries the search_path.
    bouncer = start(auth_query=f"SELECT * FROM {lookup}($1)",
                    track_extra_parameters="search_path")
    poison_and_leave(bouncer, evil_lookup_sql(evil, lookup))
    sock = pgwire.connect(bouncer.host, bouncer.port)
    try:
        sock.sendall(pgwire.startup({"user": VICTIM, "database": "testdb",
                                     "search_path": evil}))
        messages = pgwire.login(sock, VICTIM, ATTACKER_PASSWORD)
    finally:
        sock.close()
    assert messages[-1][0] == b"E", "the attacker logged in"


def test_search_path_left_by_a_tracked_startup_parameter_is_not_used(start, evil,
                                                                    lookup) -> None:
    bouncer = start(auth_query=f"SELECT * FROM {lookup}($1)",
                    track_extra_parameters="search_path")
    poison_and_leave(bouncer, evil_lookup_sql(evil, lookup))
    sock, _ = pgwire.open_session(bouncer.host, bouncer.port, "scramuser", "scrampass",
                                  params={"search_path": evil})
    try:  # the first query links the server and SETs the client's search_path on it
        rows = pgwire.data_rows(pgwire.run_query(sock, "SHOW search_path"))
        assert rows == [[evil]]
    finally:
        sock.close()
    outcome = login_outcome(bouncer.connect, user=VICTIM, password=ATTACKER_PASSWORD)
    assert outcome.startswith("refused:"), outcome


def test_lookups_run_on_their_own_connection_with_the_pinned_search_path(pg, roles,
                                                                         start) -> None:
    user = roles.create("h12_pinned", "pinned-pw")
    bouncer = start(auth_query="SELECT rolname, rolpassword FROM pg_catalog.pg_authid "
                               "WHERE rolname = $1 AND pg_catalog.current_setting("
                               "'search_path') = 'pg_catalog, pg_temp'")
    conn = bouncer.connect(user="scramuser")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            client_backend = cur.fetchone()[0]
        # Only a lookup on a connection with the pinned search_path finds the role.
        assert login_outcome(bouncer.connect, user=user, password="pinned-pw") == user
        lookup_backends = pg.psql("SELECT pid FROM pg_stat_activity WHERE usename = "
                                  "'scramuser' AND query LIKE '%current_setting%'").split()
        assert lookup_backends and str(client_backend) not in lookup_backends
    finally:
        conn.close()


# -- the auth connections' own life ------------------------------------------------------------

SLOW_QUERY = ("SELECT rolname, rolpassword FROM pg_catalog.pg_authid, pg_catalog.pg_sleep("
              "CASE WHEN rolname::text LIKE 'h12_slow%' THEN {seconds} ELSE 0 END) "
              "WHERE rolname = $1")


def lookups_running(pg) -> int:
    return int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'scramuser' "
                       "AND state = 'active' AND query LIKE '%pg_sleep(CASE%'"))


def test_at_most_two_lookups_run_at_once_and_the_others_wait_their_turn(pg, roles,
                                                                        start) -> None:
    users = [roles.create("h12_slow", "slow-pw") for _ in range(5)]
    bouncer = start(auth_query=SLOW_QUERY.format(seconds=1))
    with ThreadPoolExecutor(len(users)) as workers:
        logins = [workers.submit(login_outcome, bouncer.connect, user=user, password="slow-pw")
                  for user in users]
        most = max(lookups_running(pg) for _ in wait_a_while(3.0))
        assert [login.result() for login in logins] == users
    assert most == 2


def test_a_login_that_waits_longer_than_query_wait_timeout_for_a_lookup_is_refused(
        roles, start) -> None:
    users = [roles.create("h12_slow", "slow-pw") for _ in range(3)]
    bouncer = start(auth_query=SLOW_QUERY.format(seconds=3), query_wait_timeout=1)
    with ThreadPoolExecutor(len(users)) as workers:
        outcomes = list(workers.map(
            lambda user: login_outcome(bouncer.connect, user=user, password="slow-pw"), users))
    assert sorted(outcome in users for outcome in outcomes) == [False, True, True], outcomes
    bouncer.wait_for_log("failed: no auth_query connection became free within "
                         "query_wait_timeout")


def test_an_interrupted_lookup_is_cancelled_and_its_connection_closed(pg, roles,
                                                                      start) -> None:
    slow, quick = roles.create("h12_slow", "slow-pw"), roles.create("h12_quick", "quick-pw")
    bouncer = start(auth_query=SLOW_QUERY.format(seconds=60), client_login_timeout=1)
    assert "refused" in login_outcome(bouncer.connect, user=slow, password="slow-pw")
    bouncer.wait_for_log(r"closing because: auth_query did not complete")
    assert wait_until(lambda: lookups_running(pg) == 0, 10), "the slow lookup still runs"
    assert login_outcome(bouncer.connect, user=quick, password="quick-pw") == quick


def test_a_lookup_failing_with_an_sql_error_keeps_its_connection(pg, roles, start) -> None:
    user = roles.create("h12_kept", "kept-pw")
    bouncer = start(auth_query="SELECT rolname, rolpassword FROM pg_catalog.pg_authid "
                               "WHERE rolname = $1 AND 1 / (length($1) - 3) > -1")
    assert "refused" in login_outcome(bouncer.connect, user="abc", password="x")
    bouncer.wait_for_log(r"auth_query .* failed: division by zero")
    assert login_outcome(bouncer.connect, user=user, password="kept-pw") == user
    assert not re.search(r"S-0x\w+: testdb/scramuser\S* closing because", bouncer.log_text())


def test_idle_auth_connections_close_after_server_idle_timeout(roles, start) -> None:
    user = roles.create("h12_idle", "idle-pw")
    bouncer = start(server_idle_timeout=1)
    assert login_outcome(bouncer.connect, user=user, password="idle-pw") == user
    bouncer.wait_for_log(r"S-0x\w+: testdb/scramuser@.* closing because: server idle timeout")


def wait_a_while(seconds: float) -> Iterator[None]:
    """Yields every 50 ms for *seconds*."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        yield
        time.sleep(0.05)


def test_a_reload_that_moves_the_database_closes_the_idle_auth_connections(pg, roles,
                                                                           start) -> None:
    user = roles.create("h12_moved", "moved-pw")
    bouncer = start()
    assert login_outcome(bouncer.connect, user=user, password="moved-pw") == user
    bouncer.write_ini(bouncer.ini_text.replace(f"dbname=testdb\n",
                                               "dbname=testdb application_name=moved\n", 1))
    bouncer.reload()
    bouncer.wait_for_log(r"S-0x\w+: testdb/scramuser@.* closing because: database "
                         r"configuration changed")
    assert login_outcome(bouncer.connect, user=user, password="moved-pw") == user
