"""Read a ``pgbouncer.ini`` by PgBouncer's own lexer rules (libusual ``cfparser.c``).

configobj cannot read these files itself (``;`` comments, ``%include``, ``#`` inside values,
duplicate keys), so this module lexes them into :class:`IniLine` records and only then hands
the values to a ``configobj.ConfigObj``, which serves as the section/value container.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from configobj import ConfigObj

from bouncer.errors import ConfigError

#: cfparser's MAX_INCLUDE: the main file is level 0, so ten nested includes are allowed.
MAX_INCLUDE_DEPTH = 10

#: C isspace() in the C locale; Python's str.isspace() would also eat Unicode spaces.
_SPACE = " \t\n\r\v\f"
_BLANK = " \t"
_BARE_KEY = re.compile(r"[A-Za-z0-9_.*-]*")
#: The current section after a header without ']': its keys are skipped (no real section
#: name can contain a newline).
_BROKEN_SECTION = "\n"


@dataclass(frozen=True)
class IniLine:
    """One ``key = value`` line, or a section header (then ``key`` and ``value`` are empty).

    ``section`` and, inside ``[pgbouncer]``, ``key`` are lower-cased; database, user and
    pool names keep their case.  ``value`` is the raw rest of the line, blanks trimmed.
    """

    section: str
    key: str
    value: str
    filename: str
    lineno: int

    @property
    def is_section_header(self) -> bool:
        """True for a ``[section]`` line: the lexer never yields an empty key otherwise."""
        return not self.key


def lex_ini(path: str) -> List[IniLine]:
    """Lex ``path`` and its ``%include`` files into lines, in file order, duplicates kept.

    :raises ConfigError: naming file and line, for unreadable files, syntax errors, a key
        before any section, and includes nested deeper than :data:`MAX_INCLUDE_DEPTH`.
    """
    lines, errors = lex_ini_all(path)
    if errors:
        raise errors[0]
    return lines


def lex_ini_all(path: str) -> Tuple[List[IniLine], List[ConfigError]]:
    """Like :func:`lex_ini`, but a bad line is recorded and skipped, so that ``--check`` can
    name every one: returns the good lines and the errors, each in file order.

    The keys after a broken section header are dropped without a word (which section they
    were meant for is unknown; the header's error says what to fix).

    :raises ConfigError: only when ``path`` itself cannot be read.
    """
    state = _State()
    _lex_file(path, state, depth=0)
    return state.lines, state.errors


def last_lines(lines: Iterable[IniLine]) -> Dict[Tuple[str, str], IniLine]:
    """``(section, key)`` -> the line that counts: the last one, as in PgBouncer."""
    return {(line.section, line.key): line for line in lines if not line.is_section_header}


def to_configobj(lines: Iterable[IniLine]) -> ConfigObj:
    """The lexed values as a ConfigObj: one section per header seen, last duplicate wins.

    Built from a dict so configobj never parses the text itself; interpolation and list
    values stay off so ``%(x)s`` and commas in values are kept verbatim.
    """
    sections: Dict[str, Dict[str, str]] = {}
    for line in lines:
        values = sections.setdefault(line.section, {})
        if not line.is_section_header:
            values[line.key] = line.value
    return ConfigObj(sections, interpolation=False, list_values=False)


def rename_keys(lines: Iterable[IniLine], section: str,
                canonical: Mapping[str, str]) -> List[IniLine]:
    """Lines with keys of ``section`` found in ``canonical`` renamed (aliases to targets)."""
    return [replace(line, key=canonical[line.key])
            if line.section == section and line.key in canonical else line
            for line in lines]


class _State:
    """What an ``%include`` shares with its includer: the lines so far and the section."""

    def __init__(self) -> None:
        self.lines: List[IniLine] = []
        self.errors: List[ConfigError] = []
        self.section: Optional[str] = None


class _Cursor:
    """A position in one file's text, with PgBouncer's error wording."""

    def __init__(self, text: str, filename: str) -> None:
        self.text = text
        self.pos = 0
        self.filename = filename

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def rest_of_line(self) -> str:
        """Everything up to the newline, trailing whitespace trimmed; stops before ``\\n``."""
        end = self.text.find("\n", self.pos)
        end = len(self.text) if end < 0 else end
        value = self.text[self.pos:end].rstrip(_SPACE)
        self.pos = end
        return value

    @property
    def lineno(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def error(self, message: str) -> ConfigError:
        return ConfigError(message, filename=self.filename, lineno=self.lineno)


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"could not load file: {exc.strerror or exc}", filename=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError("file is not valid UTF-8", filename=path, lineno=lineno) from None
    if "\0" in text:
        lineno = text.count("\n", 0, text.index("\0")) + 1
        raise ConfigError("NUL byte in configuration", filename=path, lineno=lineno)
    return text


def _lex_file(path: str, state: _State, depth: int) -> None:
    cursor = _Cursor(_read_text(path), path)
    while True:
        cursor.skip(_SPACE)
        if not cursor.peek():
            return
        try:
            _lex_item(cursor, state, depth)
        except ConfigError as exc:
            state.errors.append(exc)
            cursor.rest_of_line()  # the next line may be fine: carry on there


def _lex_item(cursor: _Cursor, state: _State, depth: int) -> None:
    if cursor.text.startswith("%include", cursor.pos) and cursor.peek(8) in (" ", "\t"):
        _include(cursor, state, depth)
    elif cursor.peek() in ("#", ";"):
        cursor.rest_of_line()
    elif cursor.peek() == "[":
        _section_header(cursor, state)
    else:
        _key_value(cursor, state)


def _include(cursor: _Cursor, state: _State, depth: int) -> None:
    if depth >= MAX_INCLUDE_DEPTH:
        raise cursor.error("include nesting level too deep")
    lineno = cursor.lineno
    cursor.pos += len("%include")
    cursor.skip(_BLANK)
    target = cursor.rest_of_line()
    if not target:
        raise ConfigError("%include without a file name", filename=cursor.filename, lineno=lineno)
    # PgBouncer opens the name as given: a relative path is relative to the working
    # directory, not to the including file.
    try:
        _lex_file(target, state, depth + 1)
    except ConfigError as exc:
        if exc.filename == target and exc.lineno is None:
            raise ConfigError(f"%include {target}: {exc.message}", filename=cursor.filename,
                              lineno=lineno) from None
        raise


def _section_header(cursor: _Cursor, state: _State) -> None:
    lineno = cursor.lineno
    cursor.pos += 1
    end = cursor.pos
    while end < len(cursor.text) and cursor.text[end] not in "]\n":
        end += 1
    if end >= len(cursor.text) or cursor.text[end] != "]":
        state.section = _BROKEN_SECTION
        raise cursor.error("syntax error: section header without ']'")
    state.section = cursor.text[cursor.pos:end].strip(_SPACE).lower()
    cursor.pos = end + 1
    # Like cfparser, carry on right after ']': a comment or key may follow on the same line.
    state.lines.append(IniLine(state.section, "", "", cursor.filename, lineno))


def _key_value(cursor: _Cursor, state: _State) -> None:
    lineno = cursor.lineno
    key = _read_key(cursor)
    cursor.skip(_BLANK)
    if cursor.peek() != "=":
        raise cursor.error("syntax error: expected 'key = value'")
    cursor.pos += 1
    cursor.skip(_BLANK)
    value = cursor.rest_of_line()
    if state.section is None:
        raise ConfigError("value without section", filename=cursor.filename, lineno=lineno,
                          key=key)
    if state.section == _BROKEN_SECTION:
        return
    if state.section == "pgbouncer":
        key = key.lower()
    state.lines.append(IniLine(state.section, key, value, cursor.filename, lineno))


def _read_key(cursor: _Cursor) -> str:
    """A bare key, a 'single-quoted' key (cfparser) or a "double-quoted" one.

    PgBouncer's documentation promises SQL identifier quoting for database names but its
    parser only knows single quotes (pgbouncer issue #971); bouncer accepts both.
    """
    quote = cursor.peek()
    if quote in ("'", '"'):
        return _read_quoted_key(cursor, quote)
    # (The pattern matches the empty string, so there is always a match.)
    key = _BARE_KEY.match(cursor.text, cursor.pos).group()  # type: ignore[union-attr]
    if not key:
        raise cursor.error("syntax error: expected a key")
    cursor.pos += len(key)
    return key


def _read_quoted_key(cursor: _Cursor, quote: str) -> str:
    # Single quotes have no escape (as in cfparser); inside double quotes "" is one quote.
    chars: List[str] = []
    cursor.pos += 1
    while True:
        char = cursor.peek()
        if char in ("", "\n"):
            raise cursor.error("syntax error: unterminated quoted key")
        cursor.pos += 1
        if char != quote:
            chars.append(char)
        elif quote == '"' and cursor.peek() == '"':
            chars.append(char)
            cursor.pos += 1
        else:
            break
    if not chars:
        raise cursor.error("syntax error: empty quoted key")
    return "".join(chars)
