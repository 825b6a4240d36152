"""Names and startup text of hostile sizes: PgBouncer's limits on user and database names, with
its refusals, and no client text making a log line grow without bound."""
from __future__ import annotations

from typing import Dict, List

import pytest

from tests.support import pgwire
from bouncer.testing.ini import common_ini

#: PgBouncer's limits: a user name may have 127 bytes, a database name 63.
LONGEST_USER, LONGEST_DB = 127, 63
#: What bouncer prints at most on one log line (PgBouncer's 2048-byte buffer).
LONGEST_LOG_LINE = 2047


@pytest.fixture
def bouncer(pg, bouncer_factory):
    # "*" makes any database name an existing one, so only its length can refuse it.
    return bouncer_factory(common_ini(pg, databases={"*": f"host=127.0.0.1 port={pg.port}"},
                                      client_login_timeout=5))


def first_reply(bouncer, params: Dict[str, str]) -> pgwire.Message:
    """The first message bouncer answers a StartupMessage with."""
    with pgwire.connect(bouncer.host, bouncer.port) as sock:
        sock.sendall(pgwire.startup(params))
        return pgwire.read_message(sock)


def error_of(message: pgwire.Message) -> Dict[str, str]:
    kind, payload = message
    assert kind == b"E", f"expected an ErrorResponse, got {kind!r}"
    return pgwire.error_fields(payload)


def message_parts_of(log: str) -> List[str]:
    """Each log line without its time stamp, pid and level."""
    return [line.split("] ", 1)[-1].split(" ", 1)[-1] for line in log.splitlines()]


def test_a_user_name_of_9000_bytes_is_refused_before_any_password(bouncer) -> None:
    name = "u" * 9000
    error = error_of(first_reply(bouncer, {"user": name, "database": "testdb"}))
    assert (error["S"], error["C"], error["M"]) == ("FATAL", "08P01", "username too long")
    bouncer.wait_for_log("pooler error: username too long")
    assert "u" * (LONGEST_USER + 1) not in bouncer.log_text()


def test_user_names_up_to_127_bytes_are_asked_for_a_password(bouncer) -> None:
    kind, payload = first_reply(bouncer, {"user": "u" * LONGEST_USER, "database": "testdb"})
    assert (kind, pgwire.auth_code(payload)) == (b"R", pgwire.AUTH_MD5)
    error = error_of(first_reply(bouncer, {"user": "é" * 64, "database": "testdb"}))
    assert error["M"] == "username too long"  # 128 bytes: the limit counts bytes


def test_a_database_name_of_64_bytes_names_no_database(bouncer) -> None:
    error = error_of(first_reply(bouncer, {"user": "md5user", "database": "d" * 9000}))
    assert (error["C"], error["M"]) == ("3D000", f"no such database: {'d' * LONGEST_DB}")
    error = error_of(first_reply(bouncer, {"user": "md5user",
                                           "database": "d" * (LONGEST_DB + 1)}))
    assert error["M"] == f"no such database: {'d' * LONGEST_DB}"
    assert "d" * (LONGEST_DB + 1) not in bouncer.log_text()


def test_the_database_name_defaults_to_a_too_long_user_name(bouncer) -> None:
    error = error_of(first_reply(bouncer, {"user": "u" * 100}))
    assert error["M"] == f"no such database: {'u' * LONGEST_DB}"


def test_database_names_up_to_63_bytes_go_on_to_authentication(bouncer) -> None:
    kind, payload = first_reply(bouncer, {"user": "md5user", "database": "d" * LONGEST_DB})
    assert (kind, pgwire.auth_code(payload)) == (b"R", pgwire.AUTH_MD5)


def test_an_unknown_parameter_of_5000_bytes_is_named_in_part(bouncer) -> None:
    name = "p" * 5000
    error = error_of(first_reply(bouncer, {"user": "md5user", "database": "testdb",
                                           name: "v"}))
    assert error["M"] == f"unsupported startup parameter: {'p' * 64}..."
    assert "p" * 65 not in bouncer.log_text()


def test_no_log_line_grows_with_the_clients_text_and_the_daemon_serves_on(bouncer) -> None:
    # A value the server refuses comes back quoted in its error message; application_name is
    # only cut by PostgreSQL.  Whatever lands in the log is bounded.
    hostile = [{"DateStyle": "x" * 9000}, {"application_name": "a" * 9000},
               {"TimeZone": "z" * 9000}]
    for params in hostile:
        sock, _ = pgwire.open_session(bouncer.host, bouncer.port, "md5user", "md5pass",
                                      params=params)
        with sock:  # the first query makes bouncer SET the values on a server
            sock.sendall(pgwire.query("SELECT 1"))
            pgwire.closed_by_peer(sock, 1)
    bouncer.wait_for_log(r"could not set parameters on server: .*DateStyle")
    longest = max(map(len, message_parts_of(bouncer.log_text())))
    assert longest <= LONGEST_LOG_LINE
    sock, _ = pgwire.open_session(bouncer.host, bouncer.port, "md5user", "md5pass")
    with sock:
        assert pgwire.data_rows(pgwire.run_query(sock, "SELECT 1")) == [["1"]]
