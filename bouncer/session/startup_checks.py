"""Limits on the names a client sends at startup, and on client text quoted in messages.

A startup packet may be 10,000 bytes, so without limits a user name of 9,000 bytes would be
asked for a password and printed in every log line of that client.  PgBouncer keeps names in
fixed buffers: a user name of MAX_USERNAME bytes or more is refused at once (``username too
long``), and a database name of MAX_DBNAME bytes or more can name no database.  We refuse both
before authentication, with PgBouncer's texts.  Sans-IO: no sockets, no logging.
"""
from __future__ import annotations

from typing import Mapping

from bouncer.errors import ClientError
from bouncer.proto import sqlstate
from bouncer.proto.codec import decode_text, encode_text

#: PgBouncer's buffer sizes (include/bouncer.h), the terminating NUL included: a user name
#: may have 127 bytes, a database name 63 (PostgreSQL's NAMEDATALEN - 1).
MAX_USERNAME = 128
MAX_DBNAME = 64
#: How much of a client's text an error message quotes (a startup parameter's name...).
QUOTED_TEXT_LIMIT = 64
_ELLIPSIS = "..."


def check_startup_names(params: Mapping[str, str]) -> None:
    """Refuse a user or database name that is too long for PgBouncer.

    :param params: the StartupMessage's parameters (``database`` defaults to ``user``).
    :raises ClientError: ``username too long``, or ``no such database: <first 63 bytes>``
        (what PgBouncer answers for such a name, as it cuts it to its buffer).
    """
    user = encode_text(params.get("user", ""))
    if len(user) >= MAX_USERNAME:
        raise ClientError("username too long", sqlstate.PROTOCOL_VIOLATION)
    database = encode_text(params.get("database") or params.get("user", ""))
    if len(database) >= MAX_DBNAME:
        raise ClientError(f"no such database: {decode_text(database[:MAX_DBNAME - 1])}",
                          sqlstate.INVALID_CATALOG_NAME)


def quoted(text: str, limit: int = QUOTED_TEXT_LIMIT) -> str:
    """*text* for an error message or a log line: its first *limit* characters, and ``...``
    when there was more."""
    return text if len(text) <= limit else text[:limit] + _ELLIPSIS
