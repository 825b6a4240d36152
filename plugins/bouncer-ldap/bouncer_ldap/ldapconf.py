"""What OpenLDAP's ldap.conf says about TLS, so that a PgBouncer set-up keeps its certificate
checks: PgBouncer's libldap reads ``$LDAPCONF`` (or ``/etc/ldap/ldap.conf``) for
``TLS_REQCERT`` and ``TLS_CACERT``; ldap3 reads nothing, so the plugin does (``tls_verify =
ldap.conf``, its default).  The parser is sans-IO; :func:`read_ldap_conf` reads the file."""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

DEFAULT_PATH = "/etc/ldap/ldap.conf"
#: TLS_REQCERT values under which libldap does not check the server's certificate.
NO_CHECK = ("never", "allow")


def parse_ldap_conf(text: str) -> Dict[str, str]:
    """``KEYWORD value`` lines (keywords case-insensitive, ``#`` comments); the last wins."""
    found = {}
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if len(words) == 2 and not words[0].startswith("#"):
            found[words[0].upper()] = words[1].strip()
    return found


def verifies(conf: Mapping[str, str]) -> bool:
    """libldap's default is ``demand``; ``try`` and ``hard`` refuse a bad certificate too."""
    return conf.get("TLS_REQCERT", "demand").lower() not in NO_CHECK


def ca_file(conf: Mapping[str, str]) -> str:
    return conf.get("TLS_CACERT", "")


def ldap_conf_path(environ: Optional[Mapping[str, str]] = None) -> str:
    """``$LDAPCONF``, as libldap looks it up, else Debian's path."""
    return (os.environ if environ is None else environ).get("LDAPCONF") or DEFAULT_PATH


def read_ldap_conf(path: str) -> Dict[str, str]:
    """The file's settings; none when it does not exist or cannot be read (as libldap)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as conf:
            return parse_ldap_conf(conf.read())
    except OSError:
        return {}
