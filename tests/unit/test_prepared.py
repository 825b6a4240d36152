"""Named prepared statements in transaction pooling, through the protocol engines.

The reference is a small model of a PostgreSQL backend (``Backend``), written apart from
``bouncer.proto``: a client talking to its own backend directly must see the same replies as
the same client going through the engines to servers shared with another client, whatever
the chunking on either side.  Hypothesis drives random sessions through both paths.
"""
from __future__ import annotations

import re
import struct
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from bouncer.errors import ClientError, ProtocolError
from bouncer.proto import extended
from bouncer.proto.client_engine import NEED_SERVER, ClientEngine
from bouncer.proto.prepared import PreparedStatements
from bouncer.proto.server_engine import ServerEngine
from bouncer.proto.statements import ADD, REMOVE, ServerStatements, StatementRegistry

Message = Tuple[bytes, bytes]


# -- wire helpers (independent of bouncer.proto) ----------------------------------------------

def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def cs(text: str) -> bytes:
    return text.encode() + b"\0"


def parse(name: str, sql: str, types: Sequence[int] = ()) -> bytes:
    return msg(b"P", cs(name) + cs(sql) + struct.pack("!h", len(types))
               + b"".join(struct.pack("!I", oid) for oid in types))


def bind(statement: str, params: Sequence[bytes] = (), portal: str = "") -> bytes:
    values = b"".join(struct.pack("!i", len(value)) + value for value in params)
    return msg(b"B", cs(portal) + cs(statement) + struct.pack("!hh", 0, len(params)) + values
               + struct.pack("!h", 0))


def describe(kind: bytes, name: str) -> bytes:
    return msg(b"D", kind + cs(name))


def close(kind: bytes, name: str) -> bytes:
    return msg(b"C", kind + cs(name))


def execute(portal: str = "") -> bytes:
    return msg(b"E", cs(portal) + struct.pack("!i", 0))


def query(sql: str) -> bytes:
    return msg(b"Q", cs(sql))


SYNC, FLUSH = msg(b"S"), msg(b"H")


def split(data: bytes) -> List[Message]:
    messages, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("!I", data, pos + 1)
        messages.append((data[pos:pos + 1], data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    assert pos == len(data), "stream ends inside a message"
    return messages


def cstrings(body: bytes, count: int) -> Tuple[List[bytes], int]:
    found, pos = [], 0
    for _ in range(count):
        end = body.index(b"\0", pos)
        found.append(body[pos:end])
        pos = end + 1
    return found, pos


def summary(data: bytes) -> List[Tuple[bytes, bytes]]:
    """Replies as a client compares them: errors by SQLSTATE only (messages carry names)."""
    return [(kind, re.search(rb"C([0-9A-Z]{5})\0", body).group(1) if kind == b"E" else body)
            for kind, body in split(data)]


# -- a PostgreSQL backend, as far as prepared statements go -----------------------------------

RESET = re.compile(rb"\s*(discard|deallocate)\s+all\s*;?\s*", re.I)


class Backend:
    """Named and unnamed statements and portals, errors, skip-to-Sync after an error."""

    def __init__(self) -> None:
        self.statements: Dict[bytes, bytes] = {}
        self.portals: Dict[bytes, bytes] = {}
        self.skipping = False
        self.out = bytearray()
        self.received = bytearray()
        self.unread = bytearray()
        self.engine = ServerEngine(track_statements=True)  # the relay's, per server connection

    def receive(self, data: bytes) -> None:
        """Take bytes as a socket would: a message may arrive in several pieces."""
        self.received += data
        self.unread += data
        complete = 0
        while len(self.unread) - complete >= 5:
            end = complete + 1 + struct.unpack_from("!I", self.unread, complete + 1)[0]
            if end > len(self.unread):
                break
            complete = end
        data, self.unread = bytes(self.unread[:complete]), self.unread[complete:]
        for kind, body in split(data):
            if self.skipping and kind != b"S":
                continue
            getattr(self, "on_" + kind.decode())(body)

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data

    def error(self, code: str, extended_protocol: bool = True) -> None:
        self.out += msg(b"E", b"SERROR\0C" + code.encode() + b"\0Mfailed\0\0")
        self.skipping = extended_protocol

    def rows(self, sql: bytes) -> None:
        if sql.lower().startswith(b"select"):
            self.out += msg(b"D", struct.pack("!hi", 1, 1) + b"1")
        self.out += msg(b"C", b"OK\0")

    def on_P(self, body: bytes) -> None:
        (name, sql), _ = cstrings(body, 2)
        if name and name in self.statements:
            return self.error("42P05")
        if b"bad" in sql:
            return self.error("42601")
        self.statements[name] = sql
        self.out += msg(b"1")

    def on_B(self, body: bytes) -> None:
        (portal, name), pos = cstrings(body, 2)
        (formats,) = struct.unpack_from("!h", body, pos)
        (count,) = struct.unpack_from("!h", body, pos + 2 + 2 * formats)
        pos += 4 + 2 * formats
        values = []
        for _ in range(count):
            (size,) = struct.unpack_from("!i", body, pos)
            values.append(body[pos + 4:pos + 4 + size])
            pos += 4 + size
        if name not in self.statements:
            return self.error("26000")
        if b"bad" in values:
            return self.error("22P02")
        self.portals[portal] = self.statements[name]
        self.out += msg(b"2")

    def on_D(self, body: bytes) -> None:
        name = body[1:-1]
        found = (self.statements if body[:1] == b"S" else self.portals).get(name)
        if found is None:
            return self.error("26000" if body[:1] == b"S" else "34000")
        if body[:1] == b"S":
            self.out += msg(b"t", struct.pack("!h", 0))
        self.out += msg(b"T", b"\0\0") if found.lower().startswith(b"select") else msg(b"n")

    def on_E(self, body: bytes) -> None:
        found = self.portals.get(body[:body.index(b"\0")])
        if found is None:
            return self.error("34000")
        self.rows(found)

    def on_C(self, body: bytes) -> None:
        (self.statements if body[:1] == b"S" else self.portals).pop(body[1:-1], None)
        self.out += msg(b"3")

    def on_S(self, body: bytes) -> None:
        self.skipping = False
        self.portals.clear()  # the implicit transaction ends
        self.out += msg(b"Z", b"I")

    def on_H(self, body: bytes) -> None:
        pass

    def on_Q(self, body: bytes) -> None:
        sql = body[:-1]
        self.statements.pop(b"", None)
        self.portals.clear()
        if RESET.fullmatch(sql):
            self.statements.clear()
            self.out += msg(b"C", b"DEALLOCATE ALL\0")
        elif b"bad" in sql:
            self.error("42601", extended_protocol=False)
        else:
            self.rows(sql)
        self.out += msg(b"Z", b"I")

    def prepared_by_bouncer(self) -> set:
        return {name for name in self.statements if name.startswith(b"BOUNCER_")}


# -- the relay's side, without sockets --------------------------------------------------------

class Link:
    """One client's engine, fed the way the relay feeds it."""

    def __init__(self, capacity: int, registry: StatementRegistry) -> None:
        self.stats = SimpleNamespace(server_parse_count=0, client_parse_count=0, bind_count=0)
        self.engine = ClientEngine(prepared=PreparedStatements(lambda: capacity, self.stats,
                                                                   registry))
        self.engine.start_relay()
        self.received = bytearray()  # everything the client got
        self.server: Optional[Backend] = None

    @property
    def names(self) -> Dict[bytes, object]:
        return self.engine.prepared.names

    def attach(self, server: Backend) -> None:
        self.server = server
        self.engine.pipeline = server.engine.pipeline
        server.engine.pipeline.names = self.names

    def send(self, chunk: bytes) -> None:
        to_server = self.engine.receive(chunk)
        assert to_server is not NEED_SERVER
        replies = self.engine.prepared.replies
        self.received += b"".join(replies)
        replies.clear()
        if to_server:
            self.server.receive(bytes(to_server))

    def deliver(self, chunk: bytes) -> None:
        self.received += self.server.engine.receive(chunk)

    def detach(self) -> None:
        engine = self.server.engine
        assert engine.pipeline.idle and engine.at_boundary and self.engine.at_boundary, \
            "released with replies still owed"
        engine.pipeline.names = None
        self.engine.pipeline = None
        self.server = None


def server_statements(server: Backend) -> ServerStatements:
    return server.engine.pipeline.statements


def pieces(data: bytes, cuts: Sequence[int]) -> List[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def run_batch(link: Link, server: Backend, batch: bytes, client_cuts: Sequence[int],
              server_cuts: Sequence[int]) -> None:
    """Send ``batch`` in pieces, delivering server output in pieces in between."""
    link.attach(server)
    cuts = iter(server_cuts)
    for chunk in pieces(batch, client_cuts):
        link.send(chunk)
        pending = server.take()
        keep = next(cuts, 0) % (len(pending) + 1)
        for piece in pieces(pending[:keep], server_cuts):
            link.deliver(piece)
        server.out[:0] = pending[keep:]
    for piece in pieces(server.take(), server_cuts):
        link.deliver(piece)
    link.detach()


def direct(batch: bytes, backend: Backend) -> bytes:
    backend.receive(batch)
    return backend.take()


# -- examples --------------------------------------------------------------------------------

@pytest.fixture
def registry() -> StatementRegistry:
    return StatementRegistry()


def test_a_parse_goes_to_the_server_under_the_shared_name(registry) -> None:
    link, server = Link(10, registry), Backend()
    run_batch(link, server, parse("s1", "SELECT 1") + SYNC, [], [])
    assert server.prepared_by_bouncer() == {b"BOUNCER_1"}
    assert b"s1" not in server.statements
    assert summary(bytes(link.received)) == [(b"1", b""), (b"Z", b"I")]
    assert link.stats.server_parse_count == 1


def test_a_statement_the_server_has_is_not_parsed_again(registry) -> None:
    first, second, server = Link(10, registry), Link(10, registry), Backend()
    run_batch(first, server, parse("a", "SELECT 1") + SYNC, [], [])
    server.received.clear()
    run_batch(second, server, parse("b", "SELECT 1") + bind("b") + execute() + SYNC, [], [])
    assert [kind for kind, _ in split(bytes(server.received))] == [b"B", b"E", b"S"]
    assert [kind for kind, _ in summary(bytes(second.received))] == [b"1", b"2", b"D", b"C",
                                                                      b"Z"]
    assert second.stats.server_parse_count == 0


def test_bind_on_another_server_prepares_there_first_and_swallows_the_reply(registry) -> None:
    link, one, two = Link(10, registry), Backend(), Backend()
    run_batch(link, one, parse("s", "SELECT 1") + SYNC, [], [])
    link.received.clear()
    run_batch(link, two, bind("s") + execute() + SYNC, [], [])
    assert two.prepared_by_bouncer() == {b"BOUNCER_1"}
    assert [kind for kind, _ in summary(bytes(link.received))] == [b"2", b"D", b"C", b"Z"]


def test_describe_statement_is_renamed(registry) -> None:
    link, one, two = Link(10, registry), Backend(), Backend()
    run_batch(link, one, parse("s", "SELECT 1") + SYNC, [], [])
    link.received.clear()
    run_batch(link, two, describe(b"S", "s") + SYNC, [], [])
    assert [kind for kind, _ in summary(bytes(link.received))] == [b"t", b"T", b"Z"]


def test_close_forgets_the_name_only_and_answers_itself(registry) -> None:
    link, server = Link(10, registry), Backend()
    run_batch(link, server, parse("s", "SELECT 1") + SYNC, [], [])
    link.received.clear()
    run_batch(link, server, close(b"S", "s") + parse("s", "SELECT 2") + bind("s") + execute()
              + SYNC, [], [])
    assert [kind for kind, _ in summary(bytes(link.received))] == [b"3", b"1", b"2", b"D", b"C",
                                                                   b"Z"]
    assert server.prepared_by_bouncer() == {b"BOUNCER_1", b"BOUNCER_2"}
    assert set(link.names) == {b"s"}


def test_past_the_cap_the_least_recently_used_statement_is_closed(registry) -> None:
    link, server = Link(2, registry), Backend()
    batch = b"".join(parse(name, f"SELECT {n}") for n, name in enumerate("abc")) + SYNC
    run_batch(link, server, batch, [], [])
    assert server.prepared_by_bouncer() == {b"BOUNCER_2", b"BOUNCER_3"}
    assert [kind for kind, _ in summary(bytes(link.received))] == [b"1", b"1", b"1", b"Z"]
    link.received.clear()
    run_batch(link, server, bind("a") + execute() + SYNC, [], [])  # re-prepared, b evicted
    assert server.prepared_by_bouncer() == {b"BOUNCER_1", b"BOUNCER_3"}
    assert len(server_statements(server)) == 2
    assert [kind for kind, _ in summary(bytes(link.received))] == [b"2", b"D", b"C", b"Z"]


def test_an_error_before_a_synthetic_reply_drops_it_and_the_name(registry) -> None:
    owner, link, server = Link(10, registry), Link(10, registry), Backend()
    run_batch(owner, server, parse("x", "SELECT 1") + SYNC, [], [])
    run_batch(link, server, parse("p", "SELECT $1") + bind("p", [b"bad"]) + execute()
              + parse("y", "SELECT 1") + SYNC, [], [])
    assert summary(bytes(link.received)) == [(b"1", b""), (b"E", b"22P02"), (b"Z", b"I")]
    assert set(link.names) == {b"p"}  # y was skipped by the server


def test_a_failing_injected_parse_reports_its_error(registry) -> None:
    link, one, two = Link(10, registry), Backend(), Backend()
    run_batch(link, one, parse("s", "SELECT 1") + SYNC, [], [])
    two.on_P = lambda body: two.error("42P01")  # type: ignore  # the table is gone there
    link.received.clear()
    run_batch(link, two, bind("s") + execute() + SYNC, [], [])
    assert summary(bytes(link.received)) == [(b"E", b"42P01"), (b"Z", b"I")]
    assert len(server_statements(two)) == 0


def test_deallocate_all_empties_the_client_and_the_server(registry) -> None:
    link, server = Link(10, registry), Backend()
    run_batch(link, server, parse("s", "SELECT 1") + SYNC, [], [])
    run_batch(link, server, query("DEALLOCATE ALL"), [], [])
    assert link.names == {} and len(server_statements(server)) == 0
    assert server.prepared_by_bouncer() == set()


def test_a_failed_discard_all_changes_nothing(registry) -> None:
    link, server = Link(10, registry), Backend()
    run_batch(link, server, parse("s", "SELECT 1") + SYNC, [], [])
    server.on_Q = lambda body: (server.error("25001", False), server.out.extend(msg(b"Z", b"T")))
    run_batch(link, server, query("discard all;"), [], [])
    assert [statement.name for statement in server_statements(server)] == [b"BOUNCER_1"]
    assert set(link.names) == {b"s"}


def test_reusing_an_open_name_ends_the_session(registry) -> None:
    link, server = Link(10, registry), Backend()
    run_batch(link, server, parse("s", "SELECT 1") + SYNC, [], [])
    link.attach(server)
    with pytest.raises(ClientError) as caught:
        link.send(parse("s", "SELECT 2") + SYNC)
    assert (caught.value.sqlstate, caught.value.message) == (
        "08P01", "prepared statement name is already in use")


@pytest.mark.parametrize("message", [bind("nope") + execute(), describe(b"S", "nope")])
def test_an_unknown_name_ends_the_session(registry, message) -> None:
    link = Link(10, registry)
    link.attach(Backend())
    with pytest.raises(ClientError) as caught:
        link.send(message + SYNC)
    assert caught.value.message == "prepared statement did not exist"
    assert caught.value.detail == "prepared statement 'nope' not found"


@pytest.mark.parametrize("bad", [
    msg(b"P", b"s\0SELECT 1\0"),  # no parameter count
    msg(b"P", b"s\0SELECT 1\0\0\x01"),  # one type announced, none given
    msg(b"P", b"s\0SELECT 1\0\xff\xff"),  # negative count
    msg(b"B", b"\0s"),  # statement name not terminated
    msg(b"D", b"Ss"),  # name not terminated
    msg(b"C", b"Ss\0junk"),
])
def test_malformed_messages_naming_a_statement_are_protocol_errors(registry, bad) -> None:
    link = Link(10, registry)
    link.attach(Backend())
    with pytest.raises(ProtocolError):
        link.send(bad)


def test_unnamed_traffic_is_forwarded_as_the_same_bytes(registry) -> None:
    link, server = Link(10, registry), Backend()
    link.attach(server)
    chunk = parse("", "SELECT $1") + bind("", [b"1"]) + describe(b"P", "") + execute() + SYNC
    assert link.engine.receive(chunk) is chunk
    assert link.engine.prepared.replies == []


def test_a_named_statement_the_server_has_is_renamed_in_place(registry) -> None:
    link, server = Link(10, registry), Backend()
    run_batch(link, server, parse("s", "SELECT 1") + SYNC, [], [])
    link.attach(server)
    out = link.engine.receive(bind("s") + execute() + SYNC)
    assert [kind for kind, _ in split(out)] == [b"B", b"E", b"S"]
    assert server.engine.pipeline.kinds() == [ord("B"), ord("E"), ord("S")]


def test_server_statements_keep_lru_order_and_rebuild_from_what_was_confirmed() -> None:
    registry, server = StatementRegistry(), ServerStatements()
    a, b, c = (registry.get(cs(f"SELECT {n}") + b"\0\0") for n in range(3))
    for statement in (a, b, c):
        server.expect((ADD, statement))
    assert server.touch(a) and not server.touch(registry.get(b"other\0\0\0"))
    assert server.evictions(2) == [b]
    server.confirm((ADD, a))
    server.confirm((ADD, b))
    server.rebuild([(REMOVE, a), (ADD, c)])  # b and c failed; a close and c again pending
    assert list(server) == [b, c] and server.confirmed(b) and not server.confirmed(c)


def test_registry_entries_die_with_their_last_user() -> None:
    registry = StatementRegistry()
    statement = registry.get(b"SELECT 1\0\0\0")
    assert registry.get(b"SELECT 1\0\0\0") is statement and len(registry) == 1
    del statement
    assert len(registry) == 0


# -- wire helpers of bouncer.proto.extended ----------------------------------------------------

def test_extended_parsers_and_builders() -> None:
    payload = parse("s", "SELECT $1", [23])[5:]
    name, definition = extended.parse_parse(payload)
    assert (name, extended.parse_message(name, definition)) == (b"s", parse("s", "SELECT $1", [23]))
    bound = bind("s", [b"42"], portal="p")
    assert extended.parse_bind_names(bound[5:])[:2] == (b"p", b"s")
    assert extended.parse_bind_names(bound[5:])[2] == len(b"p\0s\0")
    assert extended.parse_target(describe(b"S", "s")[5:], "Describe") == (extended.STATEMENT, b"s")
    assert extended.describe_statement(b"x") == describe(b"S", "x")
    assert extended.close_statement(b"x") == close(b"S", "x")


# -- random sessions against the model --------------------------------------------------------

NAMES = ["a", "b", "c"]
QUERIES = ["SELECT 1", "SELECT 2", "INSERT bad", "UPDATE t"]


def steps(draw, known: set) -> bytes:
    """A batch of requests ending in Sync, using names as a sane client does.

    Bind and Describe name only statements the client holds, and no Parse reuses a held name:
    otherwise bouncer ends the session, as PgBouncer does.  A Sync inside the batch comes only
    before any Parse or Close of a name: the engine updates a client's names when it sees
    those, and the server's verdict (an error before them makes the server skip them) arrives
    later; requests pipelined behind the Sync in between see the names as updated.  For the
    same reason no named Parse follows a DEALLOCATE ALL in the same batch.
    """
    parts, held, renamed, reset = [], set(known), False, False
    for _ in range(draw(st.integers(1, 6))):
        choice = draw(st.integers(0, 9))
        name = draw(st.sampled_from(NAMES))
        if choice <= 1 and name not in held and not reset:
            parts.append(parse(name, draw(st.sampled_from(QUERIES))))
            held.add(name)
            renamed = True
        elif choice <= 3 and held:
            value = draw(st.sampled_from([b"1", b"bad"]))
            parts.append(bind(draw(st.sampled_from(sorted(held))), [value]) + execute())
        elif choice == 4 and held:
            parts.append(describe(b"S", draw(st.sampled_from(sorted(held)))))
        elif choice == 5:
            parts.append(close(b"S", name))
            held.discard(name)
            renamed = True
        elif choice == 6:
            parts.append(parse("", draw(st.sampled_from(QUERIES))) + bind("") + execute())
        elif choice == 7:
            sql = draw(st.sampled_from(["SELECT 3", "bad", "DEALLOCATE ALL"]))
            parts.append(query(sql))
            if sql.startswith("DEALLOCATE"):
                held.clear()
                renamed = reset = True
        elif choice == 8 and not renamed:
            parts.append(SYNC)
        else:
            parts.append(FLUSH)
    return b"".join(parts) + SYNC


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_clients_see_what_their_own_backend_would_say(data) -> None:
    registry = StatementRegistry()
    capacity = data.draw(st.integers(1, 3))
    links = [Link(capacity, registry) for _ in range(2)]
    own = [Backend() for _ in range(2)]  # each client's private session: the reference
    shared = [Backend() for _ in range(2)]
    for _ in range(data.draw(st.integers(1, 8))):
        who, where = data.draw(st.integers(0, 1)), data.draw(st.integers(0, 1))
        batch = steps(data.draw, {name.decode() for name in own[who].statements if name})
        client_cuts = data.draw(st.lists(st.integers(0, 10**6), max_size=4))
        server_cuts = data.draw(st.lists(st.integers(0, 10**6), max_size=4))
        note(f"client {who} on server {where}, cuts {client_cuts} {server_cuts}: {split(batch)}")
        link = links[who]
        link.received.clear()
        run_batch(link, shared[where], batch, client_cuts, server_cuts)
        assert summary(bytes(link.received)) == summary(direct(batch, own[who]))
        assert set(link.names) == {n for n in own[who].statements if n}
        for server in shared:
            assert {statement.name for statement in server_statements(server)} \
                == server.prepared_by_bouncer()
            assert len(server_statements(server)) <= capacity


def hostile_messages(kinds: bytes) -> st.SearchStrategy:
    """Messages of the given types with random bodies (sometimes a plausible name first)."""
    body = st.one_of(st.binary(max_size=40),
                     st.builds(lambda kind, name, rest: kind + name + b"\0" + rest,
                               st.sampled_from([b"S", b"P", b""]), st.sampled_from([b"a", b""]),
                               st.binary(max_size=12)))
    return st.lists(st.builds(msg, st.sampled_from([bytes([k]) for k in kinds]), body),
                    max_size=8).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(hostile_messages(b"PBDCQSEHX"), hostile_messages(b"123ZETnCDs"),
       st.lists(st.integers(0, 400), max_size=5))
def test_hostile_messages_give_protocol_errors_only(requests, replies, cuts) -> None:
    """Random bodies for the messages the tracker parses, on both sides: a clean
    ProtocolError (or the duplicate-name ClientError), never another exception."""
    registry = StatementRegistry()
    owner = Link(2, registry)
    server = Backend()
    run_batch(owner, server, parse("x", "SELECT 1") + SYNC, [], [])
    link = Link(2, registry)
    link.attach(server)
    try:
        for chunk in pieces(parse("a", "SELECT 1") + bind("x") + requests, cuts):
            link.engine.receive(chunk)
        for chunk in pieces(replies, cuts):
            server.engine.receive(chunk)
    except (ProtocolError, ClientError):
        pass
