"""Hostile text into the config lexer, loader and connection-string parser: a result or the
documented error (ConfigError / ValueError), never another exception."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bouncer.check.problems import check_config
from bouncer.config import ConfigProblems, load_config, read_config_report
from bouncer.config.connstr import parse_connstr
from bouncer.config.ini import lex_ini, lex_ini_all
from bouncer.errors import ConfigError

# Tokens the lexer and loader treat specially, so random files get past the first character.
INI_VOCABULARY = [
    "[pgbouncer]", "[databases]", "[users]", "[pools]", "[peers]", "[bogus]", "[", "]",
    "%include", "%include .", "%include /nonexistent", "=", ";", "#", "'", '"', "*", ".",
    "listen_port", "pool_mode", "reserve_pool", "unix_socket_mode", "query_timeout", "6432",
    "0777", "1.5min", "-1", "transaction", "host=a", "port=0", "pool_size=3", "pgbouncer",
    "bob.app", "\n", "\r\n", " ", "\t", "\x00", "é", "\\", "'a''b'",
]
CONNSTR_VOCABULARY = ["host", "port", "=", "'", "''", "\\", "\\'", " ", "\t", "a", "b=c", "é"]

ini_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(st.sampled_from(INI_VOCABULARY), st.text(max_size=4)),
             max_size=40).map("".join),
)
connstr_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(CONNSTR_VOCABULARY), max_size=30).map("".join),
)
#: C isspace(): what PgBouncer trims from the end of a value.
C_SPACE = " \t\n\r\v\f"


@pytest.fixture(scope="module")
def ini_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzz.ini"


@settings(max_examples=300, deadline=None)
@given(text=ini_text)
def test_lexer_and_loader_raise_only_config_error(ini_path: Path, text: str) -> None:
    ini_path.write_text(text, encoding="utf-8")
    for read in (lex_ini, load_config):
        try:
            read(str(ini_path))
        except ConfigError:
            pass


@settings(max_examples=300, deadline=None)
@given(text=ini_text)
def test_collecting_reads_any_file_and_names_each_problems_place(ini_path: Path,
                                                                 text: str) -> None:
    """--check's pass: never an exception for a file it can read; the lexer's problems each
    name a line, and the daemon refuses the file with the same problems first (so the
    daemon and --check agree on what is wrong)."""
    ini_path.write_text(text, encoding="utf-8")
    try:
        _, lex_errors = lex_ini_all(str(ini_path))
    except ConfigError as exc:  # the file itself: not UTF-8, a NUL byte
        assert exc.filename == str(ini_path)
        return
    assert all(error.lineno for error in lex_errors)
    _, problems = read_config_report(str(ini_path))
    try:
        load_config(str(ini_path))
    except ConfigProblems as refused:
        assert [str(p) for p in refused.problems[:len(problems)]] == [str(p) for p in problems]
    else:
        assert problems == []
    check_config(str(ini_path))  # plugins' checks on a partly read file: no exception


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=60).map(lambda text: text.replace("\n", "").replace("\x00", "")))
def test_any_value_survives_lexing_verbatim_but_trimmed(ini_path: Path, value: str) -> None:
    ini_path.write_text(f"[databases]\ndb =  {value}\n", encoding="utf-8")
    (line,) = [line for line in lex_ini(str(ini_path)) if not line.is_section_header]
    assert line.value == value.lstrip(" \t").rstrip(C_SPACE)


@settings(max_examples=300, deadline=None)
@given(text=connstr_text)
def test_connstr_raises_only_value_error(text: str) -> None:
    try:
        pairs = parse_connstr(text)
    except ValueError:
        return
    assert all(key and value for key, value in pairs.items())


@settings(max_examples=200, deadline=None)
@given(value=st.text(min_size=1, max_size=40))
def test_quoted_values_round_trip(value: str) -> None:
    quoted = "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    assert parse_connstr(f"password={quoted} host=x") == {"password": value, "host": "x"}
