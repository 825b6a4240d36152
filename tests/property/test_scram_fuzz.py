"""Hostile bytes and hostile sizes into both SCRAM roles (PgBouncer 1.25.2 overflowed on a long
server nonce): every message gets an answer or a ScramError, never another exception, and no
answer grows with what the peer sent."""
from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bouncer.auth.scram import MAX_MESSAGE_LEN, ScramClient, ScramError, ScramServer

SALT = base64.b64encode(b"s" * 16)
#: Sizes around the limits, and far past them.
sizes = st.one_of(st.integers(0, 600), st.sampled_from([MAX_MESSAGE_LEN - 1, MAX_MESSAGE_LEN,
                                                        MAX_MESSAGE_LEN + 1, 70_000]))
#: A byte to blow up, and the printable one most fields accept.
fillers = st.sampled_from([b"N", b"=", b",", b"\xff", b"\0", b"A"])


@st.composite
def blown_up(draw, template: bytes):
    """*template* with its ``{}`` replaced by a filler byte repeated a hostile number of times."""
    return template.replace(b"{}", draw(fillers) * draw(sizes))


CLIENT_FIRSTS = [b"n,,n=,r={}", b"n,,n={},r=abc", b"n,,n=,r=abc,{}", b"n,,n=,r=abc,x={}",
                 b"{}", b"n,,{}", b"y,,n=,r=a{}"]
SERVER_FIRST_TAILS = [b"{},s=" + SALT + b",i=4096", b"N,s={},i=4096", b"N,s=" + SALT + b",i={}",
                      b"N,s=" + SALT + b",i=4096,x={}", b"N{}"]


def bounded_answer(answer: bytes) -> None:
    assert len(answer) <= MAX_MESSAGE_LEN + 200


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CLIENT_FIRSTS).flatmap(blown_up))
def test_server_answers_a_hostile_client_first_or_refuses_it(client_first):
    try:
        answer = ScramServer.mock("user").handle_client_first(client_first)
    except ScramError:
        return
    bounded_answer(answer)
    assert len(client_first) <= MAX_MESSAGE_LEN


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([b"c=biws,r={nonce}{},p=" + base64.b64encode(b"p" * 32),
                        b"c=biws,r={nonce},p={}", b"c=biws,r={nonce},x={},p=AAAA",
                        b"c={},r={nonce},p=AAAA", b"{}"]).flatmap(blown_up))
def test_server_refuses_a_hostile_client_final(template):
    server = ScramServer.mock("user")
    nonce = server.handle_client_first(b"n,,n=,r=abc").split(b",")[0][2:]
    try:
        server.handle_client_final(template.replace(b"{nonce}", nonce))
    except ScramError:  # the mock server fails every proof: ScramAuthFailed included
        return
    raise AssertionError("a mock exchange succeeded")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SERVER_FIRST_TAILS).flatmap(blown_up))
def test_client_answers_a_hostile_server_first_or_refuses_it(tail):
    client = ScramClient(client_key=b"k" * 32, server_key=b"s" * 32)
    nonce = client.client_first()[len(b"n,,n=,r="):]
    server_first = b"r=" + nonce + tail
    try:
        answer = client.handle_server_first(server_first)
    except ScramError:
        return
    bounded_answer(answer)
    assert len(server_first) <= MAX_MESSAGE_LEN


@given(st.one_of(st.binary(max_size=MAX_MESSAGE_LEN + 100),
                 st.sampled_from([b"v={}", b"e={}", b"{}"]).flatmap(blown_up)))
def test_client_refuses_any_server_final_but_the_right_one(data):
    client = ScramClient(client_key=b"k" * 32, server_key=b"s" * 32)
    nonce = client.client_first()[len(b"n,,n=,r="):]
    client.handle_server_first(b"r=" + nonce + b"N,s=" + SALT + b",i=4096")
    try:
        client.handle_server_final(data)
    except ScramError:
        return
    raise AssertionError("accepted a forged server signature")


@given(st.integers(1, 600))
def test_client_nonces_up_to_512_characters_are_accepted(length):
    # Our limits must not refuse what a real client may send (libpq: 24 characters).
    first = b"n,,n=,r=" + b"x" * length
    try:
        ScramServer.mock("user").handle_client_first(first)
    except ScramError:
        assert length > 512
    else:
        assert length <= 512
