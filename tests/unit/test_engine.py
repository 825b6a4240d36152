"""The protocol engines, bytes only: phases, refusals, and when a server may be given back.

The reference for "may be given back" is a small model of PostgreSQL's message loop
(``Backend``), written apart from ``bouncer.proto``: simple and extended queries, the skip
to Sync after an error, COPY in both directions (the Sync ignored during COPY IN, an error
mid-copy), FunctionCall.  Hypothesis sends random conversations through the engines, cut
at random on both sides, and checks at every step that the engines never call a server
idle that is not, and always do once it is.
"""
from __future__ import annotations

import struct
from typing import List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from bouncer.errors import ClientError, ProtocolError
from bouncer.proto.client_engine import NEED_SERVER, ClientEngine, Phase
from bouncer.proto.framing import SSLRequest, StartupMessage
from bouncer.proto.server_engine import ServerEngine, ServerProtocolError


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def query(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\0")


def startup(**params: str) -> bytes:
    body = struct.pack("!I", 196608) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


SYNC, FLUSH = msg(b"S"), msg(b"H")


def pieces(data: bytes, cuts: Sequence[int]) -> List[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def relay_engine() -> ClientEngine:
    engine = ClientEngine()
    engine.start_relay()
    return engine


# -- login phases -------------------------------------------------------------------------------

@given(st.lists(st.integers(0, 200), max_size=6))
def test_a_startup_packet_in_pieces_is_handed_out_whole(cuts) -> None:
    packet = startup(user="u", database="d")
    engine = ClientEngine()
    found = []
    for chunk in pieces(packet, cuts):
        engine.feed(chunk)
        found.append(engine.next_startup_packet())
    assert all(item is None for item in found[:-1])
    assert isinstance(found[-1], StartupMessage)
    assert found[-1].params == {"user": "u", "database": "d"}


def test_bytes_after_a_phase_stay_for_the_next() -> None:
    engine = ClientEngine()
    password = msg(b"p", b"secret\0")
    engine.feed(startup(user="u") + password + query("SELECT 1"))
    assert isinstance(engine.next_startup_packet(), StartupMessage)
    engine.start_authentication()
    assert engine.phase == Phase.AUTHENTICATION
    assert engine.next_message() == (ord("p"), b"secret\0")
    engine.start_relay()
    assert engine.buffered
    assert engine.receive(b"") is NEED_SERVER
    engine.pipeline = ServerEngine().pipeline
    assert engine.receive_pending() == query("SELECT 1")
    assert engine.pipeline.kinds() == [ord("Q")]


def test_an_ssl_request_is_a_packet_of_its_own() -> None:
    engine = ClientEngine()
    engine.feed(struct.pack("!II", 8, 80877103))
    assert isinstance(engine.next_startup_packet(), SSLRequest)
    assert not engine.buffered


# -- what no client may send --------------------------------------------------------------------

VALID = b"QPBDESHCFdcfX"


@given(st.integers(0, 255).filter(lambda kind: kind not in VALID), st.binary(max_size=20))
def test_a_message_type_no_client_sends_is_refused(kind, body) -> None:
    engine = relay_engine()
    engine.pipeline = ServerEngine().pipeline
    with pytest.raises(ClientError) as refused:
        engine.receive(query("SELECT 1") + bytes([kind]) + struct.pack("!I", 4 + len(body)) + body)
    assert (refused.value.message, refused.value.sqlstate) == ("unknown pkt", "08P01")
    assert refused.value.log_reason == f"unknown pkt from client: {kind}/{kind:#x}"


def test_a_cut_header_of_an_unknown_type_is_refused_at_once() -> None:
    engine = relay_engine()
    engine.pipeline = ServerEngine().pipeline
    with pytest.raises(ClientError):
        engine.receive(b"p\0")


def test_terminate_stops_the_walk() -> None:
    engine = relay_engine()
    engine.pipeline = ServerEngine().pipeline
    out = engine.receive(query("SELECT 1") + msg(b"X") + query("SELECT 2"))
    assert out == query("SELECT 1") and engine.terminated


@pytest.mark.parametrize("length", [0, 3, 4097, 2**32 - 1])
def test_bad_lengths_are_protocol_errors(length) -> None:
    """Below 4, or above max_packet_size (refused before any of the body is awaited)."""
    engine = ClientEngine(max_length=4096)
    engine.start_relay()
    engine.pipeline = ServerEngine().pipeline
    with pytest.raises(ProtocolError):
        engine.receive(b"Q" + struct.pack("!I", length))
    with pytest.raises(ServerProtocolError):
        ServerEngine(max_length=4096).receive(b"D" + struct.pack("!I", length))


def test_a_server_message_no_server_sends_is_refused() -> None:
    with pytest.raises(ServerProtocolError):
        ServerEngine().receive(msg(b"p", b"x"))


def test_a_chunk_with_nothing_to_change_is_the_same_object() -> None:
    engine = relay_engine()
    engine.pipeline = ServerEngine().pipeline
    chunk = query("SELECT 1") + msg(b"P", b"\0SELECT 1\0\0\0") + SYNC
    assert engine.receive(chunk) is chunk
    replies = msg(b"T", b"\0\0") + msg(b"D", b"\0\0") + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")
    assert ServerEngine().receive(replies) is replies


# -- a model of PostgreSQL's message loop ---------------------------------------------------------

class Backend:
    """What a backend answers, message by message, and whether it could serve someone else.

    SQL is a word: ``SELECT``, ``bad`` (an error), ``BEGIN``/``COMMIT``, ``COPYIN`` and
    ``COPYOUT``.  CopyData ``bad`` fails a copy in.
    """

    def __init__(self) -> None:
        self.out = bytearray()
        self.unread = bytearray()
        self.status = b"I"
        self.skipping = False  # after an error in an extended-protocol message
        self.unsynced = False  # extended-protocol messages since the last Sync
        self.copy: Optional[str] = None  # "simple" or "extended" while copying in
        self.portal = b""  # the unnamed portal's SQL
        self.ready = True  # the last thing sent was ReadyForQuery

    # bytes in

    def receive(self, data: bytes) -> None:
        self.unread += data
        while len(self.unread) >= 5:
            end = 1 + struct.unpack_from("!I", self.unread, 1)[0]
            if len(self.unread) < end:
                break
            kind, body = bytes(self.unread[:1]), bytes(self.unread[5:end])
            del self.unread[:end]
            self.message(kind, body)

    def message(self, kind: bytes, body: bytes) -> None:
        if self.copy is not None:
            return self.copying(kind, body)
        if kind in b"dcf":
            return  # outside COPY: ignored
        if kind in b"PBDEC":
            self.unsynced = True
        elif kind in b"QF" and not self.skipping:
            self.unsynced = False  # a simple query ends the implicit transaction too
        if kind == b"S":
            self.skipping = self.unsynced = False
            return self.send(b"Z", self.status)
        if self.skipping or kind == b"H":
            return
        self.ready = False
        getattr(self, "on_" + kind.decode())(body)

    def copying(self, kind: bytes, body: bytes) -> None:
        if kind == b"d":
            if body == b"bad":
                self.copy_failed()
        elif kind == b"c":
            extended, self.copy = self.copy == "extended", None
            self.send(b"C", b"COPY 1\0")
            if not extended:
                self.send(b"Z", self.status)
        elif kind not in b"SH":  # CopyFail, or a message that breaks the copy
            self.copy_failed()

    def copy_failed(self) -> None:
        extended, self.copy = self.copy == "extended", None
        self.error(extended)

    def send(self, kind: bytes, body: bytes = b"") -> None:
        self.out += msg(kind, body)
        self.ready = kind == b"Z"

    def error(self, extended: bool) -> None:
        self.send(b"E", b"SERROR\0C42000\0Mfailed\0\0")
        if self.status == b"T":
            self.status = b"E"
        if extended:
            self.skipping = True
        else:
            self.send(b"Z", self.status)

    def run(self, sql: bytes, extended: bool) -> None:
        if sql == b"bad":
            return self.error(extended)
        if sql == b"COPYIN":
            self.copy = "extended" if extended else "simple"
            return self.send(b"G", b"\0\0\0")
        if sql == b"COPYOUT":
            self.send(b"H", b"\0\0\0")
            self.send(b"d", b"row\n")
            self.send(b"c")
        elif sql == b"SELECT":
            self.send(b"D", b"\0\1\0\0\0\1x")
        elif sql == b"BEGIN":
            self.status = b"T"
        elif sql == b"COMMIT":
            self.status = b"I"
        self.send(b"C", sql + b"\0")
        if not extended:
            self.send(b"Z", self.status)

    # messages

    def on_Q(self, body: bytes) -> None:
        self.run(body[:-1], extended=False)

    def on_F(self, body: bytes) -> None:
        self.send(b"V", b"\0\0\0\0")
        self.send(b"Z", self.status)

    def on_P(self, body: bytes) -> None:
        sql = body[1:body.index(b"\0", 1)]
        if sql == b"badparse":
            return self.error(True)
        self.portal = sql
        self.send(b"1")

    def on_B(self, body: bytes) -> None:
        self.send(b"2")

    def on_D(self, body: bytes) -> None:
        self.send(b"n")

    def on_E(self, body: bytes) -> None:
        self.run(self.portal, extended=True)

    def on_C(self, body: bytes) -> None:
        self.send(b"3")

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data


def releasable(server: ServerEngine, client: ClientEngine) -> bool:
    """What the relay asks before it gives a server back."""
    return (server.status == ord("I") and server.pipeline.idle and server.at_boundary
            and client.at_boundary)


def could_serve_another(backend: Backend) -> bool:
    return (backend.ready and backend.status == b"I" and not backend.unsynced
            and backend.copy is None and not backend.unread)


REQUESTS = [
    query("SELECT"), query("bad"), query("BEGIN"), query("COMMIT"), query("COPYIN"),
    query("COPYOUT"),
    msg(b"P", b"\0SELECT\0\0\0"), msg(b"P", b"\0COPYIN\0\0\0"), msg(b"P", b"\0bad\0\0\0"),
    msg(b"P", b"\0badparse\0\0\0"), msg(b"B", b"\0\0\0\0\0\0\0\0"), msg(b"D", b"P\0"),
    msg(b"E", b"\0\0\0\0\0"), msg(b"C", b"P\0"), SYNC, FLUSH,
    msg(b"F", b"\0\0\0\1\0\0\0\0\0\0"),
]
COPY_MESSAGES = [msg(b"d", b"1\n"), msg(b"d", b"bad"), msg(b"c"), msg(b"f", b"stop\0")]


class Conversation:
    """A client engine and a server engine between a client and the model backend."""

    def __init__(self) -> None:
        self.client, self.server, self.backend = relay_engine(), ServerEngine(), Backend()
        self.client.pipeline = self.server.pipeline
        self.undelivered = b""
        self.delivered = bytearray()  # what the server sent the pooler
        self.relayed = bytearray()  # what the pooler passed on to the client

    def send(self, batch: bytes, cuts: Sequence[int], deliveries: Sequence[int]) -> None:
        """The client sends ``batch`` in pieces; part of the replies arrive in between.  The
        engines must never call the server idle while the backend has more to say."""
        shares = iter(deliveries)
        for chunk in pieces(batch, cuts):
            forwarded = self.client.receive(chunk)
            assert forwarded is not NEED_SERVER
            self.backend.receive(bytes(forwarded))
            self.undelivered += self.backend.take()
            self.deliver(next(shares, 0) % (len(self.undelivered) + 1), cuts)

    def deliver(self, count: int, cuts: Sequence[int]) -> None:
        now, self.undelivered = self.undelivered[:count], self.undelivered[count:]
        for piece in pieces(now, cuts):
            self.delivered += piece
            self.relayed += self.server.receive(piece)
            if releasable(self.server, self.client):
                assert not self.undelivered and could_serve_another(self.backend)

    def deliver_all(self, cuts: Sequence[int]) -> None:
        self.deliver(len(self.undelivered), cuts)
        assert self.relayed == self.delivered  # nothing to drop or add here


CUTS = st.lists(st.integers(0, 10**6), max_size=3)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_server_is_released_while_postgres_still_works_for_its_client(data) -> None:
    """Whatever the client sends (copy messages out of turn included), cut anywhere."""
    talk = Conversation()
    for _ in range(data.draw(st.integers(1, 10))):
        batch = b"".join(data.draw(st.lists(st.sampled_from(REQUESTS + COPY_MESSAGES),
                                            min_size=1, max_size=5)))
        cuts, deliveries = data.draw(CUTS), data.draw(CUTS)
        note(f"batch {batch!r}, cuts {cuts}, deliveries {deliveries}")
        talk.send(batch, cuts, deliveries)
        talk.deliver_all(cuts)
        if releasable(talk.server, talk.client):
            assert could_serve_another(talk.backend)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_server_is_released_once_postgres_could_serve_another_client(data) -> None:
    """A client as libpq: copy data only once asked for, CopyDone/CopyFail to end it (and a
    Sync after an extended-protocol COPY); pipelined requests otherwise."""
    talk = Conversation()
    for _ in range(data.draw(st.integers(1, 10))):
        batch = b"".join(data.draw(st.lists(st.sampled_from(REQUESTS), min_size=1,
                                            max_size=5)))
        cuts, deliveries = data.draw(CUTS), data.draw(CUTS)
        note(f"batch {batch!r}, cuts {cuts}, deliveries {deliveries}")
        talk.send(batch, cuts, deliveries)
        talk.deliver_all(cuts)
        while talk.server.pipeline.client_copy:  # told CopyInResponse: data, then the end
            rows = data.draw(st.lists(st.sampled_from(COPY_MESSAGES[:2]), max_size=3))
            end = data.draw(st.sampled_from(COPY_MESSAGES[2:]))
            extended = talk.backend.copy == "extended" or talk.backend.skipping
            talk.send(b"".join(rows) + end + (SYNC if extended else b""), cuts, deliveries)
            talk.deliver_all(cuts)
        note(f"backend ready={talk.backend.ready} status={talk.backend.status} "
             f"unsynced={talk.backend.unsynced}, owed {talk.server.pipeline.kinds()}")
        assert releasable(talk.server, talk.client) == could_serve_another(talk.backend)


def test_copy_data_before_the_copy_in_response_keeps_the_server_with_its_client() -> None:
    """Sent ahead, CopyData that fails the copy makes PostgreSQL answer what follows it
    outside the copy: bouncer cannot tell that from the replies, so it never lets another
    client have that server."""
    talk = Conversation()
    talk.send(query("COPYIN") + msg(b"d", b"bad") + SYNC + query("SELECT"), [], [])
    talk.deliver_all([])
    assert talk.server.pipeline.lost and not releasable(talk.server, talk.client)


@pytest.mark.parametrize("cut", [0, len(query("COPYIN"))], ids=["sent-ahead", "sent-after-the-reply"])
def test_a_message_that_breaks_a_copy_in_is_answered_after_the_copy(cut) -> None:
    """PostgreSQL fails the copy on the first message that is not copy data, Sync or Flush,
    and answers what follows normally: the Sync behind it gets its ReadyForQuery, whether the
    client sent it before or after the CopyInResponse reached bouncer."""
    talk = Conversation()
    talk.send(query("COPYIN") + query("SELECT") + msg(b"P", b"\0SELECT\0\0\0") + SYNC,
              [cut], [10**6])
    talk.deliver_all([])
    assert talk.server.pipeline.kinds() == [] and not talk.server.pipeline.client_copy
    assert releasable(talk.server, talk.client) and could_serve_another(talk.backend)


def test_a_query_after_copy_rows_keeps_the_server_with_its_client() -> None:
    """A row may have failed the copy before the query came (then PostgreSQL runs the query)
    or not (then the query is what failed it): the replies cannot tell which."""
    talk = Conversation()
    talk.send(query("COPYIN"), [], [])
    talk.deliver_all([])
    talk.send(msg(b"d", b"bad") + msg(b"P", b"\0SELECT\0\0\0"), [], [])
    talk.deliver_all([])
    assert talk.server.pipeline.lost and not releasable(talk.server, talk.client)


# -- the pipeline's own accounting ------------------------------------------------------------------

def test_the_sync_libpq_sends_before_copy_data_is_not_answered() -> None:
    client, server = relay_engine(), ServerEngine()
    client.pipeline = server.pipeline
    client.receive(msg(b"P", b"\0COPYIN\0\0\0") + msg(b"B", b"\0\0\0\0\0\0\0\0")
                   + msg(b"D", b"P\0") + msg(b"E", b"\0\0\0\0\0") + SYNC)
    server.receive(msg(b"1") + msg(b"2") + msg(b"n") + msg(b"G", b"\0\0\0"))
    client.receive(msg(b"d", b"1\n") + msg(b"c"))
    server.receive(msg(b"C", b"COPY 1\0"))
    assert not releasable(server, client)  # the copy consumed the first Sync
    client.receive(SYNC)
    assert not releasable(server, client)
    server.receive(msg(b"Z", b"I"))
    assert releasable(server, client)


def test_replies_to_an_unsynced_execute_do_not_release() -> None:
    client, server = relay_engine(), ServerEngine()
    client.pipeline = server.pipeline
    client.receive(msg(b"P", b"\0SELECT\0\0\0") + msg(b"B", b"\0\0\0\0\0\0\0\0")
                   + msg(b"E", b"\0\0\0\0\0") + FLUSH)
    server.receive(msg(b"1") + msg(b"2") + msg(b"C", b"SELECT 1\0"))
    assert server.pipeline.kinds() == [] and not releasable(server, client)
    client.receive(FLUSH)
    assert not releasable(server, client)
    client.receive(SYNC)
    server.receive(msg(b"Z", b"I"))
    assert releasable(server, client)
