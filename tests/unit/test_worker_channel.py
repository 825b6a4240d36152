"""The control channel between workers, without sockets: its frames and its messages."""
from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bouncer.admin.commands import AdminError, Notice, Result
from bouncer.admin.worker_channel import answer_from, error_message, result_message
from bouncer.proto.control_frames import MAX_FRAME, FrameError, FrameReader, encode

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=20)
MESSAGES = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5)


def chunks(data: bytes, cuts) -> list:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


@given(st.lists(MESSAGES, max_size=4), st.lists(st.integers(min_value=0), max_size=8))
def test_frames_come_back_whole_however_they_are_cut(messages, cuts) -> None:
    data = b"".join(encode(message) for message in messages)
    reader = FrameReader()
    found = [message for piece in chunks(data, cuts) for message in reader.feed(piece)]
    assert found == messages and reader.pending == 0


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_hostile_bytes_give_objects_or_a_frame_error(data) -> None:
    reader = FrameReader(limit=1000)
    try:
        for message in reader.feed(data):
            assert isinstance(message, dict)
    except FrameError:
        pass


@given(st.binary(max_size=50))
def test_a_body_that_is_not_an_object_is_refused(body) -> None:
    try:
        decoded = json.loads(body.decode())
    except ValueError:  # not UTF-8 or not JSON: refused as such
        decoded = None
    frame = struct.pack("!I", len(body)) + body
    if isinstance(decoded, dict):
        assert FrameReader().feed(frame) == [decoded]
    else:
        with pytest.raises(FrameError):
            FrameReader().feed(frame)


def test_an_oversized_length_is_refused_before_its_bytes_arrive() -> None:
    with pytest.raises(FrameError, match="above the limit"):
        FrameReader().feed(struct.pack("!I", MAX_FRAME + 1))


def test_deep_nesting_is_a_frame_error() -> None:
    body = b"[" * 100000 + b"]" * 100000
    with pytest.raises(FrameError):
        FrameReader(limit=len(body)).feed(struct.pack("!I", len(body)) + body)


def test_a_result_survives_the_trip() -> None:
    result = Result("SHOW", [("database", 25), ("cl_active", 23)], [["testdb", 3], ["x", None]],
                    [Notice("careful", "detail")])
    answer = answer_from(2, FrameReader().feed(encode(result_message(result)))[0])
    assert answer.worker == 2 and answer.error is None
    assert answer.result == result


def test_an_error_survives_the_trip() -> None:
    answer = answer_from(1, error_message(AdminError("no such database: x", detail="why")))
    assert answer.error is not None and answer.result is None
    assert (answer.error.message, answer.error.sqlstate, answer.error.detail) == (
        "no such database: x", "08P01", "why")


@pytest.mark.parametrize("message", [
    {}, {"result": 1}, {"error": {"message": 3, "sqlstate": "x", "detail": None}},
    {"result": {"tag": "SHOW", "columns": [["a", 25]], "rows": [[1, 2]], "notices": []}},
    {"result": {"tag": "SHOW", "columns": [["a", "x"]], "rows": [], "notices": []}},
])
def test_a_malformed_reply_is_a_frame_error(message) -> None:
    with pytest.raises(FrameError):
        answer_from(1, message)
