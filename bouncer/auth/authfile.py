"""Reading PostgreSQL's authentication files (pg_hba.conf, pg_ident.conf): bytes to fields.

Both files share these token rules: ``#`` starts a comment outside quotes, a trailing backslash
joins the next line, double quotes make a word literal (``""`` inside quotes is a quote, and a
quoted ``"all"`` is a name, not the keyword), and a column may be a comma list.  Like PgBouncer,
and unlike PostgreSQL, blanks around the commas of a list are allowed (``a, b``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Tuple

from bouncer.errors import ConfigError

_BLANKS = " \t\r\f\v"
_INCLUDE_DIRECTIVES = ("include", "include_if_exists", "include_dir")


@dataclass(frozen=True)
class Token:
    """One word of an auth file; ``quoted`` when any part of it was written in double quotes."""

    text: str
    quoted: bool = False

    def is_keyword(self, word: str) -> bool:
        """True only for the bare word: a quoted ``"all"`` is a name, never the keyword."""
        return not self.quoted and self.text == word


#: One whitespace-separated column of a line: a comma list of tokens (usually just one).
Field = Tuple[Token, ...]


@dataclass(frozen=True)
class AuthLine:
    """A logical line (continuations joined); ``lineno`` is its first physical line."""

    lineno: int
    fields: Tuple[Field, ...]


@dataclass(frozen=True)
class Where:
    """A file and line, to build errors that point the operator at the culprit."""

    filename: str
    lineno: int

    def error(self, message: str) -> ConfigError:
        """The :class:`ConfigError` to raise for *message* at this place."""
        return ConfigError(message, filename=self.filename, lineno=self.lineno)


def read_text(path: str) -> str:
    """The text of *path*; undecodable bytes survive (surrogateescape) so names still compare.

    :raises OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return handle.read()


def load_text(path: str, what: str) -> str:
    """:func:`read_text`, with a failure reported as a :class:`ConfigError` about *what*."""
    try:
        return read_text(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}", filename=path) from exc


def tokenize_auth_file(text: str, filename: str) -> Iterator[AuthLine]:
    """Split the text of pg_hba.conf or pg_ident.conf into non-empty logical lines of fields.

    :raises ConfigError: unterminated quote or misplaced comma, naming *filename* and line.
    """
    for lineno, line in _logical_lines(text):
        fields = _split_fields(line, Where(filename, lineno))
        if fields:
            yield AuthLine(lineno, fields)


def reject_include_directive(line: AuthLine, where: Where) -> None:
    """Refuse PostgreSQL 16's ``include*`` directives: PgBouncer has no notion of them."""
    first = line.fields[0]
    if len(first) == 1 and first[0].text in _INCLUDE_DIRECTIVES and not first[0].quoted:
        raise where.error(f'"{first[0].text}" directives are not supported')


def _logical_lines(text: str) -> Iterator[Tuple[int, str]]:
    # Only "\n" ends a line (str.splitlines would also split on form feeds and the like), and a
    # trailing backslash joins the next line before comments are looked at, as PostgreSQL does.
    pending: List[str] = []
    start = 1
    for number, raw in enumerate(text.split("\n"), 1):
        if not pending:
            start = number
        line = raw[:-1] if raw.endswith("\r") else raw
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        yield start, "".join(pending)
        pending = []
    if pending:
        yield start, "".join(pending)


def _split_fields(line: str, where: Where) -> Tuple[Field, ...]:
    fields: List[Field] = []
    current: List[Token] = []
    after_comma = False  # PgBouncer allows "a, b" and "a ,b": the list goes on past blanks
    pos = _skip_blanks(line, 0)
    while pos < len(line) and line[pos] != "#":
        if line[pos] == ",":
            if not current or after_comma:
                raise where.error("unexpected comma")
            after_comma = True
            pos += 1
        else:
            token, pos = _read_word(line, pos, where)
            if current and not after_comma:
                fields.append(tuple(current))
                current = []
            current.append(token)
            after_comma = False
        pos = _skip_blanks(line, pos)
    if after_comma:
        raise where.error("comma at end of line: a list item is missing")
    if current:
        fields.append(tuple(current))
    return tuple(fields)


def _skip_blanks(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in _BLANKS:
        pos += 1
    return pos


def _read_word(line: str, pos: int, where: Where) -> Tuple[Token, int]:
    chars: List[str] = []
    quoted = in_quotes = False
    while pos < len(line):
        char = line[pos]
        if in_quotes and line.startswith('""', pos):
            chars.append('"')
            pos += 1
        elif char == '"':
            in_quotes = not in_quotes
            quoted = True
        elif not in_quotes and (char in _BLANKS or char in ",#"):
            break
        else:
            chars.append(char)
        pos += 1
    if in_quotes:
        raise where.error("unterminated quoted string")
    return Token("".join(chars), quoted), pos
