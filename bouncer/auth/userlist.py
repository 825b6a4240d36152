"""Parser for PgBouncer's auth_file (userlist.txt): ``"user" "password-or-secret"`` lines.

Rules, as PgBouncer's loader applies them: each line starts with a double-quoted user name
followed by a double-quoted password (plain, ``md5...`` or ``SCRAM-SHA-256$...``); ``""``
inside quotes is one literal quote; anything after the password is ignored; blank lines
and lines starting with ``;`` (or ``#``, which PgBouncer does not allow but operators
write) are skipped.  Where PgBouncer stops loading at the first broken line, we skip just
that line with a warning, which names the file and line but never the line's content: it
may hold a password.
"""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

_COMMENT_STARTS = (";", "#")
_QUOTED = r'"((?:[^"]|"")*)"'
# The fields must be separated by whitespace: '"a""b"' is one field holding 'a"b'.
_LINE = re.compile(_QUOTED + r"\s+" + _QUOTED)


def parse_userlist(text: str, filename: str = "<userlist>") -> Tuple[Dict[str, str], List[str]]:
    """Parse auth_file content.

    :return: ``({user: password or secret}, warnings)``; a later line for the same user
        replaces an earlier one.
    """
    users: Dict[str, str] = {}
    warnings: List[str] = []
    # Split on "\n" only, as PgBouncer does: str.splitlines() would also break a password
    # at form feeds and Unicode line separators.
    for lineno, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(_COMMENT_STARTS):
            continue
        match = _LINE.match(stripped)
        if match is None:
            warnings.append(f"{filename}:{lineno}: broken auth file line skipped "
                            f'(expected "user" "password")')
            continue
        user, password = (_unquote(field) for field in match.groups())
        users[user] = password
    return users, warnings


def load_userlist(path: str) -> Tuple[Dict[str, str], List[str]]:
    """Read and parse an auth_file; ``OSError`` propagates to the caller.

    Bytes that are not UTF-8 are kept (surrogateescape), so such a password still hashes
    to the same secret as the bytes in the file.
    """
    with open(path, encoding="utf-8", errors="surrogateescape") as stream:
        return parse_userlist(stream.read(), path)


def _unquote(field: str) -> str:
    return field.replace('""', '"')
