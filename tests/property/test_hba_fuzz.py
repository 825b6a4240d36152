"""Hostile text into the pg_hba.conf and pg_ident.conf parsers: a result or ConfigError, never
another exception; and whatever parses can be matched without raising."""
from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bouncer.auth.hba import parse_hba
from bouncer.auth.ident import parse_ident
from bouncer.errors import ConfigError

# Words the parsers treat specially, so random lines often get past the first column.
VOCABULARY = [
    "local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc", "include",
    "all", "sameuser", "samerole", "replication", "samehost", "samenet", "+grp", "/re", "@f",
    "@", "10.0.0.0/8", "10.0.0.0", "255.0.0.0", "255.0.255.0", "::1/128", "::1", "ffff::",
    "::ffff:1.2.3.4/120", "1.2.3.4/40", "fe80::1%eth0/64", "db.example.com",
    "trust", "reject", "md5", "password", "scram-sha-256", "cert", "peer", "ldap", "pam",
    "map=m", "clientcert=verify-ca", "clientcert=verify-full", "clientcert=1", "x=y", "map=",
    '"', '""', '"all"', ",", "#", "\\", "\\\n", "\n", " ", "\t", "\r\n", "\x00", "é",
]

random_text = st.text(max_size=300)
vocabulary_text = st.lists(
    st.one_of(st.sampled_from(VOCABULARY), st.text(max_size=4)), max_size=40,
).map(" ".join)

# Mostly well-formed lines, so that the matching properties below see real rules.
_name = st.one_of(st.sampled_from(["all", "sameuser", "replication", '"all"', "db", "user",
                                   "@f", "+g", "samerole"]),
                  st.from_regex(r"[a-z]{1,4}", fullmatch=True))
_names = st.lists(_name, min_size=1, max_size=3).map(",".join)
_address = st.sampled_from(["all", "10.0.0.0/8", "::1/128", "10.0.0.0 255.0.0.0", "0.0.0.0/0",
                            "::/0", "::ffff:0.0.0.0/96", "1.2.3.4/40", "samehost"])
_method = st.sampled_from(["trust", "reject", "md5", "password", "scram-sha-256", "cert",
                           "peer", "ldap"])
_options = st.lists(st.sampled_from(["map=m", "clientcert=verify-ca", "clientcert=verify-full"]),
                    max_size=2).map(" ".join)
_local_line = st.tuples(st.just("local"), _names, _names, _method, _options)
_host_line = st.tuples(st.sampled_from(["host", "hostssl", "hostnossl", "hostgssenc"]),
                       _names, _names, _address, _method, _options)
structured_text = st.lists(st.one_of(_local_line, _host_line).map(" ".join),
                           max_size=6).map("\n".join)

hba_text = st.one_of(random_text, vocabulary_text, structured_text)
addresses = st.one_of(st.none(), st.ip_addresses())
names = st.sampled_from(["all", "db", "user", "replication", "m", ""])


def _parse_or_none(text, included):
    try:
        return parse_hba(text, "/etc/hba.conf", read_file=lambda path: included)
    except ConfigError:
        return None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(hba_text, hba_text, addresses, st.booleans(), names, names, st.booleans())
def test_parse_hba_gives_rules_or_config_error_and_rules_can_be_matched(
        text, included, address, tls, database, user, replication):
    rules = _parse_or_none(text, included)
    if rules is None:
        return
    conn_type = "local" if address is None else "host"
    rule = rules.match(conn_type=conn_type, tls=tls, address=address, database=database,
                       user=user, replication=replication)
    if rule is not None:
        assert rule in rules.rules
        assert (rule.conn_type == "local") == (conn_type == "local")
        assert tls or rule.conn_type != "hostssl"
        assert not tls or rule.conn_type != "hostnossl"


@given(hba_text)
def test_parse_hba_survives_an_unreadable_at_file(text):
    def unreadable(path):
        raise PermissionError(13, "Permission denied")

    try:
        parse_hba(text, "hba.conf", read_file=unreadable)
    except ConfigError:
        pass


#: Networks of both families, IPv4-mapped ones included, around the addresses drawn below.
_networks = st.sampled_from(["0.0.0.0/0", "::/0", "::ffff:0.0.0.0/96", "::ffff:127.0.0.0/104",
                             "127.0.0.0/8", "10.0.0.0/8", "::1/128", "2001:db8::/32"])
_addresses = st.one_of(st.ip_addresses(),
                       st.ip_addresses(v=4).map(lambda v4: ipaddress.IPv6Address(
                           f"::ffff:{v4}")))


@given(st.lists(_networks, min_size=1, max_size=4), _addresses)
def test_an_address_matches_only_a_network_of_its_own_family_that_holds_it(networks, address):
    text = "".join(f"host all all {network} trust\n" for network in networks)
    rule = parse_hba(text, "hba.conf").match(conn_type="host", tls=False, address=address,
                                             database="db", user="user")
    fitting = [network for network in map(ipaddress.ip_network, networks)
               if network.version == address.version and address in network]
    if fitting:
        assert rule is not None and rule.network == fitting[0]
    else:
        assert rule is None


@given(st.text().filter(lambda name: "\n" not in name and not name.startswith("/")))
def test_any_quoted_name_reads_back_exactly(name):
    quoted = '"' + name.replace('"', '""') + '"'
    (rule,) = parse_hba(f"host {quoted} all 10.0.0.0/8 md5\n", "hba.conf").rules
    assert rule.databases == (name,)
    assert rule.database_keywords == frozenset()


@given(st.integers(0, 32), st.ip_addresses(v=4))
def test_netmask_column_equals_cidr(prefix, address):
    mask = ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask
    by_mask = parse_hba(f"host all all {address} {mask} md5\n", "f").rules[0].network
    by_cidr = parse_hba(f"host all all {address}/{prefix} md5\n", "f").rules[0].network
    assert by_mask == by_cidr


@given(st.one_of(random_text, vocabulary_text), names, names, names)
def test_parse_ident_gives_a_map_or_config_error(text, mapname, system_user, db_user):
    try:
        ident = parse_ident(text, "ident.conf")
    except ConfigError:
        return
    assert isinstance(ident.allows(mapname, system_user, db_user), bool)
    assert ident.has_map(mapname) == any(e.mapname == mapname for e in ident.entries)
