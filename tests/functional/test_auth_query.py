"""auth_query against a real PostgreSQL: md5 and SCRAM secrets, SCRAM passthrough, no caching,
the ``[users]``-without-auth_file regression, expired and non-login roles, hostile user names,
per-database overrides, failures, the admin console, and no secret in the log.

The auth_user is ``scramuser`` (a superuser, plain password in the standard userlist); every
user looked up is a throwaway role that auth_file does not list.
"""
from __future__ import annotations

import os
import re
from typing import Iterator, List

import pytest

from tests.functional.pgroles import literal, login_outcome, roles, unique_name  # roles: a fixture
from bouncer.testing.ini import common_ini
from bouncer.testing.pgcluster import STANDARD_PASSWORDS

#: PostgreSQL's words after a password or md5 exchange, PgBouncer's after a SCRAM one.
REFUSED_PASSWORD = "refused: .*(password authentication failed for user|SASL authentication failed)"
#: PgBouncer's words when auth_query returns no row: it tells the client, before any password.
NO_SUCH_USER = "refused: .*FATAL:  no such user$"


@pytest.fixture
def start(pg, bouncer_factory):
    """``start(**settings)``: a bouncer whose auth_user is scramuser."""
    def start_bouncer(users=None, databases=None, flags=(), **settings):
        settings.setdefault("auth_user", "scramuser")
        return bouncer_factory(common_ini(pg, databases=databases, users=users, **settings),
                               flags=flags)
    return start_bouncer


def test_md5_secret_from_auth_query_authenticates_the_client(roles, start) -> None:
    user = roles.create("h10_md5", "md5-role-pw")
    assert roles.stored_secret(user).startswith("md5")
    bouncer = start()
    assert login_outcome(bouncer.connect, user=user, password="md5-role-pw") == user
    assert re.match(REFUSED_PASSWORD, login_outcome(bouncer.connect, user=user, password="nope"))


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256"])
def test_scram_secret_authenticates_and_passes_through_to_a_server_requiring_scram(
        roles, start, auth_type) -> None:
    # The cluster asks this role for SCRAM, and bouncer only has the SCRAM secret: the second
    # server connection can only log in with the keys recovered from the client's exchange.
    user = roles.create("h10_scram", "scram-role-pw", encryption="scram-sha-256")
    bouncer = start(auth_type=auth_type)
    first = bouncer.connect(user=user, password="scram-role-pw")
    try:
        assert login_outcome(bouncer.connect, user=user, password="scram-role-pw") == user
    finally:
        first.close()
    assert re.match(REFUSED_PASSWORD, login_outcome(bouncer.connect, user=user, password="nope"))


@pytest.mark.parametrize("encryption", ["md5", "scram-sha-256"])
def test_password_changed_in_postgres_counts_at_the_next_login(roles, start,
                                                                encryption) -> None:
    user = roles.create("h10_change", "before-pw", encryption=encryption)
    bouncer = start()
    assert login_outcome(bouncer.connect, user=user, password="before-pw") == user
    roles.set_password(user, "after-pw", encryption)
    assert re.match(REFUSED_PASSWORD,
                    login_outcome(bouncer.connect, user=user, password="before-pw"))
    assert login_outcome(bouncer.connect, user=user, password="after-pw") == user


def test_user_in_users_section_but_not_in_auth_file_is_looked_up(roles, start) -> None:
    # The incident: a [users] entry (only there for its limits) made the user "known", so
    # auth_query was skipped and the empty password failed every login against an md5 HBA.
    user = roles.create("h10_limited", "limited-pw")
    bouncer = start(users={user: "max_user_connections=2 pool_mode=session"})
    assert login_outcome(bouncer.connect, user=user, password="limited-pw") == user


def test_auth_user_logs_in_with_its_auth_file_password_and_standard_users_still_work(
        roles, start) -> None:
    user = roles.create("h10_chain", "chain-pw")
    bouncer = start()
    for standard in STANDARD_PASSWORDS:  # auth_file answers these first
        assert login_outcome(bouncer.connect, user=standard) == standard
    assert login_outcome(bouncer.connect, user=user, password="chain-pw") == user


@pytest.mark.parametrize("role, refusal, logged", [
    ({"valid_until": "2000-01-01"}, REFUSED_PASSWORD, "no such user: {user}"),
    ({"login": False}, NO_SUCH_USER, "closing because: no such user"),
], ids=["expired", "nologin"])
def test_expired_or_non_login_role_is_refused(roles, start, role, refusal, logged) -> None:
    # CVE-2025-2291: the default query hands bouncer no password for a role past VALID UNTIL
    # (so the password fails, as PostgreSQL's own refusal would read) and no row at all for
    # one without LOGIN (so the user is unknown).  Either way no server login is tried.
    user = roles.create("h10_refused", "refused-pw", **role)
    bouncer = start()
    assert re.match(refusal, login_outcome(bouncer.connect, user=user, password="refused-pw"))
    bouncer.wait_for_log(rf"testdb/{user}@.* {logged.format(user=user)}")
    assert not re.search(rf"S-0x\w+: testdb/{user}@", bouncer.log_text())


def test_role_valid_until_a_future_date_logs_in(roles, start) -> None:
    user = roles.create("h10_valid", "valid-pw", valid_until="2999-01-01")
    assert login_outcome(start().connect, user=user, password="valid-pw") == user


@pytest.fixture
def canary(pg) -> Iterator[str]:
    table = unique_name("h10_canary")
    pg.psql(f"CREATE TABLE public.{table} (x int)", db="testdb")
    yield table
    pg.psql(f"DROP TABLE IF EXISTS public.{table}", db="testdb")


@pytest.mark.parametrize("template", [
    "x' OR rolname = 'scramuser",
    "x'; DROP TABLE public.{canary}; --",
    "x\"; DROP TABLE public.{canary}; SELECT '",
    "scramuser' --",
])
def test_user_name_with_quotes_and_semicolons_only_fails_to_log_in(pg, start, canary,
                                                                   template) -> None:
    hostile = template.format(canary=canary)
    bouncer = start()
    # Spliced into the SQL, the first name would fetch scramuser's secret for this password.
    outcome = login_outcome(bouncer.connect, user=hostile, password="scrampass")
    assert re.match(NO_SUCH_USER, outcome), outcome
    assert pg.psql(f"SELECT to_regclass('public.{canary}') IS NOT NULL", db="testdb") == "t"
    assert login_outcome(bouncer.connect, user="md5user") == "md5user"


def test_database_auth_user_overrides_the_global_one(pg, roles, start) -> None:
    user = roles.create("h10_dbuser", "dbuser-pw")
    databases = {"viaoverride": f"host=127.0.0.1 port={pg.port} dbname=testdb "
                                f"auth_user=scramuser"}
    bouncer = start(databases=databases, auth_user="h10_no_such_auth_user")
    assert login_outcome(bouncer.connect, user=user, password="dbuser-pw",
                         dbname="viaoverride") == user
    assert "refused" in login_outcome(bouncer.connect, user=user, password="dbuser-pw")


@pytest.fixture
def secrets_table(pg) -> Iterator[str]:
    """A password table that exists in ``bench`` only, readable by scramuser."""
    table = unique_name("h10_secrets")
    pg.psql(f"CREATE TABLE public.{table} (name text, secret text)", db="bench")
    yield table
    pg.psql(f"DROP TABLE IF EXISTS public.{table}", db="bench")


def test_database_auth_query_and_auth_dbname_override_the_global_ones(
        pg, roles, start, secrets_table) -> None:
    user = roles.create("h10_dbquery", "dbquery-pw")
    pg.psql(f"INSERT INTO public.{secrets_table} VALUES "
            f"({literal(user)}, {literal(roles.stored_secret(user))})", db="bench")
    query = f"SELECT name, secret FROM public.{secrets_table} WHERE name = $1"
    databases = {"viatable": f"host=127.0.0.1 port={pg.port} dbname=testdb auth_dbname=bench "
                             f"auth_query='{query}'"}
    # The global query never matches: only the database's own query can let the user in,
    # and its table exists in bench alone.
    bouncer = start(databases=databases,
                    auth_query="SELECT rolname, rolpassword FROM pg_catalog.pg_authid "
                               "WHERE rolname = $1 AND false")
    assert login_outcome(bouncer.connect, user=user, password="dbquery-pw",
                         dbname="viatable") == user
    assert re.match(NO_SUCH_USER,
                    login_outcome(bouncer.connect, user=user, password="dbquery-pw"))


def test_failing_auth_query_refuses_the_client_and_the_log_says_why(roles, start) -> None:
    user = roles.create("h10_broken", "broken-pw")
    bouncer = start(auth_query="SELECT rolname, no_such_column FROM pg_catalog.pg_authid "
                               "WHERE rolname = $1")
    outcome = login_outcome(bouncer.connect, user=user, password="broken-pw")
    assert re.match("refused: .*FATAL:  bouncer config error$", outcome), outcome
    assert "no_such_column" not in outcome
    bouncer.wait_for_log(r"auth_query .* failed: .*no_such_column")
    assert login_outcome(bouncer.connect, user="md5user") == "md5user"


# -- the auth database, refused as PgBouncer refuses it -------------------------------------------
CONFIG_ERROR = "refused: .*FATAL:  bouncer config error$"
RESERVED = 'cannot use the reserved "pgbouncer" database as an auth_dbname'


@pytest.mark.parametrize("dbname, databases", [
    ("pgbouncer", None),  # the admin console itself, without a global auth_dbname
    ("viaconsole", {"viaconsole": "host=127.0.0.1 port=@PGPORT@ dbname=testdb "
                                  "auth_dbname=pgbouncer"}),
], ids=["admin-console", "database-auth_dbname"])
def test_the_admin_console_as_the_auth_database_refuses_the_login(pg, roles, start, dbname,
                                                                  databases) -> None:
    user = roles.create("h10_reserved", "reserved-pw")
    databases = {name: line.replace("@PGPORT@", str(pg.port))
                 for name, line in (databases or {}).items()}
    bouncer = start(databases=databases, stats_users=user)
    outcome = login_outcome(bouncer.connect, user=user, password="reserved-pw", dbname=dbname)
    assert re.match(CONFIG_ERROR, outcome), outcome
    bouncer.wait_for_log(RESERVED)


def test_a_global_auth_dbname_naming_the_admin_console_is_refused_by_reload(start) -> None:
    bouncer = start()
    bouncer.write_ini(bouncer.ini_text.replace("[pgbouncer]\n",
                                               "[pgbouncer]\nauth_dbname = pgbouncer\n", 1))
    bouncer.reload()
    bouncer.wait_for_log(f"config reload failed.*{RESERVED}")


def test_an_auth_dbname_set_to_no_database_refuses_the_login(pg, roles, start) -> None:
    # A database's own auth_user with the global auth_dbname: only a login can tell the
    # database is missing (a global auth_user would have made the SET itself fail).
    user = roles.create("h10_nowhere", "nowhere-pw")
    databases = {"viadb": f"host=127.0.0.1 port={pg.port} dbname=testdb auth_user=scramuser"}
    bouncer = start(databases=databases, auth_user=None)
    bouncer.admin("SET auth_dbname = 'h10_no_such_db'")
    outcome = login_outcome(bouncer.connect, user=user, password="nowhere-pw", dbname="viadb")
    assert re.match(CONFIG_ERROR, outcome), outcome
    bouncer.wait_for_log('authentication database "h10_no_such_db" is not configured.')


def test_a_disabled_auth_database_refuses_the_login(roles, start) -> None:
    user = roles.create("h10_disabled", "disabled-pw")
    bouncer = start(auth_dbname="bench")
    assert login_outcome(bouncer.connect, user=user, password="disabled-pw") == user
    bouncer.admin("DISABLE bench")
    outcome = login_outcome(bouncer.connect, user=user, password="disabled-pw")
    assert re.match('refused: .*FATAL:  authentication database "bench" is disabled$',
                    outcome), outcome


# -- the admin console ---------------------------------------------------------------------------
def test_an_admin_console_user_missing_from_auth_file_is_looked_up(roles, start) -> None:
    # In the global auth_dbname, as PgBouncer does; the console has no database of its own.
    user = roles.create("h10_console", "console-pw")
    bouncer = start(auth_dbname="bench", stats_users=user)
    assert bouncer.admin("SHOW VERSION", user=user, password="console-pw")
    outcome = login_outcome(bouncer.connect, user=user, password="wrong", dbname="pgbouncer")
    assert re.match(REFUSED_PASSWORD, outcome), outcome


def test_no_password_or_secret_in_the_log_at_any_verbosity(pg, roles, start) -> None:
    passwords = {"md5": "Md5-Log-Pw-4471", "scram-sha-256": "Scram-Log-Pw-8812"}
    users = {encryption: roles.create("h10_log", password, encryption=encryption)
             for encryption, password in passwords.items()}
    bouncer = start(flags=["-v", "-v"], users={users["md5"]: "pool_mode=session"})
    for encryption, user in users.items():
        assert login_outcome(bouncer.connect, user=user, password=passwords[encryption]) == user
        assert "refused" in login_outcome(bouncer.connect, user=user, password="Wrong-Guess-5")
    for standard in STANDARD_PASSWORDS:
        assert login_outcome(bouncer.connect, user=standard) == standard
    log = bouncer.log_text() + _read(os.path.join(bouncer.workdir, "bouncer.log"))
    assert "DEBUG" in log or "NOISE" in log, "the log is not verbose"
    forbidden = [*passwords.values(), "Wrong-Guess-5", *STANDARD_PASSWORDS.values()]
    for user in users.values():
        forbidden += _secret_parts(roles.stored_secret(user))
    leaked = [secret for secret in forbidden if secret in log]
    assert not leaked


def _secret_parts(secret: str) -> List[str]:
    """An md5 secret's hash, a SCRAM secret's salt, StoredKey and ServerKey."""
    if secret.startswith("md5"):
        return [secret[3:]]
    return re.split(r"[$:]", secret)[2:]


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""
