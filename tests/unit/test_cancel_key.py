"""Cancel keys with a peer id in them, and where a received cancel is routed."""
from __future__ import annotations

import pytest

from bouncer.proto.cancel_key import TTL_MASK, Route, key_peer, new_key, route


@pytest.mark.parametrize("peer_id", [1, 2, 255, 256, 300, 16383])
def test_a_peered_key_carries_its_peer_id_and_a_full_ttl(peer_id: int) -> None:
    for _ in range(200):
        pid, secret = new_key(peer_id)
        assert key_peer(pid) == peer_id
        assert secret & TTL_MASK == TTL_MASK
        assert 0 <= pid < 2 ** 31 and 0 <= secret < 2 ** 32


def test_the_peer_id_sits_in_the_pids_second_and_third_bytes_low_byte_first() -> None:
    # PgBouncer 1.21+'s layout: byte 1 is the id's low byte, byte 2 its high byte.
    pid, _ = new_key(0x1234)
    assert pid.to_bytes(4, "big")[1:3] == b"\x34\x12"


def test_without_peering_keys_keep_all_their_bits_random() -> None:
    keys = [new_key(0) for _ in range(200)]
    assert len({key_peer(pid) for pid, _ in keys}) > 1
    assert {secret & TTL_MASK for _, secret in keys} == {0, 1, 2, 3}
    assert all(0 <= pid < 2 ** 31 for pid, _ in keys)


def test_our_own_key_is_handled_here_with_its_ttl_bits_restored() -> None:
    pid, secret = new_key(2)
    assert route(2, pid, secret) == Route(0, (pid, secret))
    assert route(2, pid, secret & ~TTL_MASK) == Route(0, (pid, secret))  # forwarded 3 times


def test_another_peers_key_is_forwarded_with_one_ttl_unit_spent() -> None:
    pid, secret = new_key(3)
    assert route(1, pid, secret) == Route(3, (pid, secret - 1))
    assert route(1, pid, secret - 1) == Route(3, (pid, secret - 2))


def test_another_peers_key_with_its_ttl_spent_is_dropped() -> None:
    pid, secret = new_key(3)
    assert route(1, pid, secret & ~TTL_MASK) is None


def test_without_peering_every_key_is_looked_up_here_unchanged() -> None:
    pid, secret = new_key(3)
    assert route(0, pid, secret) == Route(0, (pid, secret))


def test_a_key_no_peer_issued_is_looked_up_here_unchanged() -> None:
    pid = 0x7F0000AB  # peer bits 0: a key given out while peering was off
    assert route(1, pid, 0x10) == Route(0, (pid, 0x10))
