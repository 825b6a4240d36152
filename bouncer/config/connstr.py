"""Split a libpq-style ``key=value key2='quoted value'`` string, as PgBouncer reads them.

Used for ``[databases]``, ``[users]``, ``[pools]`` and ``[peers]`` lines and for the admin
console's ``SET USER``/``SET POOL`` values.  Only the splitting lives here; which keys are
valid is the caller's business.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

_BLANK = " \t"
#: A backslash escapes only these; any other backslash is kept, so a password such as
#: ``p\ss`` in an existing pgbouncer.ini (where backslashes are literal) still means p\ss.
_ESCAPABLE = "'\\"


def parse_connstr(text: str) -> Dict[str, str]:
    """``key=value`` pairs in order of first appearance; a repeated key keeps its last value.

    Values may be single-quoted; inside quotes ``''`` (PgBouncer) and ``\\'`` (libpq) both
    stand for a quote.  Blanks around ``=`` are allowed.  Empty values are refused, as
    PgBouncer refuses them.

    :raises ValueError: with a reason, on any syntax error.
    """
    pairs: Dict[str, str] = {}
    pos = _skip_blanks(text, 0)
    while pos < len(text):
        key, pos = _read_key(text, pos)
        value, pos = _read_value(text, _skip_blanks(text, pos))
        pairs[key] = value
        pos = _skip_blanks(text, pos)
    return pairs


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _BLANK:
        pos += 1
    return pos


def _read_key(text: str, pos: int) -> Tuple[str, int]:
    start = pos
    while pos < len(text) and text[pos] != "=" and text[pos] not in _BLANK:
        pos += 1
    key = text[start:pos]
    pos = _skip_blanks(text, pos)
    if not key or pos >= len(text) or text[pos] != "=":
        raise ValueError("syntax error in connection string: "
                         f"expected key=value at {text[start:]!r}")
    return key, pos + 1


def _read_value(text: str, pos: int) -> Tuple[str, int]:
    if pos < len(text) and text[pos] == "'":
        value, pos = _read_quoted(text, pos + 1)
        if pos < len(text) and text[pos] not in _BLANK:
            raise ValueError("syntax error in connection string: text right after a closing quote")
    else:
        value, pos = _read_bare(text, pos)
    if not value:
        raise ValueError("syntax error in connection string: empty value")
    return value, pos


def _read_bare(text: str, pos: int) -> Tuple[str, int]:
    chars: List[str] = []
    while pos < len(text) and text[pos] not in _BLANK:
        if text[pos] == "\\" and pos + 1 < len(text) and text[pos + 1] in _ESCAPABLE:
            pos += 1
        chars.append(text[pos])
        pos += 1
    return "".join(chars), pos


def _read_quoted(text: str, pos: int) -> Tuple[str, int]:
    """The value after an opening quote, and the position after its closing quote."""
    chars: List[str] = []
    while pos < len(text):
        char = text[pos]
        following = text[pos + 1:pos + 2]
        if (char == "\\" and following and following in _ESCAPABLE) or char + following == "''":
            chars.append(following)
            pos += 2
        elif char == "'":
            return "".join(chars), pos + 1
        else:
            chars.append(char)
            pos += 1
    raise ValueError("syntax error in connection string: unterminated quoted value")
