"""The ini lexer follows PgBouncer's cfparser, where configobj alone reads these files wrongly."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import pytest

from bouncer.config.ini import MAX_INCLUDE_DEPTH, last_lines, lex_ini, lex_ini_all, to_configobj
from bouncer.errors import ConfigError


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def pairs(path: str) -> List[Tuple[str, str, str]]:
    return [(line.section, line.key, line.value) for line in lex_ini(path)
            if not line.is_section_header]


def test_semicolon_and_hash_lines_are_comments(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini", ";;; header\n[databases]\n;foodb =\n  # bardb = x\n"
                                    "real = host=a\n")
    assert pairs(ini) == [("databases", "real", "host=a")]


def test_hash_and_semicolon_inside_a_value_are_literal(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini", "[databases]\np1 = host=db password=ab#cd;ef  \n")
    assert pairs(ini) == [("databases", "p1", "host=db password=ab#cd;ef")]


def test_values_with_quotes_are_kept_verbatim(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini", "[pgbouncer]\n"
                                    "auth_query = 'SELECT x' FROM y WHERE z = '$1'\n"
                                    "server_check_query = \"select 1\"\n")
    assert pairs(ini) == [("pgbouncer", "auth_query", "'SELECT x' FROM y WHERE z = '$1'"),
                          ("pgbouncer", "server_check_query", '"select 1"')]


def test_empty_value_is_allowed(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini", "[databases]\nfoodb =\n")
    assert pairs(ini) == [("databases", "foodb", "")]


def test_pgbouncer_keys_and_sections_are_case_insensitive_names_are_not(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini", "[PgBouncer]\nListen_Port = 1\n[Databases]\nMyDB = \n")
    assert pairs(ini) == [("pgbouncer", "listen_port", "1"), ("databases", "MyDB", "")]


def test_keys_may_hold_star_dot_and_dash(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini", "[pools]\nmy-user.app_db = pool_size=3\n"
                                    "[databases]\n* = host=x\n")
    assert [key for _, key, _ in pairs(ini)] == ["my-user.app_db", "*"]


def test_quoted_keys(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini",
                "[databases]\n'Foo Bar' = host=a\n\"say \"\"hi\"\"\" = host=b\n")
    assert [key for _, key, _ in pairs(ini)] == ["Foo Bar", 'say "hi"']


def test_duplicate_keys_are_kept_and_the_last_one_wins(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini", "[pgbouncer]\nlisten_port = 1\nlisten_port = 2\n")
    lines = lex_ini(ini)
    assert last_lines(lines)[("pgbouncer", "listen_port")].lineno == 3
    assert to_configobj(lines)["pgbouncer"]["listen_port"] == "2"


def test_configobj_container_keeps_values_verbatim(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini", "[pgbouncer]\nlisten_addr = 127.0.0.1,::1\n"
                                    "logfile = /var/log/%(name)s.log\n[users]\n")
    document = to_configobj(lex_ini(ini))
    assert document["pgbouncer"]["listen_addr"] == "127.0.0.1,::1"
    assert document["pgbouncer"]["logfile"] == "/var/log/%(name)s.log"
    assert document["users"] == {}


def test_key_may_follow_a_section_header_on_the_same_line(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini", "[pgbouncer] listen_port = 7\n[databases] ; comment\n")
    assert pairs(ini) == [("pgbouncer", "listen_port", "7")]


def test_crlf_line_endings(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini", "[pgbouncer]\r\nlisten_port = 7\r\n")
    assert pairs(ini) == [("pgbouncer", "listen_port", "7")]


def test_lines_know_their_file_and_number(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini", "\n; c\n[pgbouncer]\n\nlisten_port = 7\n")
    header, setting = lex_ini(ini)
    assert (header.section, header.lineno, header.is_section_header) == ("pgbouncer", 3, True)
    assert (setting.filename, setting.lineno) == (ini, 5)


@pytest.mark.parametrize("text, lineno", [
    ("[pgbouncer]\nlisten_port 6432\n", 2),
    ("[pgbouncer\nlisten_port = 1\n", 1),
    ("[pgbouncer]\n\n\nfoo bar = 1\n", 4),
    ("[databases]\n'unterminated = host=a\n", 2),
    ("[databases]\n'' = host=a\n", 2),
    ("[databases]\n%foo = x\n", 2),
])
def test_syntax_errors_name_file_and_line(tmp_path: Path, text: str, lineno: int) -> None:
    ini = write(tmp_path / "bad.ini", text)
    with pytest.raises(ConfigError, match="syntax error") as info:
        lex_ini(ini)
    assert (info.value.filename, info.value.lineno) == (ini, lineno)
    assert f"bad.ini:{lineno}" in str(info.value)


def test_every_bad_line_is_recorded_and_the_good_ones_kept(tmp_path: Path) -> None:
    ini = write(tmp_path / "bad.ini", "[pgbouncer]\nlisten_port 6432\nlogfile = a\n"
                                      "'open = 1\nverbose = 1\n%include\n")
    lines, errors = lex_ini_all(ini)
    assert [(line.key, line.value) for line in lines if line.key] == [("logfile", "a"),
                                                                      ("verbose", "1")]
    assert [error.lineno for error in errors] == [2, 4, 6]


def test_keys_after_a_broken_section_header_are_dropped_with_it(tmp_path: Path) -> None:
    # Which section they belong to is unknown: one error (the header), no guess.
    ini = write(tmp_path / "bad.ini", "[pgbouncer]\nlogfile = a\n[databases\ndb = x\n"
                                      "[users]\nbob = pool_mode=session\n")
    lines, errors = lex_ini_all(ini)
    assert [(line.section, line.key) for line in lines if line.key] == [
        ("pgbouncer", "logfile"), ("users", "bob")]
    assert [(error.lineno, error.message) for error in errors] == [
        (3, "syntax error: section header without ']'")]


def test_errors_of_an_included_file_name_that_file(tmp_path: Path) -> None:
    inner = write(tmp_path / "inner.ini", "verbose = 1\nbroken\n")
    ini = write(tmp_path / "main.ini", f"[pgbouncer]\n%include {inner}\n%include "
                                       f"{tmp_path}/absent.ini\nlogfile = b\n")
    lines, errors = lex_ini_all(ini)
    assert [line.key for line in lines if line.key] == ["verbose", "logfile"]
    assert [(error.filename, error.lineno) for error in errors] == [(inner, 2), (ini, 3)]


def test_value_before_any_section_is_an_error(tmp_path: Path) -> None:
    ini = write(tmp_path / "a.ini", "listen_port = 1\n[pgbouncer]\n")
    with pytest.raises(ConfigError, match="without section") as info:
        lex_ini(ini)
    assert info.value.lineno == 1


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="could not load"):
        lex_ini(str(tmp_path / "nope.ini"))


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "a.ini"
    path.write_bytes(b"[pgbouncer]\nlogfile = /tmp/\xff\n")
    with pytest.raises(ConfigError, match="UTF-8") as info:
        lex_ini(str(path))
    assert info.value.lineno == 2


class TestInclude:
    def test_include_is_relative_to_the_working_directory(self, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        (tmp_path / "conf.d").mkdir()
        write(tmp_path / "dbs.ini", "app = host=a\n")
        main = write(tmp_path / "conf.d" / "main.ini",
                     "[databases]\n%include dbs.ini\nother = host=b\n")
        monkeypatch.chdir(tmp_path)
        assert pairs(main) == [("databases", "app", "host=a"), ("databases", "other", "host=b")]

    def test_included_file_inherits_and_changes_the_current_section(self, tmp_path: Path) -> None:
        inner = write(tmp_path / "inner.ini", "first = host=a\n[pgbouncer]\n")
        main = write(tmp_path / "main.ini", f"[databases]\n%include {inner}\nlisten_port = 1\n")
        assert pairs(main) == [("databases", "first", "host=a"),
                               ("pgbouncer", "listen_port", "1")]

    def test_nested_includes_up_to_the_limit(self, tmp_path: Path) -> None:
        leaf = write(tmp_path / f"f{MAX_INCLUDE_DEPTH}.ini", "[pgbouncer]\nlisten_port = 9\n")
        for level in range(MAX_INCLUDE_DEPTH - 1, -1, -1):
            leaf = write(tmp_path / f"f{level}.ini", f"%include {leaf}\n")
        assert pairs(leaf) == [("pgbouncer", "listen_port", "9")]

    def test_one_level_too_deep_is_an_error(self, tmp_path: Path) -> None:
        leaf = write(tmp_path / "leaf.ini", "[pgbouncer]\n")
        for level in range(MAX_INCLUDE_DEPTH + 1):
            leaf = write(tmp_path / f"f{level}.ini", f"%include {leaf}\n")
        with pytest.raises(ConfigError, match="too deep"):
            lex_ini(leaf)

    def test_include_loop_is_stopped_by_the_depth_limit(self, tmp_path: Path) -> None:
        first, second = tmp_path / "a.ini", tmp_path / "b.ini"
        write(first, f"[pgbouncer]\n%include {second}\n")
        write(second, f"%include {first}\n")
        with pytest.raises(ConfigError, match="include nesting level too deep"):
            lex_ini(str(first))

    def test_missing_include_names_the_including_line(self, tmp_path: Path) -> None:
        main = write(tmp_path / "main.ini", "[pgbouncer]\n\n%include /nonexistent/x.ini\n")
        with pytest.raises(ConfigError, match="/nonexistent/x.ini") as info:
            lex_ini(main)
        assert (info.value.filename, info.value.lineno) == (main, 3)

    def test_include_errors_name_the_included_file(self, tmp_path: Path) -> None:
        inner = write(tmp_path / "inner.ini", "[pgbouncer]\nbroken\n")
        main = write(tmp_path / "main.ini", f"%include {inner}\n")
        with pytest.raises(ConfigError) as info:
            lex_ini(main)
        assert (info.value.filename, info.value.lineno) == (inner, 2)

    def test_percent_include_needs_a_blank_after_it(self, tmp_path: Path) -> None:
        main = write(tmp_path / "main.ini", "[pgbouncer]\n%includex\n")
        with pytest.raises(ConfigError, match="syntax error"):
            lex_ini(main)
