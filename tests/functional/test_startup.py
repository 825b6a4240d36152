"""The client's first bytes: startup parameters, protocol negotiation, SSL/GSS requests, unix
socket clients, and hostile startup packets sent over a real socket."""
from __future__ import annotations

import re
import socket
import struct
from typing import Dict, List

import psycopg2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support import pgwire
from bouncer.testing.ini import common_ini
from tests.support.observe import scalar
from tests.support.passwords import md5_secret, scram_secret

USER, PASSWORD = "md5user", "md5pass"
PROTOCOL_3_2 = (3 << 16) | 2


@pytest.fixture
def bouncer(pg, bouncer_factory):
    return bouncer_factory(common_ini(pg, pool_mode="transaction", default_pool_size=1,
                                      client_login_timeout=5))


def open_session(bouncer, params: Dict[str, str],
                 protocol: int = pgwire.PROTOCOL_3_0) -> tuple:
    """Log in over a raw socket; returns (socket, messages up to ReadyForQuery)."""
    return pgwire.open_session(bouncer.host, bouncer.port, USER, PASSWORD, params=params,
                               protocol=protocol)


def show(sock: socket.socket, name: str) -> str:
    return pgwire.data_rows(pgwire.run_query(sock, f"SHOW {name}"))[0][0]


def refusal_of(bouncer, params: Dict[str, str]) -> Dict[str, str]:
    """The ErrorResponse a startup packet with ``params`` gets (the connection then closes)."""
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(pgwire.startup(params))
        error = pgwire.first_error(pgwire.read_until(sock, b"EZ"))
        assert pgwire.closed_by_peer(sock, 2)
    assert error is not None
    return error


# -- startup parameters -------------------------------------------------------------------------
TRACKED = {"TimeZone": "Asia/Tokyo", "DateStyle": "SQL, DMY", "application_name": "startup-app",
           "client_encoding": "LATIN1"}


def test_tracked_startup_parameters_are_reported_and_set(bouncer) -> None:
    sock, messages = open_session(bouncer, TRACKED)
    with sock:
        reported = pgwire.parameter_status(messages)
        assert {name: reported.get(name) for name in TRACKED} == TRACKED
        assert {name: show(sock, name) for name in TRACKED} == TRACKED


def test_lower_case_startup_parameter_names_as_libpq_sends_them(bouncer) -> None:
    # libpq sends PGTZ and PGDATESTYLE as "timezone" and "datestyle".
    sock, _ = open_session(bouncer, {"timezone": "America/Lima", "datestyle": "German"})
    with sock:
        assert (show(sock, "TimeZone"), show(sock, "DateStyle")) == ("America/Lima",
                                                                   "German, DMY")


def test_each_client_keeps_its_own_parameters_on_a_shared_server(bouncer) -> None:
    tokyo, _ = open_session(bouncer, {"TimeZone": "Asia/Tokyo"})
    plain, plain_welcome = open_session(bouncer, {})
    with tokyo, plain:
        default_zone = pgwire.parameter_status(plain_welcome)["TimeZone"]
        assert default_zone != "Asia/Tokyo"
        pid = "SELECT pg_backend_pid()"
        assert pgwire.data_rows(pgwire.run_query(tokyo, pid)) == \
            pgwire.data_rows(pgwire.run_query(plain, pid))  # pool_size=1: one server
        assert [show(tokyo, "TimeZone"), show(plain, "TimeZone"),
                show(tokyo, "TimeZone")] == ["Asia/Tokyo", default_zone, "Asia/Tokyo"]


def test_psycopg2_client_encoding_and_application_name(bouncer) -> None:
    conn = bouncer.connect(client_encoding="LATIN1", application_name="pyapp")
    try:
        conn.autocommit = True
        assert conn.get_parameter_status("application_name") == "pyapp"
        assert (scalar(conn, "SHOW client_encoding"),
                scalar(conn, "SHOW application_name")) == ("LATIN1", "pyapp")
    finally:
        conn.close()


def test_unknown_startup_parameter_is_refused(bouncer) -> None:
    error = refusal_of(bouncer, {"user": USER, "database": "testdb", "geqo": "off"})
    assert (error["S"], error["C"], error["M"]) == ("FATAL", "08P01",
                                                    "unsupported startup parameter: geqo")


def test_options_settings_of_tracked_parameters_apply_on_every_server(bouncer) -> None:
    # libpq's PGOPTIONS; in transaction mode each new server gets them too (pool_size=1 here,
    # so the other client's server is the same one, set back and forth).
    # (Not DateStyle: psycopg2 sets it back to ISO after logging in.)
    conn = bouncer.connect(options=r"-c timezone=Europe/Lisbon --application_name=from\ options")
    other = bouncer.connect()
    try:
        conn.autocommit = other.autocommit = True
        assert scalar(other, "SHOW TimeZone") != "Europe/Lisbon"
        assert (scalar(conn, "SHOW TimeZone"), scalar(conn, "SHOW application_name")) == \
            ("Europe/Lisbon", "from options")
    finally:
        conn.close()
        other.close()


@pytest.mark.parametrize("options, message", [
    ("-c geqo=off", "unsupported startup parameter in options: geqo"),
    ("-d 5", "only '-c config=val' and '--config=val' are allowed"),
])
def test_options_that_cannot_be_kept_are_refused(bouncer, options: str, message: str) -> None:
    with pytest.raises(psycopg2.OperationalError, match=message):
        bouncer.connect(options=options)


def test_ignore_startup_parameters_lets_the_client_in(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, ignore_startup_parameters="extra_float_digits, "
                                                                       "options"))
    conn = bouncer.connect(options="-c geqo=off")
    try:
        assert scalar(conn, "SHOW geqo") == "on"  # accepted, and ignored as PgBouncer does
    finally:
        conn.close()


def test_missing_user_is_refused(bouncer) -> None:
    error = refusal_of(bouncer, {"database": "testdb"})
    assert (error["S"], error["M"]) == ("FATAL", "no username supplied")


# -- protocol version negotiation ---------------------------------------------------------------
def negotiation(messages: List[pgwire.Message]) -> tuple:
    """(newest minor version, unrecognised options) of the NegotiateProtocolVersion message."""
    payload = next(payload for kind, payload in messages if kind == b"v")
    minor, count = struct.unpack("!II", payload[:8])
    options = [name.decode() for name in payload[8:].split(b"\0")[:count]]
    return minor, options


def test_newer_minor_version_gets_negotiate_protocol_version(bouncer) -> None:
    sock, messages = open_session(bouncer, {}, protocol=PROTOCOL_3_2)
    with sock:
        assert negotiation(messages) == (0, [])
        assert messages[0][0] == b"v"  # before any authentication request
        assert pgwire.data_rows(pgwire.run_query(sock, "SELECT 1")) == [["1"]]


def test_unknown_protocol_options_are_named_in_the_negotiation(bouncer) -> None:
    sock, messages = open_session(bouncer, {"_pq_.made_up": "on", "_pq_.other": "1"})
    with sock:
        assert negotiation(messages) == (0, ["_pq_.made_up", "_pq_.other"])


def test_protocol_2_is_refused_with_an_error(bouncer) -> None:
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(pgwire.startup({"user": USER, "database": "testdb"}, protocol=2 << 16))
        error = pgwire.first_error(pgwire.read_until(sock, b"E"))
        assert pgwire.closed_by_peer(sock, 2)
    assert error is not None and error["S"] == "FATAL"


# -- SSLRequest and GSSENCRequest ---------------------------------------------------------------
def test_ssl_and_gss_requests_are_answered_n_then_login_proceeds(bouncer) -> None:
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(pgwire.packet(pgwire.GSSENC_REQUEST))
        assert pgwire.recv_exactly(sock, 1) == b"N"
        sock.sendall(pgwire.packet(pgwire.SSL_REQUEST))
        assert pgwire.recv_exactly(sock, 1) == b"N"
        sock.sendall(pgwire.startup({"user": USER, "database": "testdb"}))
        assert pgwire.login(sock, USER, PASSWORD)[-1][0] == b"Z"


def test_libpq_prefers_and_then_goes_without_tls(bouncer) -> None:
    conn = bouncer.connect(sslmode="prefer")
    try:
        assert scalar(conn, "SELECT 1") == 1
    finally:
        conn.close()
    with pytest.raises(psycopg2.OperationalError, match="does not support SSL"):
        bouncer.connect(sslmode="require")


# -- unix socket clients ------------------------------------------------------------------------
def test_application_name_add_host_appends_where_the_client_is(pg, bouncer_factory) -> None:
    bouncer = bouncer_factory(common_ini(pg, application_name_add_host=1))
    named, unnamed = bouncer.connect(application_name="job"), bouncer.connect()
    local = bouncer.connect(host=bouncer.socket_dir)
    try:
        for conn in (named, unnamed, local):
            conn.autocommit = True
        client_ports = {row[6] for row in bouncer.admin("SHOW CLIENTS") if row[1] == USER}
        name = scalar(named, "SHOW application_name")
        assert re.fullmatch(r"job - 127\.0\.0\.1:(\d+)", name), name
        assert int(name.rsplit(":", 1)[1]) in client_ports
        assert re.fullmatch(r"app - 127\.0\.0\.1:\d+", scalar(unnamed, "SHOW application_name"))
        assert re.fullmatch(rf"app - unix\(\d+@[^)]+\):{bouncer.port}",
                            scalar(local, "SHOW application_name"))
        # only at login: a later SET is the client's own
        named.cursor().execute("SET application_name = 'renamed'")
        assert scalar(named, "SHOW application_name") == "renamed"
    finally:
        for conn in (named, unnamed, local):
            conn.close()


def test_client_over_the_unix_socket(bouncer) -> None:
    conn = bouncer.connect(host=bouncer.socket_dir)
    try:
        assert scalar(conn, "SELECT current_user") == USER
    finally:
        conn.close()


# -- hostile startup bytes ----------------------------------------------------------------------
def assert_unharmed(bouncer) -> None:
    """Still serving logins, and nothing crashed on the way (no traceback in its output)."""
    sock, _ = open_session(bouncer, {})
    sock.close()
    assert "Traceback" not in bouncer.log_text()


@pytest.mark.parametrize("raw", [
    struct.pack("!I", 4),                                       # length below the minimum
    struct.pack("!I", 0xFFFFFFFF) + b"x" * 16,                  # absurd length
    struct.pack("!I", 100_000) + b"\0" * 64,                    # over PostgreSQL's 10000 cap
    pgwire.startup({"user": USER})[:-1] + b"X",                 # bad terminator
    pgwire.packet(pgwire.PROTOCOL_3_0, b"user\0" + b"\0"),      # a name without a value
    pgwire.packet(pgwire.PROTOCOL_3_0, b"user\0\xff\xfe\0\0"),  # not UTF-8
    pgwire.packet(1234 << 16 | 9999),                           # unknown request code
    pgwire.packet(pgwire.SSL_REQUEST, b"extra"),                # SSLRequest with a body
    pgwire.packet(pgwire.CANCEL_REQUEST, b"\0\0"),              # short CancelRequest
], ids=["tiny", "absurd", "too-long", "terminator", "no-value", "not-utf8", "request-code",
        "ssl-body", "short-cancel"])
def test_malformed_startup_packet_is_closed_promptly(bouncer, raw: bytes) -> None:
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(raw)
        assert pgwire.closed_by_peer(sock, 2), "the pooler kept a malformed startup open"
    assert_unharmed(bouncer)


def test_client_vanishing_mid_login_leaves_the_pooler_serving(bouncer) -> None:
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(pgwire.startup({"user": USER, "database": "testdb"}))
        assert pgwire.read_message(sock)[0] == b"R"  # asked for a password: leave now
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(pgwire.startup({"user": USER, "database": "testdb"})[:7])
    assert_unharmed(bouncer)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=1, max_size=300))
def test_random_first_bytes_never_hang_or_kill_the_pooler(bouncer, raw: bytes) -> None:
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(raw)
        try:
            sock.shutdown(socket.SHUT_WR)  # a length asking for more bytes must not wait forever
        except OSError:
            pass  # the pooler refused the bytes and closed first: what we hope for anyway
        assert pgwire.closed_by_peer(sock, 3)
    assert_unharmed(bouncer)


#: (auth_type, what the auth_file holds for USER): each path that checks a password.
PASSWORD_CHECKS = [
    pytest.param(("plain", PASSWORD), id="plain-vs-plain"),
    pytest.param(("plain", md5_secret(USER, PASSWORD)), id="plain-vs-md5"),
    pytest.param(("plain", scram_secret(PASSWORD)), id="plain-vs-scram"),
    pytest.param(("md5", PASSWORD), id="md5-vs-plain"),
    pytest.param(("scram-sha-256", PASSWORD), id="scram-vs-plain"),
    pytest.param(("scram-sha-256", scram_secret(PASSWORD)), id="scram-vs-scram"),
]


@pytest.fixture(params=PASSWORD_CHECKS)
def password_checker(request, pg, bouncer_factory):
    auth_type, stored = request.param
    return bouncer_factory(common_ini(pg, auth_type=auth_type), {USER: stored})


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=80),
                      st.binary(max_size=60).map(lambda raw: b"SCRAM-SHA-256\0" + raw)))
@example(body=b"\xff\xfe\0")  # not UTF-8
def test_garbage_password_message_gets_a_clean_fatal(password_checker, body: bytes) -> None:
    bouncer = password_checker
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(pgwire.startup({"user": USER, "database": "testdb"}))
        assert pgwire.read_message(sock)[0] == b"R"
        sock.sendall(pgwire.typed(b"p", body))
        error = pgwire.first_error(pgwire.messages_until_closed(sock, 3))
    assert error is not None and error["S"] == "FATAL", "closed without an ErrorResponse"
    assert "Traceback" not in bouncer.log_text()
