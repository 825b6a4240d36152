"""ldap.conf's TLS settings, read as libldap reads them."""
from __future__ import annotations

from bouncer_ldap.ldapconf import ca_file, ldap_conf_path, parse_ldap_conf, verifies


def test_pgbouncers_test_setting_turns_the_check_off() -> None:
    assert not verifies(parse_ldap_conf("TLS_REQCERT never\n"))
    assert not verifies(parse_ldap_conf("tls_reqcert   ALLOW"))


def test_the_check_is_on_unless_said_otherwise() -> None:
    assert verifies({})
    for value in ("demand", "hard", "try"):
        assert verifies(parse_ldap_conf(f"TLS_REQCERT {value}"))
    assert verifies(parse_ldap_conf("# TLS_REQCERT never\nBASE dc=x\n"))


def test_ca_file_and_last_line_wins() -> None:
    conf = parse_ldap_conf("TLS_CACERT /a.pem\nURI ldap://h\nTLS_CACERT   /etc/ssl/b b.pem \n")
    assert ca_file(conf) == "/etc/ssl/b b.pem"
    assert ca_file(parse_ldap_conf("TLS_CACERT")) == ""


def test_ldapconf_environment_variable_names_the_file() -> None:
    assert ldap_conf_path({"LDAPCONF": "/tmp/ldap.conf"}) == "/tmp/ldap.conf"
    assert ldap_conf_path({}) == "/etc/ldap/ldap.conf"
