"""pg_ident.conf parsing and lookups: the ident.conf/ident.eval table in data/hba, then errors."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from bouncer.auth.ident import load_ident, parse_ident
from bouncer.errors import ConfigError

DATA = Path(__file__).parent / "data" / "hba"


def _eval_cases():
    lines = (DATA / "ident.eval").read_text().splitlines()
    for lineno, line in enumerate(lines, 1):
        columns = shlex.split(line, comments=True)
        if columns:
            yield pytest.param(*columns, id=f"eval:{lineno}")


@pytest.fixture(scope="module")
def table_map():
    return load_ident(str(DATA / "ident.conf"))


@pytest.mark.parametrize("expected, mapname, system_user, db_user", list(_eval_cases()))
def test_ident_table(table_map, expected, mapname, system_user, db_user):
    verdict = table_map.allows(mapname, system_user, db_user)
    assert ("allow" if verdict else "deny") == expected


@pytest.mark.parametrize("name, known", [
    ("certmap", True), ("unixmap", True), ("quoted map", True), ("nomap", False), ("", False),
])
def test_has_map(table_map, name, known):
    assert table_map.has_map(name) is known


def test_continued_line_keeps_its_first_line_number(table_map):
    entry = next(e for e in table_map.entries if e.system_user == "postgres")
    lines = (DATA / "ident.conf").read_text().splitlines()
    assert lines[entry.lineno - 1].split()[:2] == ["unixmap", "postgres"]


def test_quoted_all_is_a_user_name_and_bare_all_the_keyword():
    entries = parse_ident('m a all\nm b "all"\n', "ident.conf").entries
    assert [(e.db_user, e.any_db_user) for e in entries] == [("all", True), ("all", False)]


PARSE_ERRORS = [
    ("m /^(.*)$ \\1", 'regular expressions ("/^(.*)$") are not supported'),
    ('m "/quoted" u', "regular expressions"),
    ("m alice +staff", 'group membership ("+staff") is not supported'),
    ("m alice", "missing entry at end of line"),
    ("m", "missing entry at end of line"),
    ("m alice bob extra", "too many fields"),
    ("m alice,bob carol", "multiple values in system user name"),
    ("m,n alice bob", "multiple values in map name"),
    ("m alice bob,carol", "multiple values in database user name"),
    ("include other.conf", '"include" directives are not supported'),
    ('m "alice bob', "unterminated quoted string"),
]


@pytest.mark.parametrize("line, message", PARSE_ERRORS)
def test_parse_error_names_file_line_and_cause(line, message):
    with pytest.raises(ConfigError) as info:
        parse_ident("# header\nm a b\n" + line + "\n", "/etc/bouncer/ident.conf")
    assert (info.value.filename, info.value.lineno) == ("/etc/bouncer/ident.conf", 3)
    assert message in info.value.message


def test_quoted_plus_is_a_literal_user():
    (entry,) = parse_ident('m alice "+staff"\n', "f").entries
    assert entry.db_user == "+staff"


def test_load_ident_reports_an_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read ident map file"):
        load_ident(str(tmp_path / "missing.conf"))


def test_empty_file_allows_nothing():
    ident = parse_ident("\n# only a comment\n", "f")
    assert ident.entries == ()
    assert not ident.allows("m", "a", "a")
