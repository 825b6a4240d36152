"""Pool limits across workers, without sockets: the slot channel's framing (fed hostile bytes
too), the supervisor's slot accounting against a simple model, fair shares and the shared
client count (bouncer.slots)."""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Set, Tuple

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bouncer.slots import client_count
from bouncer.slots.client_count import ALL
from bouncer.slots.messages import (MAX_FRAME, Announce, Ask, Cancel, ChannelError,
                                    FrameReader, Granted, Queued, Refill, Release, Shrink,
                                    encode)
from bouncer.slots.table import LIMITS, POOL_SIZE, Caps, SlotTable, fair_shares, in_scope
from tests.unit.test_layering import imported_modules

MESSAGES = (Ask, Cancel, Release, Announce, Granted, Queued, Shrink, Refill)
# Names as a startup packet can carry them: anything but NUL.
names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                max_size=40)
counts = st.integers(min_value=0, max_value=2**31 - 1)
FIELD_STRATEGIES = {"int": counts, "str": names, "bool": st.booleans()}


def message_of(cls: Any) -> Any:
    return st.builds(cls, *(FIELD_STRATEGIES[str(field.type)]
                            for field in dataclasses.fields(cls)))


any_message = st.one_of(*(message_of(cls) for cls in MESSAGES))


def fed_in_chunks(data: bytes, cuts: List[int]) -> List[Any]:
    reader, messages, start = FrameReader(), [], 0
    for cut in sorted(cut % (len(data) + 1) for cut in cuts) + [len(data)]:
        messages += reader.feed(data[start:cut])
        start = cut
    return messages


# -- framing -------------------------------------------------------------------------------------

@given(st.lists(any_message, max_size=8), st.lists(st.integers(min_value=0), max_size=10))
def test_messages_survive_framing_at_any_chunk_boundary(messages, cuts) -> None:
    data = b"".join(encode(message) for message in messages)
    assert fed_in_chunks(data, cuts) == messages


@settings(max_examples=300)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=6))
def test_hostile_bytes_give_messages_or_a_channel_error_only(data, cuts) -> None:
    try:
        messages = fed_in_chunks(data, cuts)
    except ChannelError:
        return
    assert all(isinstance(message, MESSAGES) for message in messages)


@given(any_message, st.binary(min_size=1, max_size=50))
def test_garbage_after_a_message_does_not_undo_it(message, garbage) -> None:
    reader = FrameReader()
    assert reader.feed(encode(message)) == [message]
    try:
        reader.feed(garbage)
    except ChannelError:
        with pytest.raises(ChannelError):  # and the channel stays failed
            reader.feed(encode(message))


@pytest.mark.parametrize("frame", [
    b"X\0\0\0\x04",                                   # an unknown type
    b"C\0\0\0\x03",                                   # a length shorter than itself
    b"C" + (MAX_FRAME + 1).to_bytes(4, "big"),        # too long to wait for
    b"C\0\0\0\x06" + b"1\0" + b"C\0\0\0\x04",         # a good frame, then one without its field
    b"C\0\0\0\x07" + b"01\0",                         # a number with a leading zero
    b"C\0\0\0\x10" + b"99999999999\0",                 # a number too big
    b"C\0\0\0\x08" + b"1\0\0\0",                        # fields too many
    b"R\0\0\0\x08" + b"\xff\0u\0",                    # a name that is not UTF-8
    b"S\0\0\0\x10" + b"pool_size\0d\0u\0",            # fields missing
])
def test_malformed_frames_are_refused(frame) -> None:
    with pytest.raises(ChannelError):
        FrameReader().feed(frame + bytes(8))


def test_the_sans_io_modules_import_neither_gevent_nor_sockets() -> None:
    for module in ("bouncer.slots.messages", "bouncer.slots.table",
                   "bouncer.slots.client_count"):
        imported = set(imported_modules(module))
        assert not {"gevent", "socket", "bouncer.net"} & imported, module


# -- fair shares -------------------------------------------------------------------------------

@given(st.dictionaries(st.integers(1, 6), st.integers(0, 20), max_size=6), st.integers(0, 30),
       st.dictionaries(st.integers(1, 6), st.integers(0, 20)))
def test_fair_shares_never_exceed_the_cap_nor_a_demand(demands, cap, held) -> None:
    shares = fair_shares(demands, cap, held)
    assert sum(shares.values()) <= cap
    assert all(0 <= shares[w] <= demands[w] for w in demands)
    if sum(demands.values()) <= cap:
        assert shares == demands
    else:
        assert sum(shares.values()) == cap  # nothing left unused while someone wants more
        short = [shares[w] for w in demands if shares[w] < demands[w]]
        assert max(shares.values()) - min(short) <= 1  # the short ones got the most there was


# -- the slot table against a model --------------------------------------------------------------

KEYS = [("db1", "u1"), ("db1", "u2"), ("db2", "u1")]
WORKERS = [1, 2, 3]


class SlotTableMachine(RuleBasedStateMachine):
    """Random asks, releases, cancels, announcements and deaths; the model is the list of
    slots each worker was told it holds, and the requests still unanswered by a grant."""

    def __init__(self) -> None:
        super().__init__()
        self.table = SlotTable()
        self.held: Dict[int, "Counter[Tuple[str, str]]"] = {w: Counter() for w in WORKERS}
        self.asked: Dict[Tuple[int, int], Tuple[Tuple[str, str], Caps]] = {}
        #: The min_pool_size of each fill asked for; the fills refused, told of by a Refill.
        self.fills: Dict[Tuple[int, int], int] = {}
        self.unfilled: Set[Tuple[int, Tuple[str, str]]] = set()
        self.next_request = 1

    def deliver(self, outgoing: List[Tuple[int, Any]]) -> None:
        for worker, message in outgoing:
            if isinstance(message, Granted):
                key, caps = self.asked.pop((worker, message.request))
                assert key == (message.database, message.user)
                self.held[worker][key] += 1
                for limit in LIMITS:  # a grant never goes past the limits it was asked with
                    assert not caps.cap(limit) or self.model_count(limit, key) <= caps.cap(limit)
                minimum = self.fills.pop((worker, message.request), None)
                assert minimum is None or self.model_count(POOL_SIZE, key) <= minimum
            elif isinstance(message, Refill):
                self.unfilled.remove((worker, (message.database, message.user)))
            elif isinstance(message, Shrink):
                assert message.target < self.table.worker_count(worker, message.limit,
                                                                (message.database, message.user))
            else:
                assert isinstance(message, Queued) and (worker, message.request) in self.asked

    @rule(worker=st.sampled_from(WORKERS), key=st.sampled_from(KEYS),
          caps=st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 4)),
          minimum=st.integers(0, 3), wait=st.booleans())
    def ask(self, worker, key, caps, minimum, wait) -> None:
        request, self.next_request = self.next_request, self.next_request + 1
        self.asked[(worker, request)] = (key, Caps(*caps))
        if not wait:
            self.fills[(worker, request)] = minimum
        out = self.table.ask(worker, Ask(request, *key, *caps, minimum, wait))
        if not wait and isinstance(out[0][1], Queued):
            assert out == [(worker, Queued(request, out[0][1].limit))]  # and no room made
            del self.asked[(worker, request)], self.fills[(worker, request)]
            if minimum:  # (a connection nobody wants any more: nothing to tell it)
                self.unfilled.add((worker, key))
        else:
            self.deliver(out)

    @rule(worker=st.sampled_from(WORKERS), key=st.sampled_from(KEYS))
    def release(self, worker, key) -> None:
        if not self.held[worker][key]:
            with pytest.raises(ValueError):
                self.table.release(worker, key)
            return
        self.held[worker][key] -= 1
        self.deliver(self.table.release(worker, key))

    @rule(data=st.data())
    def cancel(self, data) -> None:
        if self.asked:
            worker, request = data.draw(st.sampled_from(sorted(self.asked)))
            del self.asked[(worker, request)]
            self.deliver(self.table.cancel(worker, request))

    @rule(worker=st.sampled_from(WORKERS), key=st.sampled_from(KEYS),
          caps=st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 4)))
    def announce(self, worker, key, caps) -> None:
        for (asker, request), (asked_key, _) in self.asked.items():
            if (asker, asked_key) == (worker, key):
                self.asked[(asker, request)] = (key, Caps(*caps))
        self.deliver(self.table.announce(worker, Announce(*key, *caps)))

    @rule(worker=st.sampled_from(WORKERS))
    def dies(self, worker) -> None:
        self.held[worker] = Counter()
        self.asked = {ask: value for ask, value in self.asked.items() if ask[0] != worker}
        self.unfilled = {(w, key) for w, key in self.unfilled if w != worker}
        self.deliver(self.table.worker_gone(worker))

    def model_count(self, limit: str, key: Tuple[str, str]) -> int:
        return sum(n for w in WORKERS for other, n in self.held[w].items()
                   if in_scope(limit, key, other))

    @invariant()
    def counts_match_the_model(self) -> None:
        for limit in LIMITS:
            for key in KEYS:
                assert self.table.count(limit, key) == self.model_count(limit, key)

    @invariant()
    def what_waits_could_not_be_granted(self) -> None:
        assert {(p.worker, p.request) for p in self.table.queue} == set(self.asked)
        for pending in self.table.queue:
            assert self.table.blocking_limit(pending.key, pending.caps) is not None

    @invariant()
    def a_refused_fill_hears_once_it_would_be_granted(self) -> None:
        assert set(self.table.fillers) == self.unfilled
        for (_, key), (caps, minimum) in self.table.fillers.items():
            assert self.table.blocking_fill_limit(key, caps, minimum) is not None


TestSlotTable = SlotTableMachine.TestCase
TestSlotTable.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_equal_loads_keep_the_servers_where_they_are() -> None:
    # Three slots, both workers wanting more: the odd one stays with the worker holding it.
    assert fair_shares({1: 4, 2: 2}, 3, held={1: 1, 2: 2}) == {1: 1, 2: 2}
    assert fair_shares({1: 4, 2: 2}, 3, held={1: 2, 2: 1}) == {1: 2, 2: 1}


def test_below_a_slot_per_worker_the_one_left_goes_to_a_worker_holding_none() -> None:
    # pool_size 1, two workers: the server worker 1 keeps (idle between its transactions)
    # goes to worker 2's waiting client instead of starving it.
    assert fair_shares({1: 1, 2: 1}, 1, held={1: 1}) == {1: 0, 2: 1}
    assert fair_shares({1: 2, 2: 1, 3: 1}, 2, held={1: 2}) == {1: 0, 2: 1, 3: 1}


def test_a_full_pool_queues_then_grants_oldest_first_and_asks_the_holder_for_room() -> None:
    table, key, caps = SlotTable(), ("db", "u"), (2, 0, 0)
    assert table.ask(1, Ask(1, *key, *caps, 0, True)) == [(1, Granted(1, *key))]
    assert table.ask(1, Ask(2, *key, *caps, 0, True)) == [(1, Granted(2, *key))]
    out = table.ask(2, Ask(3, *key, *caps, 0, True))
    assert out[0] == (2, Queued(3, "pool_size"))
    # Worker 1 holds both: it is asked to come down to its fair share, keeping one.
    assert out[1:] == [(1, Shrink("pool_size", "db", "u", 1,
                                  "evicted for another worker: pool_size reached", False))]
    table.ask(2, Ask(4, *key, *caps, 0, True))
    assert table.release(1, key)[0] == (2, Granted(3, *key))
    assert table.worker_gone(1)[0] == (2, Granted(4, *key))


def test_a_lowered_limit_has_every_holder_shrink_to_its_share() -> None:
    table, key = SlotTable(), ("db", "u")
    for worker, request in ((1, 1), (1, 2), (2, 3), (2, 4)):
        table.ask(worker, Ask(request, *key, 4, 0, 0, 0, True))
    out = table.announce(1, Announce(*key, 2, 0, 0))
    assert [(worker, message.target) for worker, message in out] == [(1, 1), (2, 1)]
    assert all(message.forced for _, message in out)


def test_min_pool_size_is_kept_by_the_workers_together_and_refilled_when_one_dies() -> None:
    table, key, caps = SlotTable(), ("db", "u"), (10, 0, 0)
    assert table.ask(1, Ask(1, *key, *caps, 2, False)) == [(1, Granted(1, *key))]
    assert table.ask(2, Ask(2, *key, *caps, 2, False)) == [(2, Granted(2, *key))]
    assert table.ask(2, Ask(3, *key, *caps, 2, False)) == [(2, Queued(3, "min_pool_size"))]
    assert table.ask(1, Ask(4, *key, *caps, 2, False)) == [(1, Queued(4, "min_pool_size"))]
    assert table.ask(1, Ask(5, *key, *caps, 2, True)) == [(1, Granted(5, *key))]  # a client's
    assert table.release(1, key) == []  # still 2: nobody asks again
    assert table.worker_gone(1) == [(2, Refill(*key))]


# -- the shared client count -------------------------------------------------------------------

DB, USER = ("database", "db1"), ("user", "u1")


def test_client_counts_hold_across_workers_per_scope_and_a_dead_workers_go(tmp_path: Path
                                                                           ) -> None:
    path = client_count.create(str(tmp_path), 2)
    first, second = client_count.ClientCount(path, 1), client_count.ClientCount(path, 2)
    assert first.admit("a", [(ALL, 3), (DB, 2), (USER, 0)]) is None
    assert second.admit("b", [(ALL, 3), (DB, 2), (USER, 0)]) is None
    assert second.admit("c", [(ALL, 3), (DB, 2), (USER, 0)]) == DB  # 2 clients of db1 already
    assert second.admit("c", [(ALL, 3), (("database", "db2"), 2), (USER, 0)]) is None
    assert first.admit("d", [(ALL, 3)]) == ALL  # a refused client counted nowhere: still 3
    first.leave("a")
    first.leave("a")  # (twice, or never admitted: nothing)
    assert first.admit("d", [(ALL, 3), (DB, 2), (USER, 2)]) == USER  # b and c are u1's
    client_count.reset(path, 2)
    assert first.admit("d", [(ALL, 1), (DB, 1), (USER, 1)]) is None
    first.close()
    second.close()


def test_the_client_table_grows_and_forgets_scopes_nobody_is_in(tmp_path: Path) -> None:
    path = client_count.create(str(tmp_path), 2)
    first, second = client_count.ClientCount(path, 1), client_count.ClientCount(path, 2)
    size = os.path.getsize(path)
    for number in range(3000):  # more scopes than the table has entries at first
        assert first.admit(number, [(("user", f"u{number}"), 1)]) is None
    assert os.path.getsize(path) > size
    assert second.admit("x", [(("user", "u2999"), 1)]) == ("user", "u2999")  # mapped anew
    for number in range(3000):
        first.leave(number)
    grown = os.path.getsize(path)
    for number in range(3000, 30000):  # one at a time: entries are reused, or rebuilt
        assert second.admit(number, [(("user", f"u{number}"), 1)]) is None
        second.leave(number)
    assert os.path.getsize(path) == grown
    first.close()
    second.close()


# -- the worker's end, over a real socketpair ----------------------------------------------------

class Supervisor:
    """The far end of a worker's slot channel, played by the test."""

    def __init__(self, sock: Any) -> None:
        self.sock, self.reader = sock, FrameReader()
        self.sock.settimeout(2)

    def receive(self) -> Any:
        messages: List[Any] = []
        while not messages:
            messages = self.reader.feed(self.sock.recv(4096))
        assert len(messages) == 1
        return messages[0]

    def send(self, message: Any) -> None:
        self.sock.sendall(encode(message))


@pytest.fixture
def worker_end() -> Iterator[Tuple[Any, Supervisor]]:
    from gevent import socket  # cooperative, as in the monkey-patched daemon
    from bouncer.slots.client import SlotClient
    ours, theirs = socket.socketpair()
    client = SlotClient(ours)
    client.start(SimpleNamespace())
    yield client, Supervisor(theirs)
    theirs.close()


def fake_pool(waiters: int = 1) -> Any:
    limits = SimpleNamespace(query_wait_timeout=lambda: 0.2, max_db_connections=lambda: 5,
                             max_user_connections=lambda: 0, min_pool_size=lambda: 1)
    return SimpleNamespace(database=SimpleNamespace(name="db"), user=SimpleNamespace(name="u"),
                           limits=limits, size=2, reserve=1, reserve_due=lambda: False,
                           waiters=[object()] * waiters, blocked_by=None)


def test_a_worker_asks_with_its_limits_and_opens_once_granted(worker_end) -> None:
    import gevent
    client, supervisor = worker_end
    asking = gevent.spawn(client.acquire, fake_pool())
    gevent.sleep(0.01)
    ask = supervisor.receive()
    assert ask == Ask(ask.request, "db", "u", 2, 5, 0, 1, True)
    supervisor.send(Granted(ask.request, "db", "u"))
    assert asking.get(timeout=2) is True


def test_a_request_nobody_waits_for_is_withdrawn_and_a_late_grant_given_back(worker_end
                                                                            ) -> None:
    import gevent
    client, supervisor = worker_end
    pool = fake_pool()
    asking = gevent.spawn(client.acquire, pool)
    gevent.sleep(0.01)
    ask = supervisor.receive()
    supervisor.send(Queued(ask.request, "max_db_connections"))
    gevent.sleep(0.05)
    assert pool.blocked_by == "max_db_connections"
    pool.waiters.clear()  # they timed out
    assert asking.get(timeout=2) is False
    assert supervisor.receive() == Cancel(ask.request)
    supervisor.send(Granted(ask.request, "db", "u"))  # it crossed the Cancel
    gevent.sleep(0.05)
    assert supervisor.receive() == Release("db", "u")


def test_without_the_supervisor_a_worker_keeps_serving(worker_end) -> None:
    import gevent
    client, supervisor = worker_end
    asking = gevent.spawn(client.acquire, fake_pool())
    gevent.sleep(0.01)
    supervisor.sock.close()
    assert asking.get(timeout=2) is True and client.lost


def test_a_refused_fill_is_final_and_the_pool_waits_for_a_refill(worker_end) -> None:
    import gevent
    client, supervisor = worker_end
    pool = fake_pool(waiters=0)
    asking = gevent.spawn(client.acquire, pool)
    gevent.sleep(0.01)
    ask = supervisor.receive()
    assert ask == Ask(ask.request, "db", "u", 2, 5, 0, 1, False)
    pool.waiters.append(object())  # a client came meanwhile: its pool asks for it anew
    supervisor.send(Queued(ask.request, "min_pool_size"))
    assert asking.get(timeout=2) is False and not client.may_fill(pool)
    assert supervisor.receive() == Cancel(ask.request)
    supervisor.send(Refill("db", "u"))
    gevent.sleep(0.05)
    assert client.may_fill(pool)
