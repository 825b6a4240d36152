"""Typed conversion of one setting value: text from a file or ``SET`` to Python and back.

One pair of functions per kind in :data:`bouncer.config.settings.Setting.kind`.  Parsers
raise :class:`ValueError` with a reason a person can act on; callers add file, line and key.
"""
from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, Tuple

if TYPE_CHECKING:  # settings.py imports this module; a runtime import would be circular.
    from bouncer.config.settings import Setting

_INT_RE = re.compile(r"[+-]?[0-9]+")
_TIME_RE = re.compile(
    r"(?P<number>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    r"[ \t]*(?P<unit>us|ms|s|min|h|d)?")
#: PostgreSQL's time units (case-sensitive, as PostgreSQL spells them), in seconds.
_TIME_UNITS: Dict[str, float] = {
    "us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0,
}
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def parse_int(raw: str) -> int:
    """A decimal integer.  Stricter than PgBouncer's ``strtol``: no hex, no octal, no ``0d``."""
    text = raw.strip()
    if not _INT_RE.fullmatch(text):
        raise ValueError(f"invalid integer: {raw!r}")
    return int(text)


def parse_int_or_auto(raw: str) -> int:
    """A decimal integer, or ``auto``: the number of CPU cores."""
    if raw.strip().lower() == "auto":
        return os.cpu_count() or 1
    return parse_int(raw)


def parse_time(raw: str) -> float:
    """Seconds as a float: ``30``, ``1.5``, or with a PostgreSQL unit such as ``500ms``."""
    match = _TIME_RE.fullmatch(raw.strip())
    if not match:
        raise ValueError(f"invalid time: {raw!r} (seconds, or a number with us/ms/s/min/h/d)")
    seconds = float(match.group("number")) * _TIME_UNITS[match.group("unit") or "s"]
    if math.isinf(seconds):
        raise ValueError(f"time out of range: {raw!r}")
    return seconds


def parse_bool(raw: str) -> bool:
    """``0``/``1`` as PgBouncer writes them; also true/false, yes/no, on/off.

    PgBouncer stores its flags as plain integers, so any other integer still counts as
    "on" there; accept that too rather than refuse a file PgBouncer reads.
    """
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    try:
        return parse_int(word) != 0
    except ValueError:
        raise ValueError(f"invalid boolean: {raw!r} (use 0 or 1)") from None


def parse_octal(raw: str) -> int:
    """A file mode such as ``0777``, ``777`` or ``0o777``."""
    text = raw.strip().lower()
    digits = text[2:] if text.startswith("0o") else text
    if not digits or any(char not in "01234567" for char in digits):
        raise ValueError(f"invalid octal file mode: {raw!r}")
    mode = int(digits, 8)
    if mode > 0o7777:
        raise ValueError(f"file mode out of range: {raw!r}")
    return mode


def parse_list(raw: str) -> Tuple[str, ...]:
    """A comma-separated list; blanks around items and empty items are dropped."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def parse_value(setting: Setting, raw: str) -> Any:
    """Convert ``raw`` to the typed value of ``setting``, checking choices and range."""
    if setting.kind == "enum":
        return _parse_enum(setting, raw)
    value = _PARSERS[setting.kind](raw)
    _check_range(setting, value)
    return value


def format_value(setting: Setting, value: Any) -> str:
    """Render a typed value the way PgBouncer's SHOW CONFIG prints it."""
    return _FORMATTERS.get(setting.kind, str)(value)


def _parse_enum(setting: Setting, raw: str) -> str:
    # PgBouncer compares enum words case-insensitively (strcasecmp); keep the canonical spelling.
    word = raw.strip().lower()
    for choice in setting.choices:
        if choice.lower() == word:
            return choice
    raise ValueError(f"invalid value {raw!r}: expected one of {', '.join(setting.choices)}")


def _check_range(setting: Setting, value: Any) -> None:
    if setting.kind not in ("int", "int_or_auto", "time", "octal"):
        return
    if setting.min is not None and value < setting.min:
        raise ValueError(f"{value} is below the minimum {_number(setting.min)}")
    if setting.max is not None and value > setting.max:
        raise ValueError(f"{value} is above the maximum {_number(setting.max)}")


def _number(value: float) -> str:
    """A number as PgBouncer prints times: no ``.0`` when whole."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


_PARSERS: Dict[str, Callable[[str], Any]] = {
    "str": lambda raw: raw,
    "int": parse_int,
    "int_or_auto": parse_int_or_auto,
    "bool": parse_bool,
    "time": parse_time,
    "octal": parse_octal,
    "list": parse_list,
}

_FORMATTERS: Dict[str, Callable[[Any], str]] = {
    "bool": lambda value: "1" if value else "0",
    "time": _number,
    "octal": lambda value: f"0{value:o}",
    "list": ",".join,
}

#: Every kind a :class:`~bouncer.config.settings.Setting` may declare.
KINDS = frozenset(_PARSERS) | {"enum"}
