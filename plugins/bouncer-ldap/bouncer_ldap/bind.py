"""Checking a password against the directory, as PgBouncer's ldapauth.c does: a simple bind as
``ldapprefix`` + user + ``ldapsuffix``, or search+bind (bind as ``ldapbinddn`` or anonymously,
find the one entry of the user, bind as its DN with the password).

Blocking ldap3 calls: under bouncer the sockets are gevent's (bouncer's cli monkey-patches), so
a bind waits cooperatively; every network operation is bounded by *timeout*, and the plugin
bounds the whole check too.  Failures are log lines in PgBouncer's words, returned, not raised:
the client only ever hears "LDAP authentication failed".
"""
from __future__ import annotations

import math
import re
import ssl
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from ldap3 import BASE, LEVEL, NO_ATTRIBUTES, SIMPLE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException

from bouncer_ldap.options import FILTER_UNSAFE, LdapOptions

_SCOPES = {"base": BASE, "one": LEVEL, "sub": SUBTREE}
#: What libldap says when no server answers (PgBouncer's log lines end with it).
UNREACHABLE = "Can't contact LDAP server"
_WRAPPED = re.compile(r"""[(\[]*['"](.*?)['"],?[)\]]*""", re.S)


@dataclass(frozen=True)
class TlsPolicy:
    """How ldaps and ldaptls=1 check the server's certificate (the plugin's settings)."""

    verify: bool
    ca_file: str

    def ldap3_tls(self) -> Tls:
        return Tls(validate=ssl.CERT_REQUIRED if self.verify else ssl.CERT_NONE,
                   ca_certs_file=self.ca_file or None)


class _Failed(Exception):
    """A step failed; the message is the warning to log."""


def check_password(options: LdapOptions, user: str, password: str, timeout: float,
                   tls: TlsPolicy) -> List[str]:
    """Whether *password* is *user*'s: an empty list when it is, else the warnings to log
    (PgBouncer's lines).  Never raises for what the directory or the network does."""
    if not password:
        return ["LDAP login refused: empty password (it would be an anonymous bind)"]
    try:
        dn = _find_dn(options, user, timeout, tls) if options.search_bind \
            else options.bind_dn(user)
        _bind_as(options, dn, password, timeout, tls)
    except _Failed as failed:
        return [line for line in str(failed).split("\n") if line]
    return []


def _find_dn(options: LdapOptions, user: str, timeout: float, tls: TlsPolicy) -> str:
    if FILTER_UNSAFE.intersection(user) or "\0" in user:
        raise _Failed("invalid character in user name for LDAP authentication")
    binddn = options.binddn or ""
    conn, result = _bind(options, binddn, options.bindpasswd or "", timeout, tls)
    if conn is None:
        raise _Failed(f'could not perform initial LDAP bind for ldapbinddn "{binddn}" on '
                      f'server "{options.describe()}": {result}')
    search_filter = _parenthesized(options.search_filter(user))
    try:
        entries = _search(conn, options, search_filter)
    finally:
        _unbind(conn)
    if len(entries) != 1:
        raise _Failed(_not_one(user, search_filter, options, len(entries)))
    return entries[0]


def _search(conn: Connection, options: LdapOptions, search_filter: str) -> List[str]:
    """The DNs that match (no attributes fetched: only the DN is needed)."""
    attribute = options.searchattribute or "uid"
    attributes = NO_ATTRIBUTES if options.searchfilter else [attribute]
    try:
        conn.search(options.basedn, search_filter, search_scope=_SCOPES[options.scope],
                    attributes=attributes)
    except LDAPException as exc:
        raise _Failed(f'could not search LDAP for filter "{search_filter}" on server '
                      f'"{options.describe()}": {_reason(exc)}') from None
    if conn.result.get("result") not in (0, None):
        raise _Failed(f'could not search LDAP for filter "{search_filter}" on server '
                      f'"{options.describe()}": {conn.result.get("description")}')
    return [entry["dn"] for entry in conn.response or () if entry.get("type") == "searchResEntry"]


def _not_one(user: str, search_filter: str, options: LdapOptions, count: int) -> str:
    where = f'LDAP search for filter "{search_filter}" on server "{options.describe()}"'
    if count == 0:
        return f'LDAP user "{user}" does not exist\n{where} returned no entries.'
    return f'LDAP user "{user}" is not unique\n{where} returned {count} entries.'


def _bind_as(options: LdapOptions, dn: str, password: str, timeout: float,
             tls: TlsPolicy) -> None:
    conn, result = _bind(options, dn, password, timeout, tls)
    if conn is None:
        raise _Failed(f"LDAP login failed for user {dn} on server {options.describe()}: "
                      f"{result}")
    _unbind(conn)


def _bind(options: LdapOptions, dn: str, password: str, timeout: float,
          tls: TlsPolicy) -> Tuple[Optional[Connection], str]:
    """A bound connection to the first server that answers, or None and why not."""
    why = UNREACHABLE
    for host in options.servers:
        server = Server(host, port=options.port, use_ssl=options.scheme == "ldaps",
                        get_info="NO_INFO", tls=tls.ldap3_tls(), connect_timeout=timeout)
        # ldap3 packs receive_timeout into SO_RCVTIMEO: whole seconds only.
        conn = Connection(server, user=dn or None, password=password or None,
                          authentication=SIMPLE if dn else None, auto_bind="NONE",
                          read_only=True, receive_timeout=max(1, math.ceil(timeout)),
                          auto_referrals=False)
        try:
            if options.starttls and not conn.start_tls(read_server_info=False):
                # PgBouncer's words: "could not start LDAP TLS session: ..., server: ..."
                why = f"could not start LDAP TLS session: {conn.result.get('description')}"
            elif conn.bind(read_server_info=False):
                return conn, ""
            else:
                # The server answered: a wrong password is not a reason to try the next one.
                _unbind(conn)
                return None, str(conn.result.get("description") or "bind refused")
        except LDAPException as exc:
            why = _reason(exc)
        _unbind(conn)
    return None, why


def _reason(exc: LDAPException) -> str:
    # ldap3 nests the cause in str()ed tuples: "(\"('socket ssl wrapping error: ...',)\",)".
    detail = str(exc.args[0] if exc.args else exc)
    while True:
        wrapped = _WRAPPED.fullmatch(detail)
        if wrapped is None:
            break
        detail = wrapped.group(1)
    return f"{UNREACHABLE} ({detail})" if isinstance(exc, LDAPCommunicationError) else detail


def _parenthesized(search_filter: str) -> str:
    """libldap takes ``uid=x`` for ``(uid=x)`` (PgBouncer's tests write it so); ldap3 does not."""
    text = search_filter.strip()
    return text if text.startswith("(") else f"({text})"


def _unbind(conn: Any) -> None:
    try:
        conn.unbind()
    except LDAPException:
        pass  # closing a connection that already failed: nothing left to release
