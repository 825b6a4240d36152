"""The admin console's grammar: PgBouncer's command syntax, as text in and values out.

PgBouncer accepts one command per query: ``WORD [WORD]`` with an optional trailing ``;``, and
``SET key = value`` / ``SET key TO 'value'``.  A word is either bare (``[0-9A-Za-z_]+``, case
kept: ``PAUSE MyDb`` names ``MyDb``) or a double-quoted identifier (``"my db"``, ``""`` for a
quote); a SET value may also be a single-quoted string (``''`` for a quote).  Command words
are matched case-insensitively.

Pure functions: no sockets, no application state.  Anything malformed raises
:class:`GrammarError`, which the console reports as PgBouncer's "invalid command".
"""
from __future__ import annotations

import re
from typing import Iterable, List, NamedTuple, Optional, Tuple

#: Whitespace as PgBouncer's command regexes define it.
WHITESPACE = " \t\n\r"

#: Command words that mean another one (PgBouncer routes ``SELECT x`` to ``SHOW x``).
ALIASES = {"SELECT": "SHOW"}

_BARE_WORD = re.compile(r"[0-9A-Za-z_]+")
_LEADING_WORD = re.compile(r"[ \t\n\r]*([0-9A-Za-z_]+)(?=[ \t\n\r]|$)")
_QUOTED = {'"': "ident", "'": "string"}


class GrammarError(ValueError):
    """The text does not follow the console's grammar."""


class Token(NamedTuple):
    """One lexical item: ``kind`` is ``word`` (bare), ``ident`` ("quoted"), ``string``
    ('quoted') or ``equals``; ``value`` is the unquoted text."""

    kind: str
    value: str


def strip_terminator(query: str) -> str:
    """The command without surrounding whitespace and one optional trailing ``;``."""
    text = query.strip(WHITESPACE)
    if text.endswith(";"):
        text = text[:-1].rstrip(WHITESPACE)
    return text


def match_command(text: str, commands: Iterable[str]) -> Optional[Tuple[str, str]]:
    """Find the longest command (``"SHOW POOLS"`` beats ``"SHOW"``) that *text* starts with.

    :param text: one command, terminator already stripped.
    :param commands: the known command words, upper case, words separated by one space.
    :return: ``(command, rest of the text)``, or ``None`` when no command matches.
    """
    known = set(commands)
    words, ends = _leading_words(text)
    for count in range(len(words), 0, -1):
        command = " ".join(words[:count])
        if command in known:
            return command, text[ends[count - 1]:].strip(WHITESPACE)
    return None


def _leading_words(text: str) -> Tuple[List[str], List[int]]:
    """Upper-cased bare words at the start of *text* (aliases resolved), and where each ends."""
    words: List[str] = []
    ends: List[int] = []
    position = 0
    while True:
        match = _LEADING_WORD.match(text, position)
        if match is None:
            return words, ends
        word = match.group(1).upper()
        words.append(ALIASES.get(word, word) if not words else word)
        position = match.end()
        ends.append(position)


def tokenize(text: str) -> List[Token]:
    """Split command arguments into tokens.

    :raises GrammarError: an unterminated quote, an empty quoted identifier or a character
        that belongs to no token.
    """
    tokens: List[Token] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char in WHITESPACE:
            position += 1
        elif char == "=":
            tokens.append(Token("equals", "="))
            position += 1
        elif char in _QUOTED:
            value, position = _quoted(text, position)
            tokens.append(Token(_QUOTED[char], value))
        else:
            match = _BARE_WORD.match(text, position)
            if match is None:
                raise GrammarError(f"unexpected character {char!r}")
            tokens.append(Token("word", match.group()))
            position = match.end()
    return tokens


def _quoted(text: str, start: int) -> Tuple[str, int]:
    """The unquoted value of the quoted item at *start* and the position after it."""
    quote = text[start]
    parts: List[str] = []
    position = start + 1
    while True:
        end = text.find(quote, position)
        if end < 0:
            raise GrammarError("unterminated quoted text")
        parts.append(text[position:end])
        if text.startswith(quote, end + 1):  # a doubled quote stands for one
            parts.append(quote)
            position = end + 2
            continue
        value = "".join(parts)
        if quote == '"' and not value:
            raise GrammarError("zero-length quoted identifier")
        return value, end + 1


def names(args: str) -> List[str]:
    """The identifiers (bare or double-quoted) that make up *args*.

    :raises GrammarError: anything else is in *args*.
    """
    tokens = tokenize(args)
    if any(token.kind not in ("word", "ident") for token in tokens):
        raise GrammarError("expected names only")
    return [token.value for token in tokens]


def optional_name(args: str) -> Optional[str]:
    """The single optional argument of ``PAUSE [db]`` and the like."""
    found = names(args)
    if len(found) > 1:
        raise GrammarError("too many arguments")
    return found[0] if found else None


def no_arguments(args: str) -> None:
    """Commands such as ``SHOW POOLS`` or ``RELOAD`` take nothing after their words."""
    if args.strip(WHITESPACE):
        raise GrammarError("unexpected arguments")


def parse_set(args: str) -> Tuple[str, str]:
    """``key = value`` or ``key TO value`` (the text after ``SET``) as ``(key, value)``.

    The key is a name; the value a name or a single-quoted string.
    """
    tokens = tokenize(args)
    if len(tokens) != 3:
        raise GrammarError("expected: SET key = value")
    key, operator, value = tokens
    if key.kind not in ("word", "ident"):
        raise GrammarError("the setting name must be a name")
    if not (operator.kind == "equals" or (operator.kind == "word"
                                          and operator.value.upper() == "TO")):
        raise GrammarError("expected = or TO")
    if value.kind == "equals":
        raise GrammarError("missing value")
    return key.value, value.value
