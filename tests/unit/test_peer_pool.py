"""A peer's forwarding slots: pool_size at a time, the rest in arrival order."""
from __future__ import annotations

from typing import List

import gevent
import pytest
from gevent.event import Event

from bouncer.pool.peer_pool import PeerPool


def hold(pool: PeerPool, size: int, name: str, order: List[str], release: Event) -> None:
    with pool.turn(size):
        order.append(name)
        release.wait()


def test_at_most_size_forwards_run_and_the_rest_go_in_arrival_order() -> None:
    pool, order, release = PeerPool(1), [], Event()
    workers = [gevent.spawn(hold, pool, 2, name, order, release) for name in "abcd"]
    gevent.sleep(0)
    assert (order, pool.active, pool.waiting) == (["a", "b"], 2, 2)
    release.set()
    gevent.joinall(workers, timeout=2, raise_error=True)
    assert (order, pool.active, pool.waiting) == (list("abcd"), 0, 0)


def test_size_zero_is_unlimited() -> None:
    pool, order, release = PeerPool(1), [], Event()
    workers = [gevent.spawn(hold, pool, 0, str(n), order, release) for n in range(30)]
    gevent.sleep(0)
    assert (pool.active, pool.waiting) == (30, 0)
    release.set()
    gevent.joinall(workers, timeout=2, raise_error=True)


def test_a_timeout_in_the_queue_leaves_it_and_frees_nothing_it_did_not_hold() -> None:
    pool, order, release = PeerPool(1), [], Event()
    holder = gevent.spawn(hold, pool, 1, "holder", order, release)
    gevent.sleep(0)
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.05), pool.turn(1):
            pass
    assert (pool.active, pool.waiting) == (1, 0)
    release.set()
    holder.join(2)
    assert (pool.active, pool.waiting) == (0, 0)


def test_a_bigger_size_after_a_reload_admits_the_waiting_at_the_next_request() -> None:
    pool, order, release = PeerPool(1), [], Event()
    workers = [gevent.spawn(hold, pool, 1, name, order, release) for name in "ab"]
    gevent.sleep(0)
    assert order == ["a"]
    workers.append(gevent.spawn(hold, pool, 3, "c", order, release))
    gevent.sleep(0.01)  # b, woken, runs after c, which found its slot free
    assert (sorted(order), pool.active, pool.waiting) == (["a", "b", "c"], 3, 0)
    release.set()
    gevent.joinall(workers, timeout=2, raise_error=True)
