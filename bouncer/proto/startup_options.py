"""The ``options`` startup parameter (libpq's ``PGOPTIONS``), read as PgBouncer reads it.

Only ``-c name=value`` (also ``-cname=value``) and ``--name=value`` are understood; arguments
are separated by whitespace, and a backslash makes the next character literal (``\\ `` for a
space inside a value), as in PostgreSQL's own splitting of the string.  Pure functions.
"""
from __future__ import annotations

from typing import List, Tuple

UNSUPPORTED = ("unsupported options startup parameter: only '-c config=val' and "
               "'--config=val' are allowed")


class OptionsError(ValueError):
    """The string holds something other than ``-c name=value`` / ``--name=value``."""


def parse_options(text: str) -> List[Tuple[str, str]]:
    """The (name, value) settings of an ``options`` string, in order.

    :raises OptionsError: another switch, a missing ``=``, or a ``-c`` without a setting.
    """
    settings: List[Tuple[str, str]] = []
    position = _skip_space(text, 0)
    while position < len(text):
        if text.startswith("-c", position):
            position = _skip_space(text, position + 2)
        elif text.startswith("--", position):
            position += 2
        else:
            raise OptionsError(UNSUPPORTED)
        token, position = _escaped_token(text, position)
        name, equals, value = token.partition("=")
        if not equals or not name:
            raise OptionsError(UNSUPPORTED)
        settings.append((name, value))
        position = _skip_space(text, position)
    return settings


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _escaped_token(text: str, position: int) -> Tuple[str, int]:
    """The characters up to the next unescaped whitespace, backslashes removed."""
    chars: List[str] = []
    while position < len(text) and not text[position].isspace():
        if text[position] == "\\":
            position += 1
            if position == len(text):
                break
        chars.append(text[position])
        position += 1
    return "".join(chars), position
