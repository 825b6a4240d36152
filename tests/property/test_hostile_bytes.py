"""Hostile bytes into every parser that meets peer input: a result or the documented error
(ProtocolError / ScramError, or the ClientError of a refused message), never another
exception; and walking a valid stream gives the same answers however it is chunked."""
from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from bouncer.auth.scram import ScramClient, ScramError, ScramServer
from bouncer.auth.userlist import parse_userlist
from bouncer.errors import ClientError, ProtocolError
from bouncer.proto import backend, frontend
from bouncer.proto.client_engine import ClientEngine
from bouncer.proto.codec import build_message
from bouncer.proto.constants import TXN_FAILED, TXN_IDLE, TXN_IN_BLOCK
from bouncer.proto.framing import MessageReader, parse_startup_packet
from bouncer.proto.server_engine import ServerEngine

REQUEST_CODES = [196608, 196610, 131072, 80877103, 80877104, 80877102, 80877199]
TYPE_BYTES = b"QPBDESHCXpdcfFRSKZENTDCIv123ntsGHW"
#: What builders accept: no NUL, no lone surrogates (callers never hold those).
NUL_FREE_TEXT = st.text(alphabet=st.characters(blacklist_characters="\0",
                                               blacklist_categories=("Cs",)), max_size=20)


def hostile_header(msg_type: int, length: int) -> bytes:
    return bytes((msg_type,)) + struct.pack("!I", length)


# A stream of headers with plausible and implausible lengths, bodies of any size.
hostile_stream = st.lists(
    st.tuples(st.sampled_from(TYPE_BYTES), st.integers(0, 40), st.binary(max_size=40)),
    max_size=20,
).map(lambda parts: b"".join(hostile_header(t, n) + body for t, n, body in parts))
any_stream = st.one_of(st.binary(max_size=300), hostile_stream)


@st.composite
def chunked(draw, stream_strategy):
    """A stream and a random list of chunks that concatenate to it."""
    stream = draw(stream_strategy)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=8))))
    bounds = [0, *cuts, len(stream)]
    return stream, [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


server_message = st.one_of(
    st.lists(st.one_of(st.none(), NUL_FREE_TEXT), max_size=4).map(backend.data_row),
    st.sampled_from([TXN_IDLE, TXN_IN_BLOCK, TXN_FAILED]).map(backend.ready_for_query),
    st.tuples(NUL_FREE_TEXT, NUL_FREE_TEXT).map(lambda pair: backend.parameter_status(*pair)),
    NUL_FREE_TEXT.map(backend.command_complete),
    st.just(backend.empty_query_response()),
)
client_message = st.one_of(
    NUL_FREE_TEXT.map(frontend.query),
    st.just(frontend.sync()),
    st.tuples(NUL_FREE_TEXT, NUL_FREE_TEXT).map(lambda pair: frontend.parse(*pair)),
    st.lists(st.one_of(st.none(), st.binary(max_size=30)), max_size=3).map(
        lambda params: frontend.bind("", "", params)),
    st.just(frontend.execute("")),
    st.binary(max_size=50).map(lambda data: build_message(ord("d"), data)),  # CopyData
)


def scan_server(chunks):
    """What the server engine makes of a stream: the bytes for the client and its state."""
    engine = ServerEngine()
    out, ready = bytearray(), 0
    for chunk in chunks:
        out += engine.receive(chunk)
        ready += engine.ready_count
    return bytes(out), ready, engine.status, engine.param_updates, engine.at_boundary


def scan_client(chunks):
    """What the client engine makes of a stream: the bytes for the server, what it will owe."""
    engine = ClientEngine()
    engine.start_relay()
    engine.pipeline = ServerEngine().pipeline
    out = bytearray()
    for chunk in chunks:
        out += engine.receive(chunk)
    return bytes(out), engine.pipeline.kinds(), engine.at_boundary


# --- framing -------------------------------------------------------------------------

@given(st.one_of(
    st.binary(max_size=200),
    st.tuples(st.sampled_from(REQUEST_CODES), st.binary(max_size=60)).map(
        lambda p: struct.pack("!II", len(p[1]) + 8, p[0]) + p[1]),
    st.tuples(st.sampled_from(REQUEST_CODES),
              st.lists(st.sampled_from([b"user", b"\0", b"a", b"\xff", b"database"]),
                       max_size=10)).map(
        lambda p: struct.pack("!II", 8 + len(b"".join(p[1])), p[0]) + b"".join(p[1])),
))
def test_startup_packet(raw):
    try:
        parse_startup_packet(raw)
    except ProtocolError:
        pass


@given(chunked(any_stream), st.integers(4, 50))
def test_message_reader(stream_and_chunks, max_length):
    _, chunks = stream_and_chunks
    reader = MessageReader(max_length)
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while reader.next_message() is not None:
                pass
    except ProtocolError:
        return


# --- protocol engines ----------------------------------------------------------------

@given(chunked(any_stream))
def test_server_engine_hostile(stream_and_chunks):
    try:
        scan_server(stream_and_chunks[1])
    except ProtocolError:
        pass


@given(chunked(any_stream))
def test_client_engine_hostile(stream_and_chunks):
    try:
        scan_client(stream_and_chunks[1])
    except (ProtocolError, ClientError):
        pass


@settings(max_examples=300)
@given(chunked(st.lists(server_message, max_size=15).map(b"".join)))
def test_server_engine_chunking_is_invisible(stream_and_chunks):
    stream, chunks = stream_and_chunks
    assert scan_server(chunks) == scan_server([stream])


@settings(max_examples=300)
@given(chunked(st.lists(client_message, max_size=15).map(b"".join)))
def test_client_engine_chunking_is_invisible(stream_and_chunks):
    stream, chunks = stream_and_chunks
    assert scan_client(chunks) == scan_client([stream])


# --- message parsers -----------------------------------------------------------------

PAYLOAD_PARSERS = [
    backend.parse_authentication, backend.parse_sasl_mechanisms,
    backend.parse_parameter_status, backend.parse_backend_key_data,
    backend.parse_error_fields, backend.parse_row_description, backend.parse_data_row,
    backend.parse_command_complete, frontend.parse_password_message,
    frontend.parse_sasl_initial_response, frontend.parse_query,
]


@given(st.sampled_from(PAYLOAD_PARSERS),
       st.one_of(st.binary(max_size=80),
                 st.lists(st.sampled_from([b"\0", b"\xff\xff", b"\0\1", b"\0\0\0\4", b"ab",
                                           b"\xff\xff\xff\xff", b"\0" * 18]),
                          max_size=12).map(b"".join)))
def test_payload_parsers(parser, payload):
    try:
        parser(payload)
    except ProtocolError:
        pass


# --- auth ----------------------------------------------------------------------------

@given(st.one_of(st.text(max_size=200),
                 st.lists(st.sampled_from(['"', '""', " ", "\t", "\n", "\r", ";", "#", "a",
                                           "\f", "\x00", "é"]), max_size=40).map("".join)))
def test_userlist(text):
    users, warnings = parse_userlist(text)
    assert all(isinstance(v, str) for v in users.values())
    assert all(isinstance(w, str) for w in warnings)


SCRAM_PIECES = [b"n", b"y", b"p=x", b",", b"=", b"a=", b"n=", b"r=", b"m=", b"c=", b"p=",
                b"biws", b"abc", b"\xff", b"\0", b"==", b"AAAA"]
scram_bytes = st.one_of(st.binary(max_size=100),
                        st.lists(st.sampled_from(SCRAM_PIECES), max_size=20).map(b"".join))


@given(scram_bytes)
def test_scram_server_first(data):
    try:
        ScramServer.mock("user").handle_client_first(data)
    except ScramError:
        pass


@given(scram_bytes)
def test_scram_server_final(data):
    server = ScramServer.mock("user")
    server.handle_client_first(b"n,,n=,r=abc")
    try:
        server.handle_client_final(data)
    except ScramError:
        pass


@given(scram_bytes)
def test_scram_client_server_first(data):
    client = ScramClient(client_key=b"k" * 32, server_key=b"s" * 32)
    client.client_first()
    try:
        client.handle_server_first(data)
    except ScramError:
        pass
