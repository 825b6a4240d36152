"""pg_ident.conf (``auth_ident_file``): which system users may log in as which database users.

Used by the ``map=`` option of ``cert`` and ``peer`` HBA lines: the system user is the
certificate's common name or the unix peer's account name.  Each line is ``mapname system-user
db-user``; the db-user may be the keyword ``all``.  PostgreSQL reads a system user starting with
``/`` as a regular expression; PgBouncer does not support that, so we refuse it rather than
compare it literally and fail logins in a way nobody could explain.  Sans-IO but for
:func:`load_ident`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from bouncer.auth.authfile import (AuthLine, Where, load_text, reject_include_directive,
                                   tokenize_auth_file)

_COLUMNS = ("map name", "system user name", "database user name")


@dataclass(frozen=True)
class IdentEntry:
    """One line of the map file; ``any_db_user`` is the bare keyword ``all`` as db-user."""

    lineno: int
    mapname: str
    system_user: str
    db_user: str
    any_db_user: bool = False

    def allows(self, system_user: str, db_user: str) -> bool:
        """Whether this line lets *system_user* log in as *db_user*."""
        return system_user == self.system_user and (self.any_db_user or db_user == self.db_user)


@dataclass(frozen=True)
class IdentMap:
    """Every line of one pg_ident.conf file, in file order."""

    entries: Tuple[IdentEntry, ...]

    def has_map(self, name: str) -> bool:
        """Whether any line defines map *name* (an HBA ``map=`` naming none is a config error)."""
        return any(entry.mapname == name for entry in self.entries)

    def allows(self, mapname: str, system_user: str, db_user: str) -> bool:
        """Whether map *mapname* lets *system_user* log in as *db_user*."""
        return any(entry.mapname == mapname and entry.allows(system_user, db_user)
                   for entry in self.entries)


def load_ident(path: str) -> IdentMap:
    """Read and parse the ident map file at *path*.

    :raises ConfigError: the file cannot be read or is invalid.
    """
    return parse_ident(load_text(path, "ident map file"), path)


def parse_ident(text: str, filename: str) -> IdentMap:
    """Parse pg_ident.conf *text*; *filename* names it in errors.

    :raises ConfigError: on the first invalid line, naming file and line.
    """
    return IdentMap(tuple(_parse_entry(line, Where(filename, line.lineno))
                          for line in tokenize_auth_file(text, filename)))


def _parse_entry(line: AuthLine, where: Where) -> IdentEntry:
    reject_include_directive(line, where)
    if len(line.fields) < len(_COLUMNS):
        raise where.error(f"missing entry at end of line: expected "
                          f"{', '.join(_COLUMNS)}")
    if len(line.fields) > len(_COLUMNS):
        raise where.error(f"too many fields: expected only {', '.join(_COLUMNS)}")
    for column, tokens in zip(_COLUMNS, line.fields):
        if len(tokens) > 1:
            raise where.error(f"multiple values in {column}: lists are not allowed here")
    mapname, system_user, db_user = (tokens[0] for tokens in line.fields)
    if system_user.text.startswith("/"):
        raise where.error(f'regular expressions ("{system_user.text}") are not supported')
    if db_user.text.startswith("+") and not db_user.quoted:
        raise where.error(f'group membership ("{db_user.text}") is not supported')
    return IdentEntry(lineno=line.lineno, mapname=mapname.text, system_user=system_user.text,
                      db_user=db_user.text, any_db_user=db_user.is_keyword("all"))
