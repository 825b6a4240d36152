"""Authentication on both sides of the pooler, as a PgBouncer user sees it.

Client side: every ``auth_type`` against auth_file entries holding a plain password, an md5
secret or a SCRAM secret.  These clients use a database with a forced server user
(``trustuser``, trusted by PostgreSQL), so only the pooler's own check is under test.

Server side: the pooler logs in to PostgreSQL with trust, md5 and SCRAM, from a plain password,
an md5 secret, or (passthrough) the very SCRAM secret PostgreSQL stores.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator

import psycopg2
import pytest

from bouncer.testing.fixtures import STARTED
from tests.support import pgwire
from bouncer.testing.process import BouncerProcess
from bouncer.testing.ini import common_ini
from tests.support.observe import backend_pid, scalar
from tests.support.passwords import md5_secret, scram_secret
from bouncer.testing.pgcluster import STANDARD_PASSWORDS

PASSWORD = "s3cret"
#: auth_file user -> secret; the user name says which kind of secret it holds.
SECRET_KINDS = {"plainuser": PASSWORD,
                "md5secretuser": md5_secret("md5secretuser", PASSWORD),
                "scramsecretuser": scram_secret(PASSWORD)}
FORCED_DB = "forced"

#: The authentication request each auth_type sends first, per kind of stored secret.
AUTH_REQUESTS = {
    "trust": dict.fromkeys(SECRET_KINDS, pgwire.AUTH_OK),
    "any": dict.fromkeys(SECRET_KINDS, pgwire.AUTH_OK),
    "plain": dict.fromkeys(SECRET_KINDS, pgwire.AUTH_CLEARTEXT),
    # md5 upgrades to SCRAM when the stored secret is a SCRAM secret.
    "md5": {"plainuser": pgwire.AUTH_MD5, "md5secretuser": pgwire.AUTH_MD5,
            "scramsecretuser": pgwire.AUTH_SASL},
    "scram-sha-256": dict.fromkeys(SECRET_KINDS, pgwire.AUTH_SASL),
}
PASSWORD_CHECKING = ("plain", "md5", "scram-sha-256")


def refusal(user: str, auth_type: str = "md5") -> str:
    """What a refused client is told: PgBouncer's words after a SCRAM exchange, PostgreSQL's
    after a password or md5 one."""
    if AUTH_REQUESTS[auth_type].get(user, pgwire.AUTH_SASL if auth_type == "scram-sha-256"
                                     else None) == pgwire.AUTH_SASL:
        return "SASL authentication failed"
    return f'password authentication failed for user "{user}"'


@pytest.fixture(scope="module")
def client_auth_bouncers(pg, tmp_path_factory) -> Iterator[Callable[[str], BouncerProcess]]:
    """One bouncer per auth_type for the whole module (these tests only log in and out)."""
    started: Dict[str, BouncerProcess] = {}

    def bouncer_for(auth_type: str) -> BouncerProcess:
        if auth_type not in started:
            forced = f"host=127.0.0.1 port={pg.port} dbname=testdb user=trustuser"
            ini = common_ini(pg, auth_type=auth_type, databases={FORCED_DB: forced})
            started[auth_type] = BouncerProcess(tmp_path_factory.mktemp("auth"), ini,
                                                SECRET_KINDS)
        return started[auth_type]

    yield bouncer_for
    for proc in started.values():
        proc.stop()


@pytest.fixture
def client_auth(request, client_auth_bouncers):
    """``client_auth(auth_type)``: a bouncer whose FORCED_DB logs in to PostgreSQL as trustuser.

    Registered with the test so a failure shows that bouncer's output.
    """
    def bouncer_for(auth_type: str) -> BouncerProcess:
        proc = client_auth_bouncers(auth_type)
        request.node.stash.setdefault(STARTED, []).append(proc)
        return proc
    return bouncer_for


def login_outcome(bouncer, user: str, password: str, dbname: str = FORCED_DB) -> str:
    """``current_user`` after logging in, or the error's message the client got (without its
    DETAIL and HINT lines)."""
    try:
        conn = bouncer.connect(user=user, password=password, dbname=dbname)
    except psycopg2.OperationalError as err:
        return str(err).split("FATAL:", 1)[-1].strip().splitlines()[0]
    try:
        return scalar(conn, "SELECT current_user")
    finally:
        conn.close()


def first_auth_request(bouncer, user: str, dbname: str = FORCED_DB) -> int:
    sock = pgwire.connect(bouncer.host, bouncer.port)
    with sock:
        sock.sendall(pgwire.startup({"user": user, "database": dbname}))
        kind, payload = pgwire.read_message(sock)
    assert kind == b"R", pgwire.error_fields(payload)
    return pgwire.auth_code(payload)


# -- client side ----------------------------------------------------------------------------------
@pytest.mark.parametrize("auth_type", sorted(AUTH_REQUESTS))
def test_auth_type_asks_for_the_expected_method(client_auth, auth_type: str) -> None:
    bouncer = client_auth(auth_type)
    asked = {user: first_auth_request(bouncer, user) for user in SECRET_KINDS}
    assert asked == AUTH_REQUESTS[auth_type]


@pytest.mark.parametrize("auth_type", sorted(AUTH_REQUESTS))
def test_right_password_logs_in_with_every_secret_kind(client_auth, auth_type: str) -> None:
    bouncer = client_auth(auth_type)
    outcomes = {user: login_outcome(bouncer, user, PASSWORD) for user in SECRET_KINDS}
    expected = dict.fromkeys(SECRET_KINDS, "trustuser")
    if auth_type == "scram-sha-256":
        # An md5 secret cannot verify a SCRAM proof: PgBouncer refuses that user.
        expected["md5secretuser"] = refusal("md5secretuser", auth_type)
    assert outcomes == expected


@pytest.mark.parametrize("auth_type", PASSWORD_CHECKING)
def test_wrong_password_is_refused_with_pgbouncers_wording(client_auth, auth_type: str) -> None:
    bouncer = client_auth(auth_type)
    outcomes = {user: login_outcome(bouncer, user, "wrong") for user in SECRET_KINDS}
    assert outcomes == {user: refusal(user, auth_type) for user in SECRET_KINDS}


@pytest.mark.parametrize("auth_type", ["trust", "any"])
def test_trust_and_any_ignore_the_password(client_auth, auth_type: str) -> None:
    bouncer = client_auth(auth_type)
    assert login_outcome(bouncer, "plainuser", "anything at all") == "trustuser"


@pytest.mark.parametrize("auth_type, user", [("plain", "plainuser"), ("md5", "md5secretuser")])
def test_wrong_password_error_carries_sqlstate_28p01(client_auth, auth_type: str,
                                                    user: str) -> None:
    bouncer = client_auth(auth_type)
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(pgwire.startup({"user": user, "database": FORCED_DB}))
        error = pgwire.first_error(pgwire.login(sock, user, "wrong"))
    assert error is not None
    assert (error["S"], error["C"], error["M"]) == ("FATAL", "28P01", refusal(user))


@pytest.mark.parametrize("auth_type", PASSWORD_CHECKING)
def test_unknown_user_looks_like_a_wrong_password(client_auth, auth_type: str) -> None:
    assert login_outcome(client_auth(auth_type), "nobody", PASSWORD) == refusal("nobody",
                                                                                auth_type)


def test_trust_refuses_a_user_missing_from_auth_file(client_auth) -> None:
    with pytest.raises(psycopg2.OperationalError):
        client_auth("trust").connect(user="nobody", password="", dbname="testdb")


def test_trust_refuses_a_user_missing_from_auth_file_even_with_forced_user(client_auth) -> None:
    with pytest.raises(psycopg2.OperationalError):
        client_auth("trust").connect(user="nobody", password="", dbname=FORCED_DB)


def test_any_admits_any_user_name_as_the_forced_user(client_auth) -> None:
    assert login_outcome(client_auth("any"), "nobody", "") == "trustuser"


#: SASLprep (RFC 4013), which libpq, PostgreSQL and PgBouncer apply to SCRAM passwords, maps
#: the no-break space to a plain space: PostgreSQL stores the secret of "pass word".
NBSP_PASSWORD = "pass\u00a0word"


@pytest.mark.parametrize("auth_type, stored", [
    ("scram-sha-256", NBSP_PASSWORD),          # the proof libpq computes after SASLprep
    ("plain", scram_secret("pass word")),      # a cleartext password checked against a secret
], ids=["scram-vs-plain-entry", "plain-vs-scram-secret"])
def test_scram_passwords_go_through_saslprep(pg, bouncer_factory, auth_type: str,
                                             stored: str) -> None:
    forced = f"host=127.0.0.1 port={pg.port} dbname=testdb user=trustuser"
    bouncer = bouncer_factory(common_ini(pg, auth_type=auth_type, databases={FORCED_DB: forced}),
                              {"nbspuser": stored})
    assert login_outcome(bouncer, "nbspuser", NBSP_PASSWORD) == "trustuser"


def test_unknown_database_is_refused(client_auth) -> None:
    outcome = login_outcome(client_auth("md5"), "plainuser", PASSWORD, dbname="nosuchdb")
    assert outcome == "no such database: nosuchdb"


# -- server side --------------------------------------------------------------------------------
def scram_secret_of(pg, role: str) -> str:
    return pg.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")


def two_concurrent_pids(bouncer, user: str, password: str) -> set:
    """Two clients inside transactions at once: the pool must log in two servers."""
    first = bouncer.connect(user=user, password=password)
    second = bouncer.connect(user=user, password=password)
    try:
        assert scalar(first, "SELECT current_user") == user
        return {backend_pid(first), backend_pid(second)}
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("user, stored, password", [
    ("trustuser", "unused", "unused"),                          # server: trust
    ("md5user", "md5pass", "md5pass"),                          # server: md5, plain in file
    ("md5user", md5_secret("md5user", "md5pass"), "md5pass"),   # server: md5, md5 secret
    ("scramuser", "scrampass", "scrampass"),                    # server: SCRAM, plain in file
], ids=["trust", "md5-plain", "md5-secret", "scram-plain"])
def test_server_login_methods(pg, bouncer_factory, user: str, stored: str,
                              password: str) -> None:
    bouncer = bouncer_factory(common_ini(pg, auth_type="md5", pool_mode="transaction"),
                              {user: stored})
    assert len(two_concurrent_pids(bouncer, user, password)) == 2


@pytest.mark.parametrize("auth_type", ["scram-sha-256", "md5"])
def test_scram_passthrough_with_the_servers_own_secret(pg, bouncer_factory,
                                                       auth_type: str) -> None:
    stored = scram_secret_of(pg, "scramuser")
    assert stored.startswith("SCRAM-SHA-256$")
    bouncer = bouncer_factory(common_ini(pg, auth_type=auth_type, pool_mode="transaction"),
                              {"scramuser": stored})
    assert len(two_concurrent_pids(bouncer, "scramuser", "scrampass")) == 2


def test_scram_passthrough_with_a_different_salt_is_refused_by_the_server(
        pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, auth_type="scram-sha-256"),
                              {"scramuser": scram_secret("scrampass")})
    with pytest.raises(psycopg2.OperationalError, match=refusal("scramuser")):
        bouncer.connect(user="scramuser")


@pytest.mark.parametrize("stored, outcome", [
    (STANDARD_PASSWORDS["md5user"], "md5user"),
    (md5_secret("md5user", STANDARD_PASSWORDS["md5user"]), "md5user"),
    ("notthepassword", 'password authentication failed for user "md5user"'),
])
def test_a_forced_user_without_password_logs_in_with_its_auth_file_secret(
        pg, bouncer_factory, stored: str, outcome: str) -> None:
    forced = f"host=127.0.0.1 port={pg.port} dbname=testdb user=md5user"
    bouncer = bouncer_factory(common_ini(pg, auth_type="trust", databases={FORCED_DB: forced}),
                              {"md5user": stored, "trustuser": ""})
    assert login_outcome(bouncer, "trustuser", "", dbname=FORCED_DB) == outcome


def test_server_refusal_reaches_the_client(pg, bouncer_factory) -> None:
    # The pooler accepts the password from its auth_file; PostgreSQL does not.
    bouncer = bouncer_factory(common_ini(pg), {"md5user": "notthepassword"})
    with pytest.raises(psycopg2.OperationalError, match=refusal("md5user")):
        bouncer.connect(user="md5user", password="notthepassword")
    assert bouncer.alive


def test_forced_user_with_password_in_database_entry(pg, bouncer_factory) -> None:
    forced = f"host=127.0.0.1 port={pg.port} dbname=testdb user=scramuser password=scrampass"
    bouncer = bouncer_factory(common_ini(pg, databases={"asscram": forced}))
    assert login_outcome(bouncer, "md5user", "md5pass", dbname="asscram") == "scramuser"


# -- with psql ------------------------------------------------------------------------------------
@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256"])
def test_psql_logs_in_through_md5_and_scram(pg, bouncer_factory, auth_type: str) -> None:
    bouncer = bouncer_factory(common_ini(pg, auth_type=auth_type))
    outcomes: Dict[str, str] = {}
    for user in ("md5user", "scramuser"):
        result = bouncer.psql(["-At", "-c", "SELECT current_user"], user=user)
        outcomes[user] = result.stdout.strip() or result.stderr
    assert outcomes == {"md5user": "md5user", "scramuser": "scramuser"}
    wrong = bouncer.psql("SELECT 1", user="md5user", password="wrong")
    assert wrong.returncode == 2 and refusal("md5user", auth_type) in wrong.stderr
