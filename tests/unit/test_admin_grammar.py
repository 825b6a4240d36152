"""The admin console's grammar: PgBouncer's command syntax, and hostile text."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bouncer.admin import grammar
from bouncer.admin.grammar import GrammarError, Token

TABLE = {"SHOW", "SHOW POOLS", "SHOW STATS", "SHOW STATS_TOTALS", "SET", "SET USER", "PAUSE",
         "KILL_CLIENT"}


# -- terminator ------------------------------------------------------------------------------
@pytest.mark.parametrize("query, expected", [
    ("SHOW POOLS", "SHOW POOLS"),
    ("  SHOW POOLS ;  \n", "SHOW POOLS"),
    ("SHOW POOLS;", "SHOW POOLS"),
    ("SHOW POOLS;;", "SHOW POOLS;"),  # only one terminator: the second one stays and fails
    (" ; ", ""),
    ("", ""),
])
def test_strip_terminator_removes_whitespace_and_one_semicolon(query: str, expected: str) -> None:
    assert grammar.strip_terminator(query) == expected


# -- command words ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("SHOW POOLS", ("SHOW POOLS", "")),
    ("show pools", ("SHOW POOLS", "")),
    ("ShOw\tStAtS_ToTaLs", ("SHOW STATS_TOTALS", "")),
    ("SHOW STATS", ("SHOW STATS", "")),
    ("SHOW client_encoding", ("SHOW", "client_encoding")),
    ("SHOW", ("SHOW", "")),
    ("SET USER alice pool_size=5", ("SET USER", "alice pool_size=5")),
    ("SET default_pool_size = 5", ("SET", "default_pool_size = 5")),
    ("SET x=1", ("SET", "x=1")),
    ("PAUSE \"My Db\"", ("PAUSE", '"My Db"')),
    ("pause MyDb", ("PAUSE", "MyDb")),
    ("SELECT pools", ("SHOW POOLS", "")),
])
def test_match_command_takes_the_longest_known_command(text: str, expected: tuple) -> None:
    assert grammar.match_command(text, TABLE) == expected


@pytest.mark.parametrize("text", ["SHOWPOOLS", "SHOW-POOLS", "RESUME", "", "  ", "\"SHOW\"",
                                  "SELECT1"])
def test_match_command_finds_nothing_for_unknown_or_glued_words(text: str) -> None:
    assert grammar.match_command(text, TABLE) is None


def test_match_command_keeps_the_case_of_arguments() -> None:
    assert grammar.match_command("kill_client 42", TABLE) == ("KILL_CLIENT", "42")
    assert grammar.match_command("PAUSE MixedCase", TABLE) == ("PAUSE", "MixedCase")


def test_select_is_an_alias_only_in_first_position() -> None:
    assert grammar.match_command("SHOW SELECT", {"SHOW", "SHOW SHOW"}) == ("SHOW", "SELECT")


# -- tokens ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, tokens", [
    ("a b_1 42", [Token("word", "a"), Token("word", "b_1"), Token("word", "42")]),
    ('"my db"', [Token("ident", "my db")]),
    ('"say ""hi"""', [Token("ident", 'say "hi"')]),
    ("'it''s'", [Token("string", "it's")]),
    ("''", [Token("string", "")]),
    ("k='v'", [Token("word", "k"), Token("equals", "="), Token("string", "v")]),
    ("\t\n\r ", []),
])
def test_tokenize(text: str, tokens: list) -> None:
    assert grammar.tokenize(text) == tokens


@pytest.mark.parametrize("text", ['"open', "'open", '""', "a;b", "a.b", "-1", "é", "a,b"])
def test_tokenize_refuses_what_pgbouncer_refuses(text: str) -> None:
    with pytest.raises(GrammarError):
        grammar.tokenize(text)


# -- arguments -------------------------------------------------------------------------------
def test_optional_name() -> None:
    assert grammar.optional_name("") is None
    assert grammar.optional_name("  testdb ") == "testdb"
    assert grammar.optional_name('"my ""odd"" db"') == 'my "odd" db'
    for bad in ("a b", "'quoted string'", "a = b"):
        with pytest.raises(GrammarError):
            grammar.optional_name(bad)


def test_no_arguments() -> None:
    grammar.no_arguments(" \t")
    with pytest.raises(GrammarError):
        grammar.no_arguments("extra")


@pytest.mark.parametrize("args, expected", [
    ("default_pool_size = 30", ("default_pool_size", "30")),
    ("default_pool_size=30", ("default_pool_size", "30")),
    ("query_timeout TO '1.5'", ("query_timeout", "1.5")),
    ("query_timeout to '1.5'", ("query_timeout", "1.5")),
    ('"pool_mode" = transaction', ("pool_mode", "transaction")),
    ("server_reset_query = 'SELECT ''x'''", ("server_reset_query", "SELECT 'x'")),
    ("application_name_add_host = \"on\"", ("application_name_add_host", "on")),
    ("ignore_startup_parameters = ''", ("ignore_startup_parameters", "")),
])
def test_parse_set(args: str, expected: tuple) -> None:
    assert grammar.parse_set(args) == expected


@pytest.mark.parametrize("args", ["", "key", "key =", "key value", "key = a b", "'key' = 1",
                                  "key == 1", "key = 1.5", "key TOO 1", "= = =", "keyto 1"])
def test_parse_set_refuses_malformed_assignments(args: str) -> None:
    with pytest.raises(GrammarError):
        grammar.parse_set(args)


# -- hostile text ----------------------------------------------------------------------------
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
_GRAMMAR_CHARS = st.text(alphabet=" \t\n\r;='\"aZ_09SETHOWPAUSE", max_size=60)


@given(st.one_of(_TEXT, _GRAMMAR_CHARS))
def test_parsers_raise_only_grammar_errors(text: str) -> None:
    for parse in (grammar.tokenize, grammar.names, grammar.optional_name, grammar.parse_set,
                  grammar.no_arguments):
        try:
            parse(text)
        except GrammarError:
            pass


@given(st.one_of(_TEXT, _GRAMMAR_CHARS))
def test_match_command_rest_is_a_suffix_of_the_text(text: str) -> None:
    found = grammar.match_command(text, TABLE)
    if found is not None:
        command, rest = found
        assert command in TABLE
        assert text.rstrip(grammar.WHITESPACE).endswith(rest)


@given(st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s))
def test_any_name_survives_double_quoting(name: str) -> None:
    quoted = '"' + name.replace('"', '""') + '"'
    assert grammar.optional_name(quoted) == name


@given(st.text(max_size=30))
def test_any_value_survives_single_quoting(value: str) -> None:
    quoted = "'" + value.replace("'", "''") + "'"
    assert grammar.parse_set(f"key = {quoted}") == ("key", value)
