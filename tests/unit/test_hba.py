"""pg_hba.conf parsing and matching: the rules/eval table in data/hba, then parse errors,
@file resolution, options, the auth-file lexer and PostgreSQL's refusal messages."""
from __future__ import annotations

import ipaddress
import shlex
from pathlib import Path

import pytest

from bouncer.auth.authfile import Token, tokenize_auth_file
from bouncer.auth.hba import load_hba, no_entry_message, parse_hba, reject_message
from bouncer.errors import ConfigError

DATA = Path(__file__).parent / "data" / "hba"


def _eval_cases():
    lines = (DATA / "rules.eval").read_text().splitlines()
    for lineno, line in enumerate(lines, 1):
        columns = shlex.split(line, comments=True)
        if columns:
            yield pytest.param(*columns[:6], columns[6:] == ["replication"], id=f"eval:{lineno}")


@pytest.fixture(scope="module")
def table_rules():
    return load_hba(str(DATA / "rules.conf"))


@pytest.mark.parametrize("expected, conn_type, tls, address, database, user, replication",
                         list(_eval_cases()))
def test_rules_table(table_rules, expected, conn_type, tls, address, database, user,
                     replication):
    rule = table_rules.match(
        conn_type=conn_type, tls=tls == "tls",
        address=None if address == "-" else ipaddress.ip_address(address),
        database=database, user=user, replication=replication)
    assert (rule.method if rule else "none") == expected


def test_table_skips_gss_lines_and_keeps_file_line_numbers(table_rules):
    assert "hostgssenc" not in {rule.conn_type for rule in table_rules.rules}
    continued = table_rules.match(conn_type="host", tls=False,
                                  address=ipaddress.ip_address("24.0.0.1"),
                                  database="cont", user="contuser")
    text = (DATA / "rules.conf").read_text().splitlines()
    assert text[continued.lineno - 1].split()[:2] == ["host", "cont"]


def _parse(text, files=None):
    files = files or {}

    def read_file(path):
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory")
        return files[path]

    return parse_hba(text, "/etc/bouncer/hba.conf", read_file=read_file)


def _only_rule(text, files=None):
    (rule,) = _parse(text, files).rules
    return rule


# ---------------------------------------------------------------- parse errors


PARSE_ERRORS = [
    ("include other.conf", '"include" directives are not supported'),
    ("include_dir conf.d", '"include_dir" directives are not supported'),
    ("include_if_exists x.conf", '"include_if_exists" directives are not supported'),
    ("host all +admins 10.0.0.0/8 md5", 'group membership ("+admins") is not supported'),
    ("host all a,+admins 10.0.0.0/8 md5", 'group membership ("+admins") is not supported'),
    ("host all /^adm 10.0.0.0/8 md5", "regular expressions"),
    ('host "/^db" all 10.0.0.0/8 md5', "regular expressions"),
    ("host samerole all 10.0.0.0/8 md5", '"samerole" is not supported in the database column'),
    ("host samegroup all 10.0.0.0/8 md5", '"samegroup" is not supported'),
    ("host all all samehost md5", '"samehost" is not supported'),
    ("host all all samenet md5", '"samenet" is not supported'),
    ("host all all db.example.com md5", "host names are not supported"),
    ("host all all .example.com md5", "host names are not supported"),
    ("host all all 10.0.0.0/33 md5", "invalid CIDR mask"),
    ("host all all ::1/129 md5", "invalid CIDR mask"),
    ("host all all 10.0.0.0/x md5", "invalid CIDR mask"),
    ("host all all 10.0.0.0 255.0.255.0 md5", 'netmask "255.0.255.0" is not contiguous'),
    ("host all all 10.0.0.0 ffff:: md5", "not the same family"),
    ("host all all 10.0.0.0 md5", 'invalid netmask "md5"'),
    ("host all all 10.0.0.0,11.0.0.0/8 md5", "multiple values specified for IP address"),
    ("host all all 10.0.0.0/8 ldap ldapserver=x foo=1",
     'unrecognized authentication option name: "foo"'),
    ("host all all 10.0.0.0/8 pam", 'authentication method "pam" is not supported'),
    ("host all all 10.0.0.0/8 gss", 'invalid authentication method "gss"'),
    ("host all all 10.0.0.0/8 md5,trust", "multiple values specified for authentication"),
    ("hostx all all 10.0.0.0/8 md5", 'invalid connection type "hostx"'),
    ("local all", "end-of-line before user specification"),
    ("host all all", "end-of-line before IP address specification"),
    ("host all all 10.0.0.0/8", "end-of-line before authentication method"),
    ("host all all 10.0.0.0 255.0.0.0", "end-of-line before authentication method"),
    ("host all all 10.0.0.0/8 md5 map=x", '"map" is only valid for authentication methods'),
    ("host all all 10.0.0.0/8 cert clientcert=verify-ca",
     'clientcert can only be configured for "hostssl" rows'),
    ("hostssl all all 10.0.0.0/8 md5 clientcert=1", 'invalid value for clientcert: "1"'),
    ("hostssl all all 10.0.0.0/8 cert clientcert=verify-ca", 'only accepts "verify-full"'),
    ("host all all 10.0.0.0/8 md5 include_realm=0", 'unrecognized authentication option'),
    ("local all all peer map", "not in name=value format"),
    ("local all all peer map=", "not in name=value format"),
    ('host "unterminated all 10.0.0.0/8 md5', "unterminated quoted string"),
    ("host a,,b all 10.0.0.0/8 md5", "unexpected comma"),
    (", host all all 10.0.0.0/8 md5", "unexpected comma"),
    ("host all all 10.0.0.0/8 md5 map=x,", "comma at end of line"),
    ("host @ all 10.0.0.0/8 md5", '"@" must be followed by a file name'),
    ("host all @missing.txt 10.0.0.0/8 md5",
     "cannot read @missing.txt (/etc/bouncer/missing.txt): No such file or directory"),
]


@pytest.mark.parametrize("line, message", PARSE_ERRORS)
def test_parse_error_names_file_line_and_cause(line, message):
    text = "# leading comment\n\n" + line + "\n"
    with pytest.raises(ConfigError) as info:
        _parse(text)
    assert info.value.filename == "/etc/bouncer/hba.conf"
    assert info.value.lineno == 3
    assert message in info.value.message
    assert str(info.value).startswith("/etc/bouncer/hba.conf:3: ")


def test_error_on_continued_line_reports_its_first_line():
    with pytest.raises(ConfigError) as info:
        _parse("local all all trust\nhost all \\\n  all \\\n  10.0.0.0/8 pam\n")
    assert info.value.lineno == 2


def test_error_inside_an_at_file_points_into_that_file():
    files = {"/etc/bouncer/users.txt": "alice\n# staff\nbob, +staff\n"}
    with pytest.raises(ConfigError) as info:
        _parse("host all @users.txt 10.0.0.0/8 md5\n", files)
    assert (info.value.filename, info.value.lineno) == ("/etc/bouncer/users.txt", 3)
    assert "+staff" in info.value.message


def test_self_including_at_file_is_stopped_by_the_depth_limit():
    files = {"/etc/bouncer/loop.txt": "a @loop.txt\n"}
    with pytest.raises(ConfigError, match="nested more than 10 deep"):
        _parse("host all @loop.txt 10.0.0.0/8 md5\n", files)


def test_gss_encrypted_lines_are_accepted_without_checking_the_rest():
    rules = _parse("hostgssenc all all 0.0.0.0/0 gss include_realm=0\n"
                   "hostnogssenc whatever\n"
                   "local all all trust\n")
    assert [rule.conn_type for rule in rules.rules] == ["local"]


def test_load_hba_reports_an_unreadable_file(tmp_path):
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError, match="cannot read HBA file") as info:
        load_hba(str(missing))
    assert info.value.filename == str(missing)


def test_empty_file_matches_nothing():
    rules = _parse("# nothing but comments\n\n")
    assert rules.rules == ()
    assert rules.match(conn_type="local", tls=False, address=None, database="d", user="u") is None


# ---------------------------------------------------------------- what a rule records


def test_quoted_keyword_is_a_name_and_bare_keyword_is_a_keyword():
    rule = _only_rule('host all,"all",sameuser,"sameuser" all,"all" ::/0 md5\n')
    assert rule.database_keywords == {"all", "sameuser"}
    assert rule.databases == ("all", "sameuser")
    assert rule.user_keywords == {"all"}
    assert rule.users == ("all",)


def test_quoted_plus_and_at_are_literal_names():
    rule = _only_rule('local "@file" "+staff" trust\n')
    assert (rule.databases, rule.users) == (("@file",), ("+staff",))


def test_options_are_recorded():
    rule = _only_rule("hostssl all all 10.0.0.0/8 cert map=certmap clientcert=verify-full\n")
    assert dict(rule.options) == {"map": "certmap", "clientcert": "verify-full"}
    assert rule.clientcert == "verify-full"


def test_quoted_option_value_may_hold_blanks():
    assert _only_rule('local all all peer map="my map"\n').options["map"] == "my map"


@pytest.mark.parametrize("line, clientcert", [
    ("hostssl all all 10.0.0.0/8 cert", "verify-full"),
    ("hostssl all all 10.0.0.0/8 md5 clientcert=verify-ca", "verify-ca"),
    ("hostssl all all 10.0.0.0/8 md5", None),
])
def test_clientcert_is_implied_by_cert(line, clientcert):
    assert _only_rule(line + "\n").clientcert == clientcert


def test_options_cannot_be_changed():
    rule = _only_rule("local all all peer map=m\n")
    with pytest.raises(TypeError):
        rule.options["map"] = "other"


@pytest.mark.parametrize("address, network", [
    ("10.1.2.3/8", "10.0.0.0/8"),
    ("10.0.0.0 255.255.0.0", "10.0.0.0/16"),
    ("10.0.0.1 255.255.255.255", "10.0.0.1/32"),
    ("0.0.0.0 0.0.0.0", "0.0.0.0/0"),
    ("2001:db8::1 ffff:ffff::", "2001:db8::/32"),
    ("::1/128", "::1/128"),
])
def test_address_forms(address, network):
    rule = _only_rule(f"host all all {address} md5\n")
    assert rule.network == ipaddress.ip_network(network)


def test_address_all_means_any_network():
    assert _only_rule("host all all all trust\n").network is None


# ---------------------------------------------------------------- @file


def test_at_file_resolves_relative_to_hba_directory_and_nests():
    files = {
        "/etc/bouncer/dbs.txt": 'd1,d2\n"d 3" @sub/more.txt # comment\n',
        "/etc/bouncer/sub/more.txt": "d4 all\n",
        "/srv/abs.txt": "u1\n",
    }
    rule = _only_rule("host @dbs.txt @/srv/abs.txt 10.0.0.0/8 md5\n", files)
    assert rule.databases == ("d1", "d2", "d 3", "d4")
    assert rule.database_keywords == {"all"}
    assert rule.users == ("u1",)


def test_load_hba_reads_at_files_from_disk(tmp_path):
    (tmp_path / "users.txt").write_text("alice bob\n")
    (tmp_path / "hba.conf").write_text("local all @users.txt trust\n")
    rule = load_hba(str(tmp_path / "hba.conf")).rules[0]
    assert rule.users == ("alice", "bob")


# ---------------------------------------------------------------- matching


def test_match_rejects_inconsistent_arguments():
    rules = _parse("local all all trust\n")
    with pytest.raises(ValueError):
        rules.match(conn_type="tcp", tls=False, address=None, database="d", user="u")
    with pytest.raises(ValueError):
        rules.match(conn_type="host", tls=False, address=None, database="d", user="u")
    with pytest.raises(ValueError):
        rules.match(conn_type="local", tls=False, address=ipaddress.ip_address("::1"),
                    database="d", user="u")


def test_match_returns_the_first_matching_line():
    rules = _parse("host all all 10.0.0.0/8 md5\nhost all all 10.1.0.0/16 trust\n")
    rule = rules.match(conn_type="host", tls=False, address=ipaddress.ip_address("10.1.1.1"),
                       database="d", user="u")
    assert (rule.lineno, rule.method) == (1, "md5")


def test_ipv4_rule_does_not_match_a_native_ipv6_client():
    rules = _parse("host all all 0.0.0.0/0 trust\n")
    assert rules.match(conn_type="host", tls=False, address=ipaddress.ip_address("2001:db8::1"),
                       database="d", user="u") is None


# ---------------------------------------------------------------- messages


@pytest.mark.parametrize("address, tls, replication, expected", [
    ("127.0.0.1", False, False,
     'no pg_hba.conf entry for host "127.0.0.1", user "x", database "y", no encryption'),
    ("::1", True, False,
     'no pg_hba.conf entry for host "::1", user "x", database "y", SSL encryption'),
    (None, False, False,
     'no pg_hba.conf entry for host "[local]", user "x", database "y", no encryption'),
    ("10.0.0.1", True, True,
     'no pg_hba.conf entry for replication connection from host "10.0.0.1", user "x", '
     "SSL encryption"),
])
def test_no_entry_message_uses_postgresql_wording(address, tls, replication, expected):
    addr = None if address is None else ipaddress.ip_address(address)
    assert no_entry_message(addr, "x", "y", tls, replication=replication) == expected


def test_reject_message_uses_postgresql_wording():
    addr = ipaddress.ip_address("10.0.0.1")
    assert reject_message(addr, "x", "y", False) == (
        'pg_hba.conf rejects connection for host "10.0.0.1", user "x", database "y", '
        "no encryption")
    assert reject_message(None, "x", "y", True, replication=True) == (
        'pg_hba.conf rejects replication connection for host "[local]", user "x", '
        "SSL encryption")


# ---------------------------------------------------------------- the shared lexer


def _fields(text):
    return [[[(t.text, t.quoted) for t in field] for field in line.fields]
            for line in tokenize_auth_file(text, "f")]


def test_lexer_quotes_commas_and_comments():
    assert _fields('a "b c",d # e "f\n') == [
        [[("a", False)], [("b c", True), ("d", False)]]]


def test_lexer_quote_in_the_middle_of_a_word_marks_it_quoted():
    assert _fields('ab"c d"e "x""y" ""\n') == [
        [[("abc de", True)], [('x"y', True)], [("", True)]]]


def test_lexer_continuation_joins_lines_and_crlf_is_a_newline():
    lines = list(tokenize_auth_file("a \\\r\nb\r\n\nc\n", "f"))
    assert [(line.lineno, len(line.fields)) for line in lines] == [(1, 2), (4, 1)]


def test_lexer_hash_inside_quotes_is_not_a_comment():
    assert _fields('"a#b" c#d\n') == [[[("a#b", True)], [("c", False)]]]


def test_token_keyword_needs_the_bare_word():
    assert Token("all").is_keyword("all")
    assert not Token("all", quoted=True).is_keyword("all")


def test_an_ldap_line_keeps_its_ldap_options_unquoted_for_the_plugin():
    """PgBouncer's own test lines: quoted values may hold commas, '=' and spaces."""
    rules = _parse('host all ldapuser1 0.0.0.0/0 ldap ldapserver=127.0.0.1 ldapport=389 '
                   'ldapprefix="uid=" ldapsuffix=",dc=example,dc=net"\n'
                   'host all all 0.0.0.0/0 ldap ldapurl="ldap://h:1/dc=x??sub?(|(uid=$username))"'
                   ' ldapserver="a b"\n')
    first, second = rules.rules
    assert first.method == "ldap"
    assert dict(first.options) == {"ldapserver": "127.0.0.1", "ldapport": "389",
                                   "ldapprefix": "uid=", "ldapsuffix": ",dc=example,dc=net"}
    assert dict(second.options) == {"ldapurl": "ldap://h:1/dc=x??sub?(|(uid=$username))",
                                    "ldapserver": "a b"}
