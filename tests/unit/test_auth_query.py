"""auth_query's sans-IO half: which query runs where, the bytes that run it, reading its answer.

The wire bytes are split with an independent reader (struct, not bouncer.proto), so a framing
bug in the builders cannot hide itself.
"""
from __future__ import annotations

import struct
from typing import List, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bouncer.auth.query import (AuthQueryFailed, AuthQuerySpec, config_problems,
                                credentials_from_rows, lookup_request, resolve_spec)
from bouncer.config.model import Config, DatabaseDef
from bouncer.config.settings import DEFAULT_AUTH_QUERY


def config(auth_user: str = "", auth_query: str = DEFAULT_AUTH_QUERY, auth_dbname: str = "",
           **databases: DatabaseDef) -> Config:
    settings = {"auth_user": auth_user, "auth_query": auth_query, "auth_dbname": auth_dbname}
    return Config(path="test.ini", settings=settings, databases=databases)


def messages(wire: bytes) -> List[Tuple[bytes, bytes]]:
    found = []
    while wire:
        kind, (length,) = wire[:1], struct.unpack("!I", wire[1:5])
        found.append((kind, wire[5:1 + length]))
        wire = wire[1 + length:]
    return found


# -- which query, as whom, where --------------------------------------------------------------
def test_no_auth_user_means_no_lookup() -> None:
    assert resolve_spec(config(), "app") is None
    assert resolve_spec(config(app=DatabaseDef("app", auth_query="SELECT 1")), "app") is None


def test_global_settings_run_in_the_requested_database() -> None:
    assert resolve_spec(config(auth_user="lookup"), "app") == AuthQuerySpec(
        "lookup", DEFAULT_AUTH_QUERY, "app")
    assert resolve_spec(config(auth_user="lookup", auth_dbname="authdb"), "app").dbname \
        == "authdb"


def test_database_values_override_each_global_one() -> None:
    app = DatabaseDef("app", auth_user="db_lookup", auth_query="SELECT $1, 'x'",
                      auth_dbname="db_authdb")
    spec = resolve_spec(config(auth_user="lookup", auth_dbname="authdb", app=app), "app")
    assert spec == AuthQuerySpec("db_lookup", "SELECT $1, 'x'", "db_authdb")
    assert resolve_spec(config(auth_user="lookup", app=app), "other") == AuthQuerySpec(
        "lookup", DEFAULT_AUTH_QUERY, "other")


def test_unlisted_database_takes_the_fallback_entry_values() -> None:
    fallback = DatabaseDef("*", auth_user="star_lookup")
    assert resolve_spec(config(**{"*": fallback}), "anything") == AuthQuerySpec(
        "star_lookup", DEFAULT_AUTH_QUERY, "anything")


def test_admin_console_takes_only_the_global_values() -> None:
    fallback = DatabaseDef("*", auth_user="star_lookup", auth_dbname="star_authdb")
    assert resolve_spec(config(**{"*": fallback}), "pgbouncer") is None
    assert resolve_spec(config(auth_user="lookup", auth_dbname="authdb", **{"*": fallback}),
                        "pgbouncer") == AuthQuerySpec("lookup", DEFAULT_AUTH_QUERY, "authdb")


def test_default_query_is_schema_qualified_and_refuses_expired_and_nologin_roles() -> None:
    assert "pg_catalog.pg_authid" in DEFAULT_AUTH_QUERY
    assert "rolvaliduntil" in DEFAULT_AUTH_QUERY and "rolcanlogin" in DEFAULT_AUTH_QUERY


def test_configurations_that_would_fail_every_lookup_are_refused() -> None:
    assert config_problems(config(auth_user="lookup", auth_query="SELECT 'x', 'y'",
                                  app=DatabaseDef("app"))) == [
        "auth_query must use $1 where the user name goes"]
    assert config_problems(config(auth_user="lookup", auth_dbname="pgbouncer")) == [
        'cannot use the reserved "pgbouncer" database as an auth_dbname']
    assert config_problems(config(auth_user="lookup", auth_dbname="authdb",
                                  app=DatabaseDef("app"))) == [
        "auth_dbname = authdb names no database in [databases]"]
    app = DatabaseDef("app", auth_user="db_lookup", auth_dbname="gone")
    assert config_problems(config(app=app)) == [
        "database app: auth_dbname = gone names no database in [databases]"]


def test_settings_that_never_run_or_can_be_created_are_accepted() -> None:
    assert config_problems(config(auth_query="SELECT 'unused'")) == []
    # Every database that looks users up has a query of its own (as in PgBouncer's tests).
    own = DatabaseDef("app", auth_query="SELECT usename, passwd FROM pg_shadow WHERE usename=$1")
    assert config_problems(config(auth_user="lookup", auth_query="SELECT 1", app=own)) == []
    # A database's auth_dbname = pgbouncer is refused at login, as PgBouncer refuses it.
    assert config_problems(config(auth_user="lookup",
                                  app=DatabaseDef("app", auth_dbname="pgbouncer"))) == []
    assert config_problems(config(auth_user="lookup", auth_dbname="any",
                                  **{"*": DatabaseDef("*")})) == []


# -- the bytes ----------------------------------------------------------------------------------
@given(st.text(min_size=1))
def test_user_name_is_only_ever_the_bound_parameter(user: str) -> None:
    query = "SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1"
    sent = messages(lookup_request(query, user))
    assert [kind for kind, _ in sent] == [b"P", b"B", b"E", b"S"]
    parse, bind = sent[0][1], sent[1][1]
    assert parse == b"\0" + query.encode() + b"\0" + struct.pack("!h", 0)
    encoded = user.encode("utf-8", "surrogateescape")
    # portal "", statement "", no format codes (all text), one parameter, no result formats
    assert bind == (b"\0\0" + struct.pack("!hh", 0, 1) + struct.pack("!i", len(encoded))
                    + encoded + struct.pack("!h", 0))


# -- the answer ----------------------------------------------------------------------------------
def test_no_row_is_an_unknown_user() -> None:
    assert credentials_from_rows("alice", []) is None


def test_one_row_gives_the_secret_under_the_client_user_name() -> None:
    found = credentials_from_rows("alice", [[b"alice", b"md5abc"]])
    assert (found.user, found.secret, found.source) == ("alice", "md5abc", "auth_query")
    assert "md5abc" not in repr(found)


@pytest.mark.parametrize("secret", [None, b""])
def test_null_or_empty_secret_is_a_known_user_no_password_matches(secret) -> None:
    found = credentials_from_rows("old", [[b"old", secret]])
    assert found is not None and found.secret is None


@pytest.mark.parametrize("rows, problem", [
    ([[b"a", b"Secret-42"], [b"a", b"Secret-42"]], "2 rows"),
    ([[b"Secret-42"]], "1 columns"),
    ([[b"a", b"Secret-42", b"z"]], "3 columns"),
])
def test_malformed_answers_fail_without_quoting_the_secret(rows, problem) -> None:
    with pytest.raises(AuthQueryFailed, match=problem) as failed:
        credentials_from_rows("a", rows)
    assert "Secret-42" not in str(failed.value)


@given(st.lists(st.lists(st.one_of(st.none(), st.binary()), max_size=4), max_size=3))
def test_any_answer_is_credentials_none_or_a_clean_failure(rows) -> None:
    try:
        found = credentials_from_rows("u", rows)
    except AuthQueryFailed:
        return
    assert found is None or found.user == "u"
