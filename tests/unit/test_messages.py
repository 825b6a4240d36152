"""Frontend and backend message builders and parsers."""
from __future__ import annotations

import struct

import pytest

from bouncer.errors import ProtocolError
from bouncer.proto import backend, frontend
from bouncer.proto.constants import TXN_IN_BLOCK, AuthCode, Backend, Frontend
from bouncer.proto.framing import (
    CancelRequest,
    MessageReader,
    SSLRequest,
    StartupMessage,
    parse_startup_packet,
)


def split(wire: bytes):
    """Decode wire bytes into the list of (type, payload) they contain, all of it."""
    reader = MessageReader()
    reader.feed(wire)
    messages = []
    while True:
        item = reader.next_message()
        if item is None:
            break
        messages.append(item)
    consumed = sum(5 + len(payload) for _, payload in messages)
    assert consumed == len(wire), "builder produced a wrong length field"
    return messages


def only(wire: bytes, msg_type: int) -> bytes:
    [(got_type, payload)] = split(wire)
    assert got_type == msg_type
    return payload


# --- backend builders against backend parsers ----------------------------------------

def test_authentication_round_trip():
    payload = only(backend.authentication(AuthCode.MD5_PASSWORD, b"salt"), Backend.AUTHENTICATION)
    assert backend.parse_authentication(payload) == (5, b"salt")
    assert backend.authentication(AuthCode.OK) == b"R\0\0\0\x08\0\0\0\0"


def test_authentication_sasl_lists_mechanisms():
    payload = only(backend.authentication_sasl(["SCRAM-SHA-256"]), Backend.AUTHENTICATION)
    code, data = backend.parse_authentication(payload)
    assert code == AuthCode.SASL
    assert data == b"SCRAM-SHA-256\0\0"
    assert backend.parse_sasl_mechanisms(data) == ["SCRAM-SHA-256"]


def test_parameter_status_round_trip():
    payload = only(backend.parameter_status("TimeZone", "Europe/Paris"), Backend.PARAMETER_STATUS)
    assert backend.parse_parameter_status(payload) == ("TimeZone", "Europe/Paris")


def test_non_utf8_server_text_survives_a_round_trip():
    """A LATIN1 value from a server must be re-sent byte for byte, not rejected."""
    payload = b"application_name\0caf\xe9\0"
    name, value = backend.parse_parameter_status(payload)
    assert only(backend.parameter_status(name, value), Backend.PARAMETER_STATUS) == payload


def test_backend_key_data_round_trip_unsigned():
    payload = only(backend.backend_key_data(12345, 0xFFFFFFFF), Backend.BACKEND_KEY_DATA)
    assert backend.parse_backend_key_data(payload) == (12345, 0xFFFFFFFF)


def test_ready_for_query_bytes():
    assert backend.ready_for_query(TXN_IN_BLOCK) == b"Z\0\0\0\x05T"


def test_error_response_fields():
    wire = backend.error_response("FATAL", "08P01", "bad thing", detail="why", hint="fix it")
    fields = backend.parse_error_fields(only(wire, Backend.ERROR_RESPONSE))
    assert fields == {"S": "FATAL", "V": "FATAL", "C": "08P01", "M": "bad thing",
                      "D": "why", "H": "fix it"}


def test_notice_response_omits_absent_fields():
    wire = backend.notice_response("NOTICE", "00000", "hello")
    fields = backend.parse_error_fields(only(wire, Backend.NOTICE_RESPONSE))
    assert fields == {"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": "hello"}


def test_negotiate_protocol_version_layout():
    payload = only(backend.negotiate_protocol_version(0, ["_pq_.a", "_pq_.b"]),
                   Backend.NEGOTIATE_PROTOCOL_VERSION)
    assert payload == struct.pack("!ii", 0, 2) + b"_pq_.a\0_pq_.b\0"


def test_row_description_and_data_row_round_trip():
    desc = only(backend.row_description([("database", 25), ("port", 23)]),
                Backend.ROW_DESCRIPTION)
    assert backend.parse_row_description(desc) == ["database", "port"]
    # text format, typmod -1, int4 has typlen 4
    assert desc.endswith(struct.pack("!ihihih", 0, 0, 23, 4, -1, 0))
    row = only(backend.data_row(["shop", None, ""]), Backend.DATA_ROW)
    assert backend.parse_data_row(row) == [b"shop", None, b""]


def test_command_complete_and_empty_query():
    assert backend.parse_command_complete(
        only(backend.command_complete("SHOW"), Backend.COMMAND_COMPLETE)) == "SHOW"
    assert backend.empty_query_response() == b"I\0\0\0\x04"


def test_builders_refuse_nul_inside_strings():
    with pytest.raises(ValueError):
        backend.parameter_status("a\0b", "c")


# --- backend parsers on malformed payloads -------------------------------------------

@pytest.mark.parametrize("parser, payload", [
    (backend.parse_authentication, b"\0\0\0"),
    (backend.parse_parameter_status, b"name\0value"),
    (backend.parse_parameter_status, b"name\0value\0extra"),
    (backend.parse_backend_key_data, b"\0\0\0\1\0\0\0"),
    (backend.parse_backend_key_data, b"\0" * 12),
    (backend.parse_error_fields, b"Mmessage\0"),
    (backend.parse_error_fields, b"Mmessage"),
    (backend.parse_row_description, b"\0\1col\0" + b"\0" * 17),
    (backend.parse_row_description, b"\xff\xff"),
    (backend.parse_data_row, b"\0\1\0\0\0\x05abc"),
    (backend.parse_data_row, b"\0\1\xff\xff\xff\xfe"),
    (backend.parse_data_row, b"\0\0junk"),
    (backend.parse_command_complete, b"SELECT 1"),
    (backend.parse_sasl_mechanisms, b"SCRAM-SHA-256\0"),
])
def test_backend_parsers_refuse_malformed(parser, payload):
    with pytest.raises(ProtocolError):
        parser(payload)


# --- frontend builders ---------------------------------------------------------------

def test_startup_message_round_trip():
    params = {"user": "alice", "database": "shop", "application_name": "psql"}
    assert parse_startup_packet(frontend.startup_message(params)) == StartupMessage(196608, params)


def test_ssl_and_cancel_requests_round_trip():
    assert parse_startup_packet(frontend.ssl_request()) == SSLRequest()
    assert parse_startup_packet(frontend.cancel_request(7, 0x80000001)) == CancelRequest(7, 0x80000001)


def test_password_message_body_is_raw():
    payload = only(frontend.password_message(b"md5abc\0"), Frontend.PASSWORD)
    assert payload == b"md5abc\0"
    assert frontend.parse_password_message(payload) == b"md5abc"


def test_sasl_messages_round_trip():
    payload = only(frontend.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"),
                   Frontend.PASSWORD)
    assert frontend.parse_sasl_initial_response(payload) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert only(frontend.sasl_response(b"c=biws"), Frontend.PASSWORD) == b"c=biws"


def test_sasl_initial_response_without_data():
    payload = b"SCRAM-SHA-256\0" + struct.pack("!i", -1)
    assert frontend.parse_sasl_initial_response(payload) == ("SCRAM-SHA-256", b"")


def test_query_round_trip():
    assert frontend.parse_query(only(frontend.query("SHOW POOLS;"), Frontend.QUERY)) == "SHOW POOLS;"


def test_extended_query_messages_layout():
    wire = (frontend.parse("s1", "select $1", [23]) + frontend.bind("", "s1", [b"42", None])
            + frontend.describe_portal("") + frontend.execute("", 10) + frontend.sync())
    assert split(wire) == [
        (ord("P"), b"s1\0select $1\0" + struct.pack("!hI", 1, 23)),
        (ord("B"), b"\0s1\0" + struct.pack("!hh", 0, 2) + struct.pack("!i", 2) + b"42"
         + struct.pack("!i", -1) + struct.pack("!h", 0)),
        (ord("D"), b"P\0"),
        (ord("E"), b"\0" + struct.pack("!i", 10)),
        (ord("S"), b""),
    ]


def test_terminate_is_constant():
    assert frontend.terminate() == b"X\0\0\0\x04"


# --- frontend parsers on malformed payloads ------------------------------------------

@pytest.mark.parametrize("parser, payload", [
    (frontend.parse_password_message, b"secret"),
    (frontend.parse_password_message, b"sec\0ret\0"),
    (frontend.parse_sasl_initial_response, b"SCRAM-SHA-256\0\0\0\0\x05abc"),
    (frontend.parse_sasl_initial_response, b"SCRAM-SHA-256\0\xff\xff\xff\xfe"),
    (frontend.parse_sasl_initial_response, b"SCRAM-SHA-256\0\0\0\0\0extra"),
    (frontend.parse_sasl_initial_response, b"SCRAM-SHA-256"),
    (frontend.parse_query, b"select 1"),
])
def test_frontend_parsers_refuse_malformed(parser, payload):
    with pytest.raises(ProtocolError):
        parser(payload)
