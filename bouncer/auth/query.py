"""auth_query, sans-IO: which query runs for a login, the bytes that run it, and its answer.

The user name is always a bound parameter of the extended protocol (Parse/Bind/Execute/Sync),
never spliced into the SQL text, so a name full of quotes and semicolons is only a name that
matches no role.  The query runs with :data:`PINNED_SEARCH_PATH`, so what an unqualified name
means is not up to anyone's session.  Sending the bytes over a dedicated server connection and
reading the rows back is :mod:`bouncer.builtin.auth_query`'s job.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

from bouncer.auth.store import SOURCE_AUTH_QUERY, Credentials
from bouncer.config.model import Config, DatabaseDef
from bouncer.config.sections import ADMIN_DATABASE
from bouncer.errors import BouncerError
from bouncer.proto import frontend, sqlstate
from bouncer.proto.codec import decode_text, encode_text

#: The ``[databases]`` entry that stands for every database not listed.
AUTODB = "*"
#: The unnamed statement and portal: nothing is left behind on the server.
_UNNAMED = ""
#: auth_query answers (user name, secret).
_COLUMNS = 2
#: What PostgreSQL recommends for SECURITY DEFINER functions: trusted schemas only, pg_temp
#: last (unlisted, pg_temp would be searched first for tables and views).
PINNED_SEARCH_PATH = "pg_catalog, pg_temp"
#: Run right after login on every auth connection, before its first lookup.
PIN_SEARCH_PATH = f"SET search_path = {PINNED_SEARCH_PATH}"
#: A failing lookup with one of these SQLSTATEs most likely names an object outside pg_catalog
#: without its schema.
_UNDEFINED_OBJECT = (sqlstate.UNDEFINED_FUNCTION, sqlstate.UNDEFINED_TABLE)


class AuthQueryFailed(BouncerError):
    """The query ran but its answer cannot be used; the message is for the log."""


@dataclass(frozen=True)
class AuthQuerySpec:
    """How to look up passwords for logins to one database.

    :param auth_user: the role the query runs as (its own secret comes from auth_file).
    :param query: the SQL, with ``$1`` standing for the user name.
    :param dbname: the ``[databases]`` entry whose server runs the query.
    """

    auth_user: str
    query: str
    dbname: str


def resolve_spec(config: Config, database: str) -> Optional[AuthQuerySpec]:
    """The auth_query setup for logins to *database*, or ``None`` when no auth_user applies.

    A database's own ``auth_user``, ``auth_query`` and ``auth_dbname`` override the
    ``[pgbouncer]`` values; an unlisted database takes the ``*`` entry's, except the admin
    console, which has only the ``[pgbouncer]`` ones (as in PgBouncer).  Without
    ``auth_dbname`` the query runs in the database the client asked for.
    """
    definition = _definition(config, database)
    auth_user = (definition and definition.auth_user) or config.auth_user
    if not auth_user:
        return None
    query = (definition and definition.auth_query) or config.auth_query
    dbname = (definition and definition.auth_dbname) or config.auth_dbname or database
    return AuthQuerySpec(auth_user, query, dbname)


def _definition(config: Config, database: str) -> Optional[DatabaseDef]:
    if database == ADMIN_DATABASE:
        return None
    return config.databases.get(database) or config.databases.get(AUTODB)


def reserved_auth_dbname_problem(dbname: str) -> str:
    """PgBouncer's words for an auth_dbname naming the admin console, whose "server" cannot
    run a query."""
    return f'cannot use the reserved "{dbname}" database as an auth_dbname'


def config_problems(config: Config) -> List[str]:
    """What would make every lookup fail, where an auth_user makes auth_query run: a query
    without ``$1``, an ``auth_dbname`` that names no ``[databases]`` entry (and no ``*``
    entry could create it), or a global ``auth_dbname`` naming the admin console (refused by
    PgBouncer as it loads the setting; a database's own is refused at login, as there)."""
    return list(_problems(config))


def _problems(config: Config) -> Iterator[str]:
    if config.auth_dbname == ADMIN_DATABASE:
        yield reserved_auth_dbname_problem(config.auth_dbname)
    if config.auth_user:
        yield from _spec_problems(config, "", None, config.auth_dbname)
    looked_up = {name: definition for name, definition in config.databases.items()
                 if definition.auth_user or config.auth_user}
    for name, definition in looked_up.items():
        yield from _spec_problems(config, f"database {name}: ", definition.auth_query,
                                  definition.auth_dbname)
    # The global query only matters where a database has none of its own: PgBouncer's tests
    # set "auth_query = SELECT 1" next to databases that all override it.
    if any(not definition.auth_query for definition in looked_up.values()):
        yield from _spec_problems(config, "", config.auth_query, None)


def _spec_problems(config: Config, where: str, query: Optional[str],
                   dbname: Optional[str]) -> Iterator[str]:
    if query and "$1" not in query:
        yield f"{where}auth_query must use $1 where the user name goes"
    if dbname and dbname != ADMIN_DATABASE and dbname not in config.databases \
            and AUTODB not in config.databases:
        yield f"{where}auth_dbname = {dbname} names no database in [databases]"


def lookup_request(query: str, user: str) -> bytes:
    """Parse, Bind (the user name as the text parameter ``$1``), Execute and Sync, as one write.

    The parameter type is left for the server to infer, as psql's ``\\bind`` does, so a
    custom query may compare ``$1`` with a ``name`` or a ``text`` column alike.
    """
    return b"".join((
        frontend.parse(_UNNAMED, query),
        frontend.bind(_UNNAMED, _UNNAMED, [encode_text(user)]),
        frontend.execute(_UNNAMED),
        frontend.sync(),
    ))


def credentials_from_rows(user: str, rows: Sequence[Sequence[Optional[bytes]]]
                          ) -> Optional[Credentials]:
    """Read the query's answer: ``None`` when no row (no such role).

    A NULL or empty secret (an expired role under the default query, or a role without a
    password) gives credentials without a secret: the user is known, but no password can
    match.

    :raises AuthQueryFailed: more than one row, or not exactly two columns.
    """
    if not rows:
        return None
    if len(rows) > 1:
        raise AuthQueryFailed(f"auth_query returned {len(rows)} rows for one user; "
                              "it must return at most one")
    row = rows[0]
    if len(row) != _COLUMNS:
        raise AuthQueryFailed(f"auth_query returned {len(row)} columns; it must return two "
                              "(user name, password)")
    secret = row[1]
    return Credentials(user, decode_text(secret) if secret else None, SOURCE_AUTH_QUERY)


def failure_hint(code: str) -> str:
    """What to add to the log line of a lookup that failed with SQLSTATE *code*."""
    if code in _UNDEFINED_OBJECT:
        return (f" (auth_query runs with search_path = {PINNED_SEARCH_PATH}: "
                "schema-qualify the objects it uses outside pg_catalog)")
    return ""
