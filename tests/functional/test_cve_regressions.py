"""Regression tests for PgBouncer's security fixes, against bouncer: SCRAM messages of hostile
sizes and lengths from a client and from a server (PgBouncer 1.25.2's CVE-2026-6664 and
CVE-2026-6665), KILL_CLIENT refused to stats_users (CVE-2026-6667), and a server's
ErrorResponse without a usable SQLSTATE (CVE-2026-6666).  In every case the peer gets a clean
error and the daemon serves the next client.  (auth_query's CVE-2025-2291 and CVE-2025-12819
are in test_auth_query.py and test_auth_query_isolation.py.)"""
from __future__ import annotations

import base64
import struct
from typing import Callable, Dict, Iterator, List

import psycopg2
import pytest

from tests.functional.pgroles import login_outcome
from tests.support import pgwire
from tests.support.fakeserver import (AUTH_SASL_CONTINUE, FakeConnection, FakeServer,
                                      client_nonce, parse_sasl_initial_response)
from bouncer.testing.ini import common_ini

SCRAM = b"SCRAM-SHA-256"
STATS_USER = "md5user"


def sasl_initial_response(client_first: bytes) -> bytes:
    return pgwire.typed(b"p", SCRAM + b"\0" + struct.pack("!i", len(client_first)) + client_first)


def assert_serves_the_next_client(bouncer) -> None:
    assert login_outcome(bouncer.connect, user="scramuser") == "scramuser"


# -- SCRAM from a hostile client ---------------------------------------------------------------

@pytest.fixture
def scram_bouncer(pg, bouncer_factory):
    return bouncer_factory(common_ini(pg, auth_type="scram-sha-256", client_login_timeout=5))


def scram_exchange(bouncer, client_first: bytes,
                   client_final: Callable[[bytes], bytes] = None) -> List[pgwire.Message]:
    """Start a SCRAM login as scramuser with *client_first*; if the server answers, send
    ``client_final(server_first)``.  Returns what bouncer sent after the SASL request."""
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(pgwire.startup({"user": "scramuser", "database": "testdb"}))
        kind, payload = pgwire.read_message(sock)
        assert (kind, pgwire.auth_code(payload)) == (b"R", pgwire.AUTH_SASL)
        sock.sendall(sasl_initial_response(client_first))
        replies = [pgwire.read_message(sock)]
        kind, payload = replies[0]
        if kind == b"R" and client_final is not None:
            assert pgwire.auth_code(payload) == AUTH_SASL_CONTINUE
            sock.sendall(pgwire.typed(b"p", client_final(payload[4:])))
            replies.append(pgwire.read_message(sock))
        assert pgwire.closed_by_peer(sock, 5)
        return replies


def fatal_of(replies: List[pgwire.Message]) -> Dict[str, str]:
    kind, payload = replies[-1]
    assert kind == b"E", f"expected an ErrorResponse, got {replies}"
    fields = pgwire.error_fields(payload)
    assert fields["S"] == "FATAL"
    return fields


def final_with(proof: bytes, tail: bytes = b"") -> Callable[[bytes], bytes]:
    """A client-final-message for the server's nonce, with *proof* and *tail* as they are."""
    def build(server_first: bytes) -> bytes:
        nonce = server_first.split(b",")[0][2:]
        return b"c=biws,r=" + nonce + tail + b",p=" + proof
    return build


@pytest.mark.parametrize("client_first", [
    b"n,,n=,r=" + b"N" * 60000,
    b"n,,n=,r=abc," + b"x=" + b"y" * 60000,
    b"n,,n=" + b"u" * 60000 + b",r=abc",
    b"n,,n=,r=abc" + b"," * 60000,
], ids=["nonce", "extension", "username", "commas"])
def test_a_client_first_message_of_hostile_size_is_refused_cleanly(scram_bouncer,
                                                                  client_first) -> None:
    fields = fatal_of(scram_exchange(scram_bouncer, client_first))
    assert fields["C"] == "08P01" and "SCRAM" in fields["M"], fields
    assert_serves_the_next_client(scram_bouncer)


def test_a_sasl_message_past_the_packet_limit_is_refused_cleanly(scram_bouncer) -> None:
    fields = fatal_of(scram_exchange(scram_bouncer, b"n,,n=,r=" + b"N" * 200_000))
    assert fields["C"] == "08P01", fields
    assert_serves_the_next_client(scram_bouncer)


@pytest.mark.parametrize("length", [-2, -16, 2**31 - 1, 12], ids=["minus-2", "0xfffffff0",
                                                                     "int-max", "one-past"])
def test_a_sasl_initial_response_with_a_lying_length_is_refused_cleanly(scram_bouncer,
                                                                        length) -> None:
    # CVE-2026-6664: PgBouncer's bounds check of this length overflowed.
    with pgwire.connect(scram_bouncer.host, scram_bouncer.port) as sock:
        sock.sendall(pgwire.startup({"user": "scramuser", "database": "testdb"}))
        pgwire.read_message(sock)  # the SASL request
        sock.sendall(pgwire.typed(b"p", SCRAM + b"\0" + struct.pack("!i", length)
                                  + b"n,,n=,r=abc"))
        fields = fatal_of([pgwire.read_message(sock)])
    assert fields["C"] == "08P01", fields
    assert_serves_the_next_client(scram_bouncer)


@pytest.mark.parametrize("client_final", [
    final_with(base64.b64encode(b"\1" * 45000)),
    final_with(b"A" * 60001),
    final_with(base64.b64encode(b"\1" * 32), tail=b"N" * 60000),
    final_with(base64.b64encode(b"\1" * 32), tail=b",x=" + b"y" * 60000),
], ids=["proof", "proof-not-base64", "nonce", "extension"])
def test_a_client_final_message_of_hostile_size_is_refused_cleanly(scram_bouncer,
                                                                  client_final) -> None:
    fields = fatal_of(scram_exchange(scram_bouncer, b"n,,n=,r=clientnonce", client_final))
    assert fields["C"] == "08P01" and "SCRAM" in fields["M"], fields
    assert_serves_the_next_client(scram_bouncer)


def test_a_wrong_proof_of_the_right_size_is_a_wrong_password(scram_bouncer) -> None:
    replies = scram_exchange(scram_bouncer, b"n,,n=,r=clientnonce",
                             final_with(base64.b64encode(b"\1" * 32)))
    assert fatal_of(replies)["C"] == "28P01"


# -- a hostile server --------------------------------------------------------------------------

@pytest.fixture
def hostile_server() -> Iterator[Callable]:
    """``hostile_server(script)``: a FakeServer running *script*, closed at teardown."""
    servers: List[FakeServer] = []

    def start(script):
        servers.append(FakeServer(script))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


@pytest.fixture
def via(pg, bouncer_factory):
    """``via(server, **settings)``: a bouncer whose database ``fake`` is *server*."""
    def start(server, **settings):
        settings.setdefault("client_login_timeout", 5)
        return bouncer_factory(common_ini(
            pg, databases={"fake": f"host=127.0.0.1 port={server.port} dbname=fake"},
            **settings))
    return start


def scram_server_first(transform: Callable[[bytes], bytes]) -> Callable[[FakeConnection], None]:
    """A script asking for SCRAM and answering ``transform(client nonce)`` as server-first."""
    def script(conn: FakeConnection) -> None:
        conn.auth_request(pgwire.AUTH_SASL, SCRAM + b"\0\0")
        _, payload = conn.read()
        nonce = client_nonce(parse_sasl_initial_response(payload))
        conn.auth_request(AUTH_SASL_CONTINUE, transform(nonce))
        conn.read()  # what bouncer answers, if anything, before it hangs up
    return script


SALT = base64.b64encode(b"s" * 16)


@pytest.mark.parametrize("server_first", [
    lambda nonce: b"r=" + nonce + b"N" * 100_000 + b",s=" + SALT + b",i=4096",
    lambda nonce: b"r=" + nonce + b"N,s=" + base64.b64encode(b"s" * 200_000) + b",i=4096",
    lambda nonce: b"r=" + nonce + b"N,s=" + SALT + b",i=4096,x=" + b"y" * 100_000,
    lambda nonce: b"r=" + nonce + b"N,s=" + SALT + b",i=" + b"9" * 1000,
], ids=["nonce", "salt", "extension", "iterations"])
def test_a_server_first_message_of_hostile_size_fails_the_login_cleanly(
        hostile_server, via, server_first) -> None:
    # PgBouncer 1.25.2: a long server nonce overflowed the client-final-message buffer.
    bouncer = via(hostile_server(scram_server_first(server_first)))
    outcome = login_outcome(bouncer.connect, dbname="fake")
    assert outcome.startswith("refused:") and "SCRAM" in outcome, outcome
    assert_serves_the_next_client(bouncer)


def login_error(fields: Dict[str, str], terminated: bool = True):
    def script(conn: FakeConnection) -> None:
        conn.error(fields, terminated)
    return script


@pytest.mark.parametrize("fields", [
    {"S": "FATAL", "M": "no sqlstate here"},
    {"S": "FATAL", "C": "", "M": "an empty sqlstate"},
    {"M": "neither severity nor sqlstate"},
    {},
], ids=["missing", "empty", "bare", "no-fields"])
def test_a_login_error_without_a_usable_sqlstate_reaches_the_client(hostile_server, via,
                                                                    fields) -> None:
    # CVE-2026-6666: PgBouncer dereferenced the missing SQLSTATE of a login error.
    bouncer = via(hostile_server(login_error(fields)))
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(pgwire.startup({"user": "md5user", "database": "fake"}))
        error = pgwire.first_error(pgwire.login(sock, "md5user", "md5pass"))
    assert error is not None and error["S"] == "FATAL"
    assert error["M"] == fields.get("M", "server login failed")
    assert error["C"] == "08006"  # bouncer's own code for a failed server login
    assert bouncer.alive
    assert_serves_the_next_client(bouncer)


def test_a_malformed_login_error_fails_the_login_at_once(hostile_server, via) -> None:
    # Not the client_login_timeout: the server's login is refused, not left hanging.
    bouncer = via(hostile_server(login_error({"S": "FATAL", "M": "cut"}, terminated=False)),
                  client_login_timeout=30)
    for _ in range(2):  # the pool is not left waiting for a login that died
        with pytest.raises(psycopg2.OperationalError, match="malformed message during login"):
            bouncer.connect(dbname="fake", connect_timeout=10)
    assert "Traceback" not in bouncer.log_text()
    assert_serves_the_next_client(bouncer)


def query_error(fields: Dict[str, str]):
    """A script that logs bouncer in, then answers every Query with *fields* as an error."""
    def script(conn: FakeConnection) -> None:
        conn.welcome()
        while True:
            kind, _ = conn.read()
            if kind == b"X":
                return
            conn.error(fields)
            conn.ready()
    return script


@pytest.mark.parametrize("fields", [
    {"S": "ERROR", "M": "no sqlstate here"},
    {"S": "ERROR", "C": "", "M": "an empty sqlstate"},
], ids=["missing", "empty"])
@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_a_query_error_without_a_usable_sqlstate_reaches_the_client(hostile_server, via,
                                                                    fields, pool_mode) -> None:
    bouncer = via(hostile_server(query_error(fields)), pool_mode=pool_mode)
    sock, _ = pgwire.open_session(bouncer.host, bouncer.port, "md5user", "md5pass",
                                  database="fake")
    with sock:
        for _ in range(2):  # the session goes on after the error
            messages = pgwire.run_query(sock, "SELECT 1")
            assert pgwire.first_error(messages)["M"] == fields["M"]
            assert messages[-1] == (b"Z", b"I")
    assert_serves_the_next_client(bouncer)


# -- KILL_CLIENT -------------------------------------------------------------------------------

def test_kill_client_is_refused_to_stats_users_and_the_client_lives(pg, bouncer_factory) -> None:
    # CVE-2026-6667: PgBouncer's KILL_CLIENT forgot to ask for admin rights.
    bouncer = bouncer_factory(common_ini(pg, admin_users="scramuser", stats_users=STATS_USER))
    victim = bouncer.connect(user="scramuser", application_name="h12_victim")
    try:
        victim_id = client_id(bouncer, "h12_victim")
        with pytest.raises(psycopg2.Error, match="admin access needed") as refused:
            bouncer.admin(f"KILL_CLIENT {victim_id}", user=STATS_USER)
        assert refused.value.pgcode == "42501"
        with victim.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        assert client_id(bouncer, "h12_victim") == victim_id
    finally:
        victim.close()


def client_id(bouncer, application_name: str) -> int:
    """SHOW CLIENTS' id of the client with *application_name*."""
    conn = bouncer.connect(dbname="pgbouncer", user="scramuser")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SHOW CLIENTS")
            names = [column.name for column in cur.description]
            return next(row[names.index("id")] for row in cur.fetchall()
                        if row[names.index("application_name")] == application_name)
    finally:
        conn.close()
