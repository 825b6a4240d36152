"""libpq-style connection strings as PgBouncer's [databases] lines use them."""
from __future__ import annotations

import pytest

from bouncer.config.connstr import parse_connstr


def test_plain_pairs_in_order() -> None:
    assert list(parse_connstr("host=db1 port=5433 dbname=app").items()) == [
        ("host", "db1"), ("port", "5433"), ("dbname", "app")]


def test_empty_and_blank_strings_have_no_pairs() -> None:
    assert parse_connstr("") == {}
    assert parse_connstr("  \t ") == {}


def test_blanks_around_equals_are_allowed() -> None:
    assert parse_connstr("host = db1   port =5433\tuser= bob") == {
        "host": "db1", "port": "5433", "user": "bob"}


def test_single_quoted_value_keeps_spaces_and_equals() -> None:
    assert parse_connstr("connect_query='SET a = 1; SET b = 2' host=x") == {
        "connect_query": "SET a = 1; SET b = 2", "host": "x"}


@pytest.mark.parametrize("text, value", [
    (r"password='it''s'", "it's"),          # PgBouncer's doubled quote
    (r"password='it\'s'", "it's"),          # libpq's backslash escape
    (r"password=a\'b", "a'b"),              # escape outside quotes
    (r"password='back\\slash'", "back\\slash"),
    (r"password=p\ss", r"p\ss"),            # other backslashes stay literal, as in PgBouncer
    ("password=ab#cd;ef", "ab#cd;ef"),      # no comments inside connection strings
])
def test_quoting_and_escapes(text: str, value: str) -> None:
    assert parse_connstr(text) == {"password": value}


def test_auth_query_with_doubled_quotes() -> None:
    text = "auth_query='SELECT usename, passwd FROM pg_shadow WHERE usename=''x'''"
    assert parse_connstr(text)["auth_query"] == \
        "SELECT usename, passwd FROM pg_shadow WHERE usename='x'"


def test_repeated_key_keeps_last_value() -> None:
    assert parse_connstr("host=a host=b") == {"host": "b"}


@pytest.mark.parametrize("text", [
    "host=",                 # empty value: PgBouncer's "syntax error in connection string"
    "host= dbname= port=",   # the error Heroku users meet with unset variables
    "host=''",
    "host",                  # no '='
    "=value",                # no key
    "host='unterminated",
    "host='db'junk",
    "host=a port",
])
def test_syntax_errors_raise_value_error_with_reason(text: str) -> None:
    with pytest.raises(ValueError, match="connection string"):
        parse_connstr(text)
