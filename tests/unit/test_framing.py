"""Startup packets and the typed-message reader."""
from __future__ import annotations

import struct

import pytest

from bouncer.errors import ProtocolError
from bouncer.proto.framing import (
    MAX_STARTUP_PACKET_LEN,
    CancelRequest,
    GSSENCRequest,
    MessageReader,
    SSLRequest,
    StartupMessage,
    parse_startup_packet,
    startup_packet_length,
)


def packet(code: int, body: bytes = b"") -> bytes:
    return struct.pack("!II", 8 + len(body), code) + body


def startup(body: bytes, protocol: int = 196608) -> bytes:
    return packet(protocol, body)


def message(msg_type: bytes, payload: bytes) -> bytes:
    return msg_type + struct.pack("!I", len(payload) + 4) + payload


# --- startup_packet_length -----------------------------------------------------------

@pytest.mark.parametrize("length", [8, 100, MAX_STARTUP_PACKET_LEN])
def test_startup_packet_length_accepts_sane_lengths(length):
    assert startup_packet_length(struct.pack("!I", length) + b"rest") == length


@pytest.mark.parametrize("header", [b"\0\0\0\x07", struct.pack("!I", MAX_STARTUP_PACKET_LEN + 1),
                                    b"\xff\xff\xff\xff", b"\0\0\0"])
def test_startup_packet_length_refuses_bad_headers(header):
    with pytest.raises(ProtocolError):
        startup_packet_length(header)


# --- parse_startup_packet ------------------------------------------------------------

def test_startup_message_params():
    result = parse_startup_packet(startup(b"user\0alice\0database\0shop\0\0"))
    assert result == StartupMessage(196608, {"user": "alice", "database": "shop"})
    assert result.minor_version == 0


def test_startup_message_keeps_higher_minor_version():
    result = parse_startup_packet(startup(b"user\0bob\0_pq_.x\0y\0\0", protocol=(3 << 16) | 2))
    assert isinstance(result, StartupMessage)
    assert result.minor_version == 2
    assert result.params["_pq_.x"] == "y"


def test_startup_message_without_params_and_with_empty_value():
    assert parse_startup_packet(startup(b"\0")).params == {}
    assert parse_startup_packet(startup(b"user\0\0\0")).params == {"user": ""}


def test_startup_message_decodes_utf8():
    body = "user\0jürgen\0\0".encode()
    assert parse_startup_packet(startup(body)).params == {"user": "jürgen"}


@pytest.mark.parametrize("body", [
    b"",                           # no terminator at all
    b"user\0alice\0",              # final terminator missing
    b"user\0alice",                # value not terminated
    b"user\0\0",                   # name without value
    b"\0\0",                       # empty name
    b"user\0a\0user\0b\0\0",       # duplicate
    b"user\0\xff\xfe\0\0",         # not UTF-8
    b"user\0a\0\0trailing\0\0",    # bytes after the terminator
])
def test_startup_message_malformed_params(body):
    with pytest.raises(ProtocolError):
        parse_startup_packet(startup(body))


def test_ssl_gssenc_and_cancel_requests():
    assert parse_startup_packet(packet(80877103)) == SSLRequest()
    assert parse_startup_packet(packet(80877104)) == GSSENCRequest()
    cancel = parse_startup_packet(packet(80877102, struct.pack("!II", 4242, 0xDEADBEEF)))
    assert cancel == CancelRequest(4242, 0xDEADBEEF)


@pytest.mark.parametrize("raw", [
    packet(80877103, b"x"),                    # SSLRequest with a body
    packet(80877102, b"\0\0\0\1"),             # CancelRequest too short
    packet(80877102, b"\0" * 12),              # CancelRequest too long
    packet((1234 << 16) | 9999),               # unknown request code
    packet(2 << 16, b"\0"),                    # protocol 2.0
    packet(4 << 16, b"\0"),                    # protocol 4.0
    packet(80877103)[:-1],                     # length field larger than the packet
    packet(80877103) + b"\0",                  # length field smaller than the packet
])
def test_startup_packet_refused(raw):
    with pytest.raises(ProtocolError):
        parse_startup_packet(raw)


# --- MessageReader -------------------------------------------------------------------

def test_reader_returns_none_until_complete():
    reader = MessageReader()
    data = message(b"Q", b"select 1\0")
    for byte in data[:-1]:
        reader.feed(bytes([byte]))
        assert reader.next_message() is None
    reader.feed(data[-1:])
    assert reader.next_message() == (ord("Q"), b"select 1\0")
    assert reader.next_message() is None


def test_reader_splits_several_messages_from_one_feed():
    reader = MessageReader()
    reader.feed(message(b"p", b"secret\0") + message(b"S", b"") + message(b"X", b"")[:3])
    assert reader.next_message() == (ord("p"), b"secret\0")
    assert reader.next_message() == (ord("S"), b"")
    assert reader.next_message() is None


@pytest.mark.parametrize("length", [0, 3])
def test_reader_refuses_length_below_4(length):
    reader = MessageReader()
    reader.feed(b"Q" + struct.pack("!I", length))
    with pytest.raises(ProtocolError):
        reader.next_message()


def test_reader_refuses_length_above_max_before_body_arrives():
    reader = MessageReader(max_length=100)
    reader.feed(b"p" + struct.pack("!I", 101))
    with pytest.raises(ProtocolError):
        reader.next_message()


def test_reader_accepts_length_equal_to_max():
    reader = MessageReader(max_length=10)
    reader.feed(message(b"p", b"123456"))
    assert reader.next_message() == (ord("p"), b"123456")


def test_reader_survives_many_feed_consume_cycles():
    """Compaction must never lose or duplicate bytes across many small feeds."""
    reader = MessageReader()
    payloads = [str(i).encode() * (i % 7) for i in range(3000)]
    stream = b"".join(message(b"d", p) for p in payloads)
    got = []
    for start in range(0, len(stream), 13):
        reader.feed(stream[start:start + 13])
        while True:
            item = reader.next_message()
            if item is None:
                break
            got.append(item[1])
    assert got == payloads
