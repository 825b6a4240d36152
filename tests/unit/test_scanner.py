"""Header-only relay scanners: results must not depend on where chunks are cut."""
from __future__ import annotations

import struct

import pytest

from bouncer.errors import ProtocolError
from bouncer.proto import backend, frontend
from bouncer.proto.constants import TXN_FAILED, TXN_IDLE, TXN_IN_BLOCK
from bouncer.proto.scanner import ClientScanner, ServerScanner


def msg(msg_type: bytes, payload: bytes = b"") -> bytes:
    return msg_type + struct.pack("!I", len(payload) + 4) + payload


def ends_of(messages, kind):
    """Offsets where each message of ``kind`` starts and ends in the joined stream."""
    spans, pos = [], 0
    for wire in messages:
        if wire[:1] == kind:
            spans.append((pos, pos + len(wire)))
        pos += len(wire)
    return spans


SERVER_MESSAGES = [
    backend.authentication(0),
    backend.parameter_status("client_encoding", "UTF8"),
    backend.parameter_status("TimeZone", "UTC"),
    backend.backend_key_data(99, 12345),
    backend.ready_for_query(TXN_IDLE),
    backend.row_description([("n", 23), ("s", 25)]),
    *[backend.data_row([str(i), "x" * (i * 3)]) for i in range(40)],
    backend.data_row(["big", "y" * 3000]),
    backend.command_complete("SELECT 41"),
    backend.ready_for_query(TXN_IN_BLOCK),
    backend.parameter_status("application_name", "batch job"),
    backend.error_response("ERROR", "42601", "syntax error"),
    backend.ready_for_query(TXN_FAILED),
    msg(b"1"), msg(b"2"), backend.empty_query_response(),
    backend.ready_for_query(TXN_IDLE),
]
SERVER_STREAM = b"".join(SERVER_MESSAGES)
SERVER_PARAMS = [("client_encoding", "UTF8"), ("TimeZone", "UTC"),
                 ("application_name", "batch job")]
READY_ENDS = [end for _, end in ends_of(SERVER_MESSAGES, b"Z")]

CLIENT_MESSAGES = [
    frontend.query("select 1"),
    frontend.parse("s1", "select $1", [23]), frontend.bind("", "s1", [b"1"]),
    frontend.describe_portal(""), frontend.execute(""), frontend.sync(),
    frontend.parse("", "insert into t values ($1)"),
    frontend.bind("", "", [b"x" * 2000]), frontend.execute(""), frontend.sync(),
    msg(b"F", b"\0\0\0\x10" + b"\0" * 8),  # FunctionCall
    frontend.query("copy t from stdin"), msg(b"d", b"1\tone\n" * 50), msg(b"c"),
    msg(b"H"),
    frontend.terminate(),
    frontend.query("never scanned"),
]
CLIENT_STREAM = b"".join(CLIENT_MESSAGES)
SYNC_STARTS = [start for kind in (b"Q", b"S", b"F")
               for start, _ in ends_of(CLIENT_MESSAGES[:-1], kind)]
TERMINATE_AT = ends_of(CLIENT_MESSAGES, b"X")[0][0]


# --- ServerScanner -------------------------------------------------------------------

def test_server_scanner_whole_stream():
    scanner = ServerScanner()
    assert scanner.last_status == TXN_IDLE  # scanning starts after login, which ends idle
    assert scanner.feed(SERVER_STREAM) == 4
    assert scanner.last_status == TXN_IDLE
    assert scanner.param_updates == SERVER_PARAMS


def test_server_scanner_split_anywhere():
    for cut in range(1, len(SERVER_STREAM)):
        scanner = ServerScanner()
        first = scanner.feed(SERVER_STREAM[:cut])
        assert first == sum(end <= cut for end in READY_ENDS), cut
        assert first + scanner.feed(SERVER_STREAM[cut:]) == 4, cut
        assert scanner.last_status == TXN_IDLE, cut
        assert scanner.param_updates == SERVER_PARAMS, cut


def test_server_scanner_byte_by_byte_tracks_status_as_it_goes():
    scanner = ServerScanner()
    statuses = []
    for i in range(len(SERVER_STREAM)):
        if scanner.feed(SERVER_STREAM[i:i + 1]):
            statuses.append(scanner.last_status)
    assert statuses == [TXN_IDLE, TXN_IN_BLOCK, TXN_FAILED, TXN_IDLE]
    assert scanner.param_updates == SERVER_PARAMS


def test_server_scanner_counts_several_ready_in_one_chunk():
    scanner = ServerScanner()
    chunk = backend.ready_for_query(TXN_IN_BLOCK) + backend.ready_for_query(TXN_FAILED)
    assert scanner.feed(chunk) == 2
    assert scanner.last_status == TXN_FAILED


@pytest.mark.parametrize("stream", [
    b"D\0\0\0\x03",                        # length below 4
    msg(b"Z", b"II"),                      # ReadyForQuery must have exactly one byte
    msg(b"Z"),
    msg(b"S", b"no terminator"),           # malformed ParameterStatus
])
def test_server_scanner_refuses_bad_messages(stream):
    with pytest.raises(ProtocolError):
        ServerScanner().feed(stream)


@pytest.mark.parametrize("cut", range(1, 5))
def test_server_scanner_refuses_bad_length_in_split_header(cut):
    scanner = ServerScanner()
    stream = msg(b"C", b"SELECT 1\0") + b"D\0\0\0\x02"
    scanner.feed(stream[:len(stream) - 5 + cut])
    with pytest.raises(ProtocolError):
        scanner.feed(stream[len(stream) - 5 + cut:])


def test_server_scanner_refuses_huge_parameter_status():
    with pytest.raises(ProtocolError):
        ServerScanner().feed(b"S" + struct.pack("!I", 1 << 24) + b"name\0")


# --- ClientScanner -------------------------------------------------------------------

def test_client_scanner_whole_stream():
    scanner = ClientScanner()
    assert scanner.feed(CLIENT_STREAM) == 5  # 2 Query, 2 Sync, 1 FunctionCall
    assert scanner.terminate_at == TERMINATE_AT
    assert (scanner.parse_count, scanner.bind_count) == (2, 2)


def test_client_scanner_split_anywhere():
    for cut in range(1, len(CLIENT_STREAM)):
        scanner = ClientScanner()
        first = scanner.feed(CLIENT_STREAM[:cut])
        assert first == sum(start < cut for start in SYNC_STARTS), cut
        if TERMINATE_AT < cut:
            assert scanner.terminate_at == TERMINATE_AT, cut
            continue
        assert scanner.terminate_at is None, cut
        assert first + scanner.feed(CLIENT_STREAM[cut:]) == 5, cut
        assert scanner.terminate_at == TERMINATE_AT - cut, cut
        assert (scanner.parse_count, scanner.bind_count) == (2, 2), cut


def test_client_scanner_without_terminate_leaves_it_none():
    scanner = ClientScanner()
    assert scanner.feed(frontend.query("select 1") + frontend.sync()) == 2
    assert scanner.terminate_at is None


@pytest.mark.parametrize("cut", range(1, 5))
def test_client_scanner_refuses_bad_length_in_split_header(cut):
    scanner = ClientScanner()
    stream = frontend.sync() + b"Q\0\0\0\x01"
    scanner.feed(stream[:len(stream) - 5 + cut])
    with pytest.raises(ProtocolError):
        scanner.feed(stream[len(stream) - 5 + cut:])


def test_client_scanner_knows_when_nothing_is_outstanding() -> None:
    scanner = ClientScanner()
    assert scanner.at_sync_point
    parse = frontend.parse("", "SELECT 1")
    scanner.feed(parse)
    assert not scanner.at_sync_point  # a Parse without its Sync
    scanner.feed(frontend.sync())
    assert scanner.at_sync_point
    query = frontend.query("SELECT 1")
    scanner.feed(query[:7])
    assert not scanner.at_sync_point  # half a Query
    scanner.feed(query[7:])
    assert scanner.at_sync_point
