"""PgBouncer's limits on startup names, the quoting of client text in messages, and the log
line cap."""
from __future__ import annotations

import logging
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bouncer.errors import ClientError
from bouncer.log import MAX_MESSAGE, PgBouncerFormatter
from bouncer.session.startup_checks import check_startup_names, quoted


def refusal(params):
    with pytest.raises(ClientError) as caught:
        check_startup_names(params)
    return caught.value.sqlstate, caught.value.message


@pytest.mark.parametrize("user", ["u" * 127, "é" * 63 + "u", "x"])
def test_user_names_below_128_bytes_pass(user):
    check_startup_names({"user": user, "database": "db"})


@pytest.mark.parametrize("user", ["u" * 128, "é" * 64, "u" * 9000])
def test_user_names_of_128_bytes_or_more_are_too_long(user):
    assert refusal({"user": user, "database": "db"}) == ("08P01", "username too long")


def test_a_database_name_of_64_bytes_is_cut_to_63_in_no_such_database():
    assert refusal({"user": "u", "database": "d" * 64}) == (
        "3D000", "no such database: " + "d" * 63)
    check_startup_names({"user": "u", "database": "d" * 63})


def test_the_database_name_defaults_to_the_user_name():
    assert refusal({"user": "u" * 64})[1] == "no such database: " + "u" * 63
    assert refusal({"user": "u" * 64, "database": ""})[1] == "no such database: " + "u" * 63


def test_a_multibyte_character_cut_in_half_keeps_its_bytes():
    _, message = refusal({"user": "u", "database": "d" * 62 + "é"})
    assert message.encode("utf-8", "surrogateescape") == b"no such database: " + b"d" * 62 \
        + "é".encode()[:1]


@given(st.text(max_size=300), st.integers(1, 100))
def test_quoted_text_is_bounded_and_a_prefix(text, limit):
    shown = quoted(text, limit)
    assert len(shown) <= limit + 3
    assert shown == text or (shown.endswith("...") and text.startswith(shown[:-3]))


def test_a_log_message_is_cut_but_not_its_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("bouncer", logging.ERROR, __file__, 1, "user %s", ("u" * 9000,),
                               exc_info)
    message, traceback = PgBouncerFormatter().format(record).split("\\n\t", 1)
    assert len(message.split(" ERROR ", 1)[1]) == MAX_MESSAGE
    assert message.endswith("...") and "ValueError: boom" in traceback
