"""pg_hba.conf for ``auth_type = hba``: parse the file into rules, find the rule for a connection.

Sans-IO apart from :func:`load_hba` and the default ``@file`` reader: matching takes the facts
of a connection (transport, TLS, address, names) and returns the first rule that fits.  The
token rules shared with pg_ident.conf live in :mod:`bouncer.auth.authfile`.

Where PgBouncer and PostgreSQL differ we side with PgBouncer when a file valid for PgBouncer
would otherwise be refused (whitespace around commas in lists, ``cert`` on ``host`` lines), and
refuse, naming file and line, anything PostgreSQL would read with a meaning we cannot honour
(``+group``, regular expressions, host names, ``samehost``, ``include``, pam).  ``ldap`` lines
keep their ``ldap*`` options for the plugin that checks them (bouncer-ldap), as PgBouncer keeps
the rest of the line.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os.path
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, FrozenSet, Iterator, List, Mapping, Optional, Set, Tuple, Union

from bouncer.auth.authfile import (AuthLine, Field, Token, Where, load_text, read_text,
                                   reject_include_directive, tokenize_auth_file)

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
ReadFile = Callable[[str], str]

# --------------------------------------------------------------------------------------------
# Rules and matching
# --------------------------------------------------------------------------------------------

CONN_TYPES = ("local", "host", "hostssl", "hostnossl")
METHODS = ("trust", "reject", "password", "md5", "scram-sha-256", "cert", "peer", "ldap")


@dataclass(frozen=True)
class HbaRule:
    """One line of pg_hba.conf.

    ``databases`` and ``users`` hold literal names (a quoted ``"all"`` lands there); the bare
    keywords are in ``database_keywords`` (``all``, ``sameuser``, ``replication``) and
    ``user_keywords`` (``all``).  ``network`` is ``None`` on ``local`` lines and for the
    address ``all``.  ``options`` holds ``map`` and ``clientcert`` when given, and an ``ldap``
    line's ``ldap*`` options (``ldapserver``, ``ldapurl``...), values unquoted.
    """

    lineno: int
    conn_type: str
    databases: Tuple[str, ...]
    users: Tuple[str, ...]
    network: Optional[IPNetwork]
    method: str
    options: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}), hash=False)  # a mapping is unhashable
    database_keywords: FrozenSet[str] = frozenset()
    user_keywords: FrozenSet[str] = frozenset()

    @property
    def clientcert(self) -> Optional[str]:
        """The certificate check this line demands: ``verify-ca``, ``verify-full`` or ``None``.

        ``cert`` lines imply ``verify-full``, as in PostgreSQL.
        """
        implied = "verify-full" if self.method == "cert" else None
        return self.options.get("clientcert", implied)

    def matches_transport(self, conn_type: str, tls: bool, address: Optional[IPAddress]) -> bool:
        """Whether the connection type, TLS state and *address* fit this line.

        An address fits only a network of its own family, as in PgBouncer and PostgreSQL:
        ``::/0`` is not a way into IPv4, and ``::ffff:10.0.0.1`` (what a dual-stack socket
        reports for an IPv4 client) fits IPv6 lines only.
        """
        if (conn_type == "local") != (self.conn_type == "local"):
            return False
        if (self.conn_type == "hostssl" and not tls) or (self.conn_type == "hostnossl" and tls):
            return False
        if self.network is None:
            return True
        return address is not None and address.version == self.network.version \
            and address in self.network

    def matches_database(self, database: str, user: str, replication: bool) -> bool:
        """Whether *database* fits; physical replication fits only the ``replication`` keyword."""
        keywords = self.database_keywords
        if replication:
            return "replication" in keywords
        return ("all" in keywords or database in self.databases
                or ("sameuser" in keywords and database == user))

    def matches_user(self, user: str) -> bool:
        """Whether *user* fits the user column."""
        return "all" in self.user_keywords or user in self.users


@dataclass(frozen=True)
class HbaRules:
    """The rules of one HBA file, in file order."""

    rules: Tuple[HbaRule, ...]

    def match(self, *, conn_type: str, tls: bool, address: Optional[IPAddress], database: str,
              user: str, replication: bool = False) -> Optional[HbaRule]:
        """The first rule that fits the connection, or ``None`` (the caller must refuse it).

        :param conn_type: ``"local"`` (unix socket) or ``"host"`` (TCP).
        :param tls: whether the client connection is encrypted.
        :param address: the client's IP address as its socket reports it; ``None`` for
            ``local``.  It fits only lines of its own family (an IPv4-mapped IPv6 address is
            IPv6).
        :param replication: ``True`` for a *physical* replication connection, which only the
            ``replication`` keyword matches.  Logical replication (``replication=database``)
            names a real database: pass ``False``, as PostgreSQL matches it like any session.
        """
        if conn_type not in ("local", "host"):
            raise ValueError(f"conn_type must be 'local' or 'host', not {conn_type!r}")
        if (address is None) != (conn_type == "local"):
            raise ValueError("an address is required for 'host' and forbidden for 'local'")
        for rule in self.rules:
            if (rule.matches_transport(conn_type, tls, address)
                    and rule.matches_database(database, user, replication)
                    and rule.matches_user(user)):
                return rule
        return None


def no_entry_message(address: Optional[IPAddress], user: str, database: str, tls: bool, *,
                     replication: bool = False) -> str:
    """PostgreSQL's FATAL text (SQLSTATE 28000) when no line matches; ``None`` address = local."""
    if replication:
        return f"no pg_hba.conf entry for replication connection from {_who(address, user, tls)}"
    return f"no pg_hba.conf entry for {_who(address, user, tls, database)}"


def reject_message(address: Optional[IPAddress], user: str, database: str, tls: bool, *,
                   replication: bool = False) -> str:
    """PostgreSQL's FATAL text (SQLSTATE 28000) when the matching line says ``reject``."""
    if replication:
        return f"pg_hba.conf rejects replication connection for {_who(address, user, tls)}"
    return f"pg_hba.conf rejects connection for {_who(address, user, tls, database)}"


def _who(address: Optional[IPAddress], user: str, tls: bool,
         database: Optional[str] = None) -> str:
    host = "[local]" if address is None else str(address)
    db = "" if database is None else f', database "{database}"'
    encryption = "SSL encryption" if tls else "no encryption"
    return f'host "{host}", user "{user}"{db}, {encryption}'


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_GSS_CONN_TYPES = ("hostgssenc", "hostnogssenc")
_UNSUPPORTED_METHODS = ("pam",)  # PgBouncer: "pam is not supported in the HBA file"
_MAP_METHODS = ("cert", "peer")
_CLIENTCERT_VALUES = ("verify-ca", "verify-full")
_MAX_NAME_FILE_DEPTH = 10  # PostgreSQL's limit on nested @file inclusion


@dataclass(frozen=True)
class _NameColumn:
    label: str
    keywords: FrozenSet[str]
    unsupported: FrozenSet[str]


_DATABASE_COLUMN = _NameColumn("database", frozenset({"all", "sameuser", "replication"}),
                               frozenset({"samerole", "samegroup"}))
_USER_COLUMN = _NameColumn("user", frozenset({"all"}), frozenset())


def load_hba(path: str) -> HbaRules:
    """Read and parse the HBA file at *path* (``@file`` names relative to its directory).

    :raises ConfigError: the file cannot be read or is invalid.
    """
    return parse_hba(load_text(path, "HBA file"), path)


def parse_hba(text: str, filename: str, read_file: ReadFile = read_text) -> HbaRules:
    """Parse pg_hba.conf *text*; *filename* names it in errors and anchors ``@file`` paths.

    :param read_file: returns the text of an ``@file`` given its resolved path; it may raise
        :class:`OSError`.
    :raises ConfigError: on the first invalid line, naming file and line.
    """
    rules = []
    for line in tokenize_auth_file(text, filename):
        rule = _parse_rule(line, Where(filename, line.lineno), read_file)
        if rule is not None:
            rules.append(rule)
    return HbaRules(tuple(rules))


class _Columns:
    """The fields of one line, consumed left to right."""

    def __init__(self, fields: Tuple[Field, ...], where: Where) -> None:
        self._fields = list(fields)
        self._where = where

    def take(self, what: str) -> Field:
        if not self._fields:
            raise self._where.error(f"end-of-line before {what} specification")
        return self._fields.pop(0)

    def take_single(self, what: str) -> Token:
        tokens = self.take(what)
        if len(tokens) > 1:
            raise self._where.error(f"multiple values specified for {what}")
        return tokens[0]

    def rest(self) -> List[Token]:
        return [token for tokens in self._fields for token in tokens]


def _parse_rule(line: AuthLine, where: Where, read_file: ReadFile) -> Optional[HbaRule]:
    reject_include_directive(line, where)
    columns = _Columns(line.fields, where)
    conn_type = columns.take_single("connection type").text
    if conn_type in _GSS_CONN_TYPES:
        return None  # we never offer GSSAPI encryption: such lines can never match
    if conn_type not in CONN_TYPES:
        raise where.error(f'invalid connection type "{conn_type}"')
    database_field = columns.take("database")
    user_field = columns.take("user")
    network = None if conn_type == "local" else _parse_address(columns, where)
    method = _parse_method(columns.take_single("authentication method"), where)
    database_keywords, databases = _parse_names(database_field, _DATABASE_COLUMN, where,
                                                read_file)
    user_keywords, users = _parse_names(user_field, _USER_COLUMN, where, read_file)
    return HbaRule(
        lineno=line.lineno, conn_type=conn_type, databases=databases, users=users,
        network=network, method=method,
        options=_parse_options(columns.rest(), conn_type, method, where),
        database_keywords=database_keywords, user_keywords=user_keywords)


def _parse_names(tokens: Field, column: _NameColumn, where: Where,
                 read_file: ReadFile) -> Tuple[FrozenSet[str], Tuple[str, ...]]:
    keywords: Set[str] = set()
    names: List[str] = []
    for token, origin in _expand_name_files(tokens, where, read_file, depth=0):
        text = token.text
        if not token.quoted and text in column.keywords:
            keywords.add(text)
            continue
        if not token.quoted and text in column.unsupported:
            raise origin.error(f'"{text}" is not supported in the {column.label} column')
        if not token.quoted and text.startswith("+"):
            raise origin.error(f'group membership ("{text}") is not supported: '
                               "list the names, or put them in an @file")
        if text.startswith("/"):
            raise origin.error(f'regular expressions ("{text}") are not supported')
        names.append(text)
    return frozenset(keywords), tuple(names)


def _expand_name_files(tokens: Field, where: Where, read_file: ReadFile,
                       depth: int) -> Iterator[Tuple[Token, Where]]:
    # Each name comes with the place it was read from, so errors inside an @file point there.
    for token in tokens:
        if token.quoted or not token.text.startswith("@"):
            yield token, where
        else:
            yield from _read_name_file(token.text[1:], where, read_file, depth)


def _read_name_file(name: str, where: Where, read_file: ReadFile,
                    depth: int) -> Iterator[Tuple[Token, Where]]:
    if not name:
        raise where.error('"@" must be followed by a file name')
    if depth >= _MAX_NAME_FILE_DEPTH:
        raise where.error(f"@{name}: @files nested more than {_MAX_NAME_FILE_DEPTH} deep")
    path = os.path.join(os.path.dirname(where.filename), name)
    try:
        text = read_file(path)
    except OSError as exc:
        raise where.error(f"cannot read @{name} ({path}): {exc.strerror or exc}") from exc
    for line in tokenize_auth_file(text, path):
        for tokens in line.fields:
            yield from _expand_name_files(tokens, Where(path, line.lineno), read_file, depth + 1)


def _parse_address(columns: _Columns, where: Where) -> Optional[IPNetwork]:
    token = columns.take_single("IP address")
    if token.is_keyword("all"):
        return None
    if token.is_keyword("samehost") or token.is_keyword("samenet"):
        raise where.error(f'"{token.text}" is not supported: write the addresses as CIDR')
    address_text, slash, prefix = token.text.partition("/")
    address = _parse_ip(address_text, "IP address", where)
    if slash:
        return _network(address, _parse_prefix(prefix, address, where))
    mask = _parse_ip(columns.take_single("netmask").text, "netmask", where)
    return _network(address, _prefix_from_mask(mask, address, where))


def _parse_ip(text: str, what: str, where: Where) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise where.error(f'invalid {what} "{text}" (host names are not supported)') from None


def _parse_prefix(text: str, address: IPAddress, where: Where) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > address.max_prefixlen:
        raise where.error(f'invalid CIDR mask in address "{address}/{text}"')
    return int(text)


def _prefix_from_mask(mask: IPAddress, address: IPAddress, where: Where) -> int:
    if mask.version != address.version:
        raise where.error(f'IP address "{address}" and netmask "{mask}" are not the same family')
    host_bits = ~int(mask) & ((1 << mask.max_prefixlen) - 1)
    if host_bits & (host_bits + 1):  # ones must be contiguous from the top
        raise where.error(f'netmask "{mask}" is not contiguous')
    return mask.max_prefixlen - host_bits.bit_length()


def _network(address: IPAddress, prefix: int) -> IPNetwork:
    # strict=False: like PostgreSQL, host bits set in the address are masked off, not an error.
    # Built from the integer so that a scope ("fe80::1%eth0") is dropped on every Python.
    network_class = ipaddress.IPv4Network if address.version == 4 else ipaddress.IPv6Network
    return network_class((int(address), prefix), strict=False)


def _parse_method(token: Token, where: Where) -> str:
    method = token.text
    if method in _UNSUPPORTED_METHODS:
        raise where.error(f'authentication method "{method}" is not supported')
    if method not in METHODS:
        raise where.error(f'invalid authentication method "{method}"')
    return method


def _parse_options(tokens: List[Token], conn_type: str, method: str,
                   where: Where) -> Mapping[str, str]:
    options = {}
    for token in tokens:
        name, equals, value = token.text.partition("=")
        if not (name and equals and value):
            raise where.error(f'authentication option not in name=value format: "{token.text}"')
        _check_option(name, value, conn_type, method, where)
        options[name] = value
    return MappingProxyType(options)


def _check_option(name: str, value: str, conn_type: str, method: str, where: Where) -> None:
    if name == "map":
        if method not in _MAP_METHODS:
            raise where.error('authentication option "map" is only valid for authentication '
                              'methods "peer" and "cert"')
    elif name == "clientcert":
        if conn_type != "hostssl":
            raise where.error('clientcert can only be configured for "hostssl" rows')
        if value not in _CLIENTCERT_VALUES:
            raise where.error(f'invalid value for clientcert: "{value}"')
        if method == "cert" and value != "verify-full":
            raise where.error('clientcert only accepts "verify-full" when using "cert" '
                              "authentication")
    elif not (method == "ldap" and name.startswith("ldap")):
        # An ldap line's values are checked by the plugin that reads them (bouncer-ldap).
        raise where.error(f'unrecognized authentication option name: "{name}"')
