"""The ``options`` startup parameter: PgBouncer's subset of PostgreSQL's command-line switches."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bouncer.proto.startup_options import OptionsError, parse_options

LISBON_GERMAN = [("timezone", "Europe/Lisbon"), ("datestyle", "German, YMD")]


@pytest.mark.parametrize("text, settings", [
    ("  -c    datestyle=German,\\ YMD", [("datestyle", "German, YMD")]),
    ("-c timezone=Europe/Lisbon  -c    datestyle=German,\\ YMD", LISBON_GERMAN),
    ("-ctimezone=Europe/Lisbon  -cdatestyle=German,\\ YMD", LISBON_GERMAN),
    ("--timezone=Europe/Lisbon  --datestyle=German,\\ YMD", LISBON_GERMAN),
    (r"-c t\imezone=\E\u\r\o\pe/Lisbon  -c    dat\estyle\=\Ge\rman,\ YMD", LISBON_GERMAN),
    ("-c search_path=a=b", [("search_path", "a=b")]),  # the first '=' splits
    ("-c x=", [("x", "")]),
    ("", []),
    ("   ", []),
])
def test_settings_are_read_as_pgbouncer_reads_them(text: str, settings) -> None:
    assert parse_options(text) == settings


@pytest.mark.parametrize("text", ["-d", "-c timezone", "-c", "--", "-c =x", "-c a=b junk",
                                  "-B 100"])
def test_anything_else_is_refused_with_pgbouncers_words(text: str) -> None:
    with pytest.raises(OptionsError, match="only '-c config=val' and '--config=val' are allowed"):
        parse_options(text)


NAMES = st.text(st.sampled_from("abcxyz_"), min_size=1, max_size=8)
VALUES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


def escape(value: str) -> str:
    return "".join("\\" + char if char.isspace() or char == "\\" else char for char in value)


@given(st.lists(st.tuples(NAMES, VALUES), max_size=4), st.booleans())
def test_escaped_settings_come_back_as_they_were(settings, long_form: bool) -> None:
    switch = "--{}={}" if long_form else "-c {}={}"
    text = " ".join(switch.format(name, escape(value)) for name, value in settings)
    assert parse_options(text) == settings


@given(st.text(max_size=40))
def test_any_string_is_read_or_refused_never_crashes(text: str) -> None:
    try:
        parse_options(text)
    except OptionsError:
        pass
