"""auth_file (userlist.txt) parsing."""
from __future__ import annotations

import pytest

from bouncer.auth.userlist import load_userlist, parse_userlist


def test_basic_entries_and_secrets():
    text = ('"alice" "plain pw"\n'
            '"bob" "md59be8ca6530942872ce7292e98ad64683"\n'
            '"carol" "SCRAM-SHA-256$4096:c2FsdA==$a:b"\n')
    users, warnings = parse_userlist(text)
    assert users == {"alice": "plain pw", "bob": "md59be8ca6530942872ce7292e98ad64683",
                     "carol": "SCRAM-SHA-256$4096:c2FsdA==$a:b"}
    assert warnings == []


def test_doubled_quote_is_a_literal_quote():
    users, _ = parse_userlist('"o""brien" "say ""hi"""\n')
    assert users == {'o"brien': 'say "hi"'}


def test_comments_blank_lines_and_extra_fields():
    text = '; comment\n# also comment\n\n   \n  "dave"\t"pw"  "extra" ignored\r\n'
    assert parse_userlist(text) == ({"dave": "pw"}, [])


def test_empty_password_is_kept():
    assert parse_userlist('"eve" ""') == ({"eve": ""}, [])


def test_later_duplicate_wins():
    users, _ = parse_userlist('"frank" "old"\n"frank" "new"\n')
    assert users == {"frank": "new"}


@pytest.mark.parametrize("line", [
    'alice "topsecret"',          # unquoted user
    '"alice"',                    # no password
    '"alice" "topsecret',         # unterminated password
    '"alice""topsecret"',         # no separator: one field holding a quote
    '"alice" topsecret',          # unquoted password
])
def test_malformed_line_warns_without_leaking_and_is_skipped(line):
    users, warnings = parse_userlist(f'"ok" "fine"\n{line}\n"ok2" "fine"\n', "/etc/ul.txt")
    assert users == {"ok": "fine", "ok2": "fine"}
    assert len(warnings) == 1
    assert warnings[0].startswith("/etc/ul.txt:2: ")
    assert "topsecret" not in warnings[0]


def test_form_feed_inside_password_does_not_split_the_line():
    assert parse_userlist('"gina" "a\fb"\n')[0] == {"gina": "a\fb"}


def test_load_userlist_reads_file_and_names_it(tmp_path):
    path = tmp_path / "userlist.txt"
    path.write_bytes(b'"h\xc3\xa9l\xc3\xa8ne" "pw"\nbroken\n')
    users, warnings = load_userlist(str(path))
    assert users == {"hélène": "pw"}
    assert warnings == [f"{path}:2: broken auth file line skipped (expected \"user\" \"password\")"]


def test_load_userlist_keeps_non_utf8_password_bytes(tmp_path):
    path = tmp_path / "userlist.txt"
    path.write_bytes(b'"ivan" "caf\xe9"\n')
    users, _ = load_userlist(str(path))
    assert users["ivan"].encode("utf-8", "surrogateescape") == b"caf\xe9"


def test_load_userlist_missing_file_raises(tmp_path):
    with pytest.raises(OSError):
        load_userlist(str(tmp_path / "absent.txt"))
