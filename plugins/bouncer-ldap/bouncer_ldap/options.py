"""LDAP options as PostgreSQL's pg_hba.conf and PgBouncer's ``auth_ldap_options`` write them:
parsed and checked without I/O, so a bad option is found by ``bouncer --check`` and the tests
need no directory.

``auth_ldap_options`` is one string of ``name=value`` items separated by blanks or commas; a
name or value may be double-quoted (``""`` inside quotes is a quote), which is how a value holds
blanks or commas: ``ldapsuffix=",dc=example,dc=net"``.  An HBA line's options arrive already
split into names and values (bouncer's HBA parser).  Both end in :func:`ldap_options`, which
applies PgBouncer's rules: the two modes (simple bind with ``ldapprefix``/``ldapsuffix``,
search+bind with ``ldapbasedn``) do not mix, ``ldapsearchattribute`` and ``ldapsearchfilter``
do not mix, and ``ldapurl`` fills scheme, server, port, base DN, attribute, scope and filter.
Unlike PgBouncer, which stops reading at the first malformed item and uses what came before,
a malformed item is an error: a half-read option list could bind somewhere unintended.
"""
from __future__ import annotations

import dataclasses
import urllib.parse
from dataclasses import dataclass
from typing import Iterable, List, Mapping, Optional, Tuple

#: The names PostgreSQL and PgBouncer know.
OPTION_NAMES = ("ldapserver", "ldapport", "ldapscheme", "ldaptls", "ldapbasedn", "ldapbinddn",
                "ldapbindpasswd", "ldapsearchattribute", "ldapsearchfilter", "ldapprefix",
                "ldapsuffix", "ldapurl")
SCOPES = ("base", "one", "sub")
DEFAULT_PORTS = {"ldap": 389, "ldaps": 636}
#: Characters refused in a user name in search+bind mode (PgBouncer and PostgreSQL): they
#: would let a user name inject its own search filter.
FILTER_UNSAFE = frozenset("*()\\/")
USERNAME_PLACEHOLDER = "$username"
#: PgBouncer's MAX_LDAP_CONFIG is 1024 bytes; leave room, but refuse what is plainly not options.
MAX_OPTIONS_LENGTH = 8192


class LdapOptionError(ValueError):
    """The options cannot be used; the message is PgBouncer's where it has one."""


@dataclass(frozen=True)
class LdapOptions:
    """Where and how to check a password.  ``servers`` empty never happens: refused here."""

    servers: Tuple[str, ...]
    port: int
    scheme: str = "ldap"
    starttls: bool = False
    prefix: Optional[str] = None
    suffix: Optional[str] = None
    basedn: Optional[str] = None
    binddn: Optional[str] = None
    bindpasswd: Optional[str] = None
    searchattribute: Optional[str] = None
    searchfilter: Optional[str] = None
    scope: str = "sub"

    @property
    def uses_tls(self) -> bool:
        return self.scheme == "ldaps" or self.starttls

    @property
    def search_bind(self) -> bool:
        return self.basedn is not None

    def bind_dn(self, user: str) -> str:
        """The DN of a simple bind: ``ldapprefix`` + user + ``ldapsuffix``."""
        return f"{self.prefix or ''}{user}{self.suffix or ''}"

    def search_filter(self, user: str) -> str:
        """The filter that finds the user's entry (``$username`` replaced, as PostgreSQL)."""
        if self.searchfilter is not None:
            return self.searchfilter.replace(USERNAME_PLACEHOLDER, user)
        return f"({self.searchattribute or 'uid'}={user})"

    def describe(self) -> str:
        """The servers, for log lines (never the bind password)."""
        return " ".join(self.servers)


def parse_option_string(text: str) -> List[Tuple[str, str]]:
    """``auth_ldap_options`` to (name, value) pairs, in order.

    :raises LdapOptionError: an item is not ``name=value``, a quote is not closed, a blank
        follows ``=``, or the text is absurdly long or holds a NUL.
    """
    if len(text) > MAX_OPTIONS_LENGTH:
        raise LdapOptionError(f"LDAP options longer than {MAX_OPTIONS_LENGTH} characters")
    if "\0" in text:
        raise LdapOptionError("LDAP options contain a NUL character")
    pairs = []
    pos = _skip_separators(text, 0)
    while pos < len(text):
        name, pos = _read_name(text, pos)
        value, pos = _read_value(text, pos, name)
        pairs.append((name, value))
        pos = _skip_separators(text, pos)
    return pairs


def _skip_separators(text: str, pos: int) -> int:
    """Blanks, at most one comma, blanks (PgBouncer's get_key_value)."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos < len(text) and text[pos] == ",":
        pos += 1
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _read_name(text: str, pos: int) -> Tuple[str, int]:
    if text.startswith('"', pos):
        name, pos = _read_quoted(text, pos, "name")
    else:
        end = pos
        while end < len(text) and text[end] not in '=,' and not text[end].isspace():
            end += 1
        name, pos = text[pos:end], end
    if not name or not text.startswith("=", pos):
        raise LdapOptionError(f'LDAP option not in name=value format at "{_excerpt(text, pos)}"')
    pos += 1
    if pos < len(text) and text[pos].isspace():
        raise LdapOptionError(f'no value after "{name}=" (a blank may not follow "=")')
    return name, pos


def _read_value(text: str, pos: int, name: str) -> Tuple[str, int]:
    if text.startswith('"', pos):
        value, pos = _read_quoted(text, pos, f'value of "{name}"')
    else:
        end = pos
        while end < len(text) and text[end] != "," and not text[end].isspace():
            end += 1
        value, pos = text[pos:end], end
    if not value:
        raise LdapOptionError(f'LDAP option "{name}" has an empty value')
    return value, pos


def _read_quoted(text: str, pos: int, what: str) -> Tuple[str, int]:
    """A double-quoted string from *pos* (its opening quote); ``""`` is one quote."""
    out = []
    pos += 1
    while pos < len(text):
        if text[pos] == '"':
            if text.startswith('""', pos):
                out.append('"')
                pos += 2
                continue
            return "".join(out), pos + 1
        out.append(text[pos])
        pos += 1
    raise LdapOptionError(f"unterminated quoted {what} in LDAP options")


def _excerpt(text: str, pos: int) -> str:
    return text[pos:pos + 30]


def ldap_options(pairs: Iterable[Tuple[str, str]]) -> LdapOptions:
    """Check (name, value) pairs, from :func:`parse_option_string` or an HBA line, and build the
    options; a later pair overrides an earlier one, as in PgBouncer.

    :raises LdapOptionError: an unknown name, a bad value, or options that do not fit together
        (PgBouncer's words).
    """
    values: dict = {}
    for name, value in pairs:
        if name not in OPTION_NAMES:
            raise LdapOptionError(f'invalid LDAP option: "{name}"')
        if name == "ldapurl":
            values.update(parse_ldap_url(value))
        else:
            values.update(_option_value(name, value))
    return _complete(values)


def _option_value(name: str, value: str) -> Mapping[str, object]:
    if name == "ldapport":
        return {"port": _port(value)}
    if name == "ldapscheme":
        if value not in DEFAULT_PORTS:
            raise LdapOptionError(f'invalid ldapscheme value: "{value}"')
        return {"scheme": value}
    if name == "ldaptls":
        return {"starttls": value == "1"}  # anything else is "no", as in PgBouncer
    if name == "ldapserver":
        return {"servers": tuple(value.split())}
    return {name[len("ldap"):]: value}


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise LdapOptionError(f'invalid LDAP port number: "{text}"')
    return int(text)


def parse_ldap_url(url: str) -> Mapping[str, object]:
    """RFC 4516 ``ldap[s]://host[:port]/basedn?attribute?scope?filter``, as PostgreSQL reads it:
    only the first attribute counts, the scope defaults to ``base`` (the RFC's default)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise LdapOptionError(f'could not parse LDAP URL "{url}": {exc}') from None
    if parts.scheme not in DEFAULT_PORTS:
        raise LdapOptionError(f"unsupported LDAP URL scheme: {parts.scheme}")
    # urlsplit keeps "?" parts in .query: basedn?attributes?scope?filter?extensions
    fields = (parts.query.split("?") + ["", "", "", ""])[:4]
    attributes, scope, search_filter, extensions = (urllib.parse.unquote(f) for f in fields)
    if extensions:
        raise LdapOptionError(f'LDAP URL extensions are not supported: "{url}"')
    if scope and scope not in SCOPES:
        raise LdapOptionError(f'invalid LDAP URL scope "{scope}" (base, one or sub)')
    found: dict = {"scheme": parts.scheme, "scope": scope or "base"}
    if host:
        found["servers"] = (host,)
    if port:
        found["port"] = port
    basedn = urllib.parse.unquote(parts.path.lstrip("/"))
    if basedn:
        found["basedn"] = basedn
    if attributes:
        found["searchattribute"] = attributes.split(",")[0]
    if search_filter:
        found["searchfilter"] = search_filter
    return found


def _complete(values: dict) -> LdapOptions:
    simple = values.get("prefix") is not None or values.get("suffix") is not None
    search = ("basedn", "binddn", "bindpasswd", "searchattribute", "searchfilter")
    if simple and any(values.get(key) is not None for key in search):
        raise LdapOptionError("cannot mix options for simple bind and search+bind modes")
    if not simple and values.get("basedn") is None:
        raise LdapOptionError('authentication method "ldap" requires argument "ldapbasedn", '
                              '"ldapprefix", or "ldapsuffix" to be set')
    if values.get("searchattribute") is not None and values.get("searchfilter") is not None:
        raise LdapOptionError("cannot use ldapsearchattribute together with ldapsearchfilter")
    if not values.get("servers"):
        # PgBouncer then looks the servers up in DNS SRV records; ldap3 cannot.
        raise LdapOptionError("LDAP server not specified (ldapserver, or a host in ldapurl)")
    scheme = values.get("scheme", "ldap")
    values.setdefault("port", DEFAULT_PORTS[scheme])
    return dataclasses.replace(LdapOptions(servers=(), port=0), **values)


def options_from_string(text: str) -> LdapOptions:
    """``auth_ldap_options`` checked: :func:`parse_option_string` then :func:`ldap_options`."""
    return ldap_options(parse_option_string(text))
