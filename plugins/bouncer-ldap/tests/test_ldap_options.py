"""The option parser: PostgreSQL's and PgBouncer's syntax, PgBouncer's rules and words, and
input no operator meant (it must be refused with a reason, never crash or half-read)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bouncer_ldap.options import (LdapOptionError, LdapOptions, ldap_options,
                                  options_from_string, parse_ldap_url, parse_option_string)


def test_pgbouncer_docs_example_is_search_bind_from_the_url() -> None:
    options = options_from_string('ldapurl="ldap://127.0.0.1:12345/dc=example,dc=net?uid?sub"')
    assert options == LdapOptions(servers=("127.0.0.1",), port=12345, basedn="dc=example,dc=net",
                                  searchattribute="uid", scope="sub")
    assert options.search_bind
    assert options.search_filter("ldapuser1") == "(uid=ldapuser1)"


def test_simple_bind_with_quoted_prefix_and_suffix() -> None:
    options = options_from_string('ldapserver=127.0.0.1 ldapport=3890 ldapprefix="uid=" '
                                  'ldapsuffix=",dc=example,dc=net"')
    assert not options.search_bind
    assert options.bind_dn("ldapuser1") == "uid=ldapuser1,dc=example,dc=net"
    assert (options.servers, options.port, options.scheme) == (("127.0.0.1",), 3890, "ldap")


def test_items_may_be_separated_by_commas_and_quotes_doubled() -> None:
    pairs = parse_option_string(' ldapserver="a b" , ldapbasedn="o=""x""",ldaptls=1 ')
    assert pairs == [("ldapserver", "a b"), ("ldapbasedn", 'o="x"'), ("ldaptls", "1")]
    options = ldap_options(pairs)
    assert options.servers == ("a", "b") and options.starttls


def test_defaults_ports_by_scheme_and_later_items_override() -> None:
    assert options_from_string("ldapserver=h ldapbasedn=dc=x").port == 389
    assert options_from_string("ldapserver=h ldapbasedn=dc=x ldapscheme=ldaps").port == 636
    assert options_from_string("ldapserver=h ldapserver=k ldapbasedn=dc=x").servers == ("k",)
    assert not options_from_string("ldapserver=h ldapbasedn=dc=x ldaptls=yes").starttls


def test_search_filter_replaces_every_username_placeholder() -> None:
    options = options_from_string('ldapurl="ldap://h/dc=x??sub?(|(uid=$username)'
                                  '(mail=$username))"')
    assert options.search_filter("bob") == "(|(uid=bob)(mail=bob))"
    assert options.scope == "sub" and options.searchattribute is None


def test_url_without_scope_searches_the_base_only_as_rfc_4516_says() -> None:
    assert parse_ldap_url("ldaps://h/dc=x")["scope"] == "base"
    assert parse_ldap_url("ldap://[::1]:10389/dc=a%20b")["basedn"] == "dc=a b"
    assert parse_ldap_url("ldap://[::1]:10389/dc=x")["servers"] == ("::1",)


def test_hba_line_options_arrive_as_pairs() -> None:
    options = ldap_options({"ldapserver": "127.0.0.1", "ldapbasedn": "dc=example,dc=net",
                            "ldapsearchfilter": "uid=$username"}.items())
    assert options.search_filter("u") == "uid=u"  # bind.py parenthesizes, as libldap accepts


@pytest.mark.parametrize("text, message", [
    ("ldapserver=h", 'requires argument "ldapbasedn", "ldapprefix", or "ldapsuffix"'),
    ("ldapserver=h ldapprefix=uid= ldapbasedn=dc=x",
     "cannot mix options for simple bind and search+bind modes"),
    ("ldapserver=h ldapbasedn=dc=x ldapsearchattribute=uid ldapsearchfilter=(uid=$username)",
     "cannot use ldapsearchattribute together with ldapsearchfilter"),
    ("ldapbasedn=dc=x", "LDAP server not specified"),
    ("ldapserver=h ldapbasedn=dc=x ldapport=0", 'invalid LDAP port number: "0"'),
    ("ldapserver=h ldapbasedn=dc=x ldapport=65536", 'invalid LDAP port number'),
    ("ldapserver=h ldapbasedn=dc=x ldapport=0x10", 'invalid LDAP port number'),
    ("ldapserver=h ldapbasedn=dc=x ldapscheme=http", 'invalid ldapscheme value: "http"'),
    ("ldapserver=h ldapbasedn=dc=x ldapfoo=1", 'invalid LDAP option: "ldapfoo"'),
    ('ldapurl="http://h/dc=x"', "unsupported LDAP URL scheme: http"),
    ('ldapurl="ldap://h/dc=x?uid?deep"', 'invalid LDAP URL scope "deep"'),
    ('ldapurl="ldap://h/dc=x?uid?sub?(uid=x)?!ext"', "extensions are not supported"),
    ('ldapurl="ldap://h:99999/dc=x"', "could not parse LDAP URL"),
    ("ldapserver= h", 'a blank may not follow "="'),
    ("ldapserver", "not in name=value format"),
    ("=h", "not in name=value format"),
    ('ldapserver="h', "unterminated quoted value"),
    ('"ldapserver=h', "unterminated quoted name"),
    ('ldapserver=""', 'has an empty value'),
    ("ldapserver=h,,ldapbasedn=x", "not in name=value format"),
    ("ldapserver=h\0 ldapbasedn=x", "NUL"),
    ("ldapserver=" + "h" * 9000, "longer than"),
])
def test_hostile_or_mistaken_options_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(LdapOptionError) as refused:
        options_from_string(text)
    assert message in str(refused.value)


@given(st.text(max_size=200))
def test_any_text_is_options_or_a_refusal_never_a_crash(text: str) -> None:
    try:
        options = options_from_string(text)
    except LdapOptionError:
        return
    assert options.servers and 0 < options.port < 65536


@given(st.lists(st.tuples(st.sampled_from(["ldapserver", "ldapbasedn", "ldapprefix"]),
                          st.text(alphabet=st.characters(blacklist_characters="\0"),
                                  min_size=1, max_size=20)), max_size=4))
def test_quoting_any_value_reads_it_back_exactly(pairs) -> None:
    text = " ".join(f'{name}="{value.replace(chr(34), chr(34) * 2)}"' for name, value in pairs)
    assert parse_option_string(text) == pairs
