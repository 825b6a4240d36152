"""Peering: bouncer processes sharing one port with so_reuseport pass a cancel request that
reached the wrong process on to the one whose client it is.

Each process also has a unix socket of its own, so the tests choose which process the client
talks to and which one gets the cancel, instead of leaving it to the kernel.
"""
from __future__ import annotations

import socket
import time
from typing import Dict, List, Tuple

import pytest

from bouncer.proto.cancel_key import TTL_MASK, key_peer
from tests.support import pgwire
from bouncer.testing.process import BouncerProcess
from bouncer.testing.ini import common_ini
from bouncer.testing.ports import free_port

QUERY_CANCELED = "57014"
PEER_IDS = (1, 2, 3)


def peer_ini(pg, port: int, peer_id: int, peers: Dict[int, str]) -> str:
    lines = "".join(f"{other} = host={directory} port={port}\n"
                    for other, directory in peers.items())
    return common_ini(pg, listen_port=port, so_reuseport=1, peer_id=peer_id) + (
        f"\n[peers]\n{lines}" if lines else "")


@pytest.fixture
def group(pg, bouncer_factory) -> Dict[int, BouncerProcess]:
    """Three peers on one port; every [peers] section lists all three, its own id too (which
    is allowed, so that all can share one section)."""
    port = free_port()
    bouncers = {peer_id: bouncer_factory(peer_ini(pg, port, peer_id, {}))
                for peer_id in PEER_IDS}
    directories = {peer_id: bouncer.workdir for peer_id, bouncer in bouncers.items()}
    for peer_id, bouncer in bouncers.items():
        # Its start was seen on the shared port, maybe served by another process.
        bouncer.wait_for_log("listening on unix:")
        bouncer.write_ini(peer_ini(pg, port, peer_id, directories))
        bouncer.admin("RELOAD", host=bouncer.workdir)
    return bouncers


def sleeping_session(bouncer: BouncerProcess) -> Tuple[socket.socket, Tuple[int, int]]:
    """A client of ``bouncer`` (over its own unix socket) running a long pg_sleep, and its
    cancel key."""
    sock, messages = pgwire.open_session(bouncer.workdir, bouncer.port, "md5user", "md5pass")
    sock.sendall(pgwire.query("SELECT pg_sleep(10)"))
    time.sleep(0.3)  # the query has reached PostgreSQL
    return sock, pgwire.backend_key(messages)


def send_cancel(bouncer: BouncerProcess, key: Tuple[int, int]) -> None:
    with pgwire.connect(bouncer.workdir, bouncer.port) as sock:
        sock.sendall(pgwire.cancel_request(*key))
        assert pgwire.closed_by_peer(sock, 5)


def outcome(sock: socket.socket, timeout: float) -> List[pgwire.Message]:
    sock.settimeout(timeout)
    return pgwire.read_until(sock, b"Z")


def sqlstate(messages: List[pgwire.Message]) -> str:
    error = pgwire.first_error(messages)
    return error["C"] if error else ""


def test_keys_carry_the_peer_id_of_the_process_that_issued_them(group) -> None:
    for peer_id, bouncer in group.items():
        sock, messages = pgwire.open_session(bouncer.workdir, bouncer.port, "md5user",
                                             "md5pass")
        sock.close()
        pid, secret = pgwire.backend_key(messages)
        assert key_peer(pid) == peer_id and secret & TTL_MASK == TTL_MASK


@pytest.mark.parametrize("owner, receiver", [(1, 2), (2, 3), (3, 1)])
def test_a_cancel_sent_to_another_peer_cancels_the_query(group, owner: int,
                                                         receiver: int) -> None:
    sock, key = sleeping_session(group[owner])
    with sock:
        started = time.monotonic()
        send_cancel(group[receiver], key)
        assert sqlstate(outcome(sock, 5)) == QUERY_CANCELED
        assert time.monotonic() - started < 3


def test_a_cancel_sent_to_the_owner_listed_in_its_own_peers_is_handled_there(group) -> None:
    sock, key = sleeping_session(group[2])
    with sock:
        send_cancel(group[2], key)
        assert sqlstate(outcome(sock, 5)) == QUERY_CANCELED


def test_a_cancel_that_has_used_up_its_forwards_is_dropped(group) -> None:
    sock, (pid, secret) = sleeping_session(group[1])
    with sock:
        send_cancel(group[2], (pid, secret & ~TTL_MASK))
        with pytest.raises(socket.timeout):
            outcome(sock, 1)  # still sleeping
        send_cancel(group[2], (pid, secret))
        assert sqlstate(outcome(sock, 5)) == QUERY_CANCELED


def test_a_cancel_passed_round_a_misrouted_group_gets_home(pg, group) -> None:
    """Peer 2 thinks 1 lives at 3's socket: the cancel goes 2 -> 3 -> 1, two forwards."""
    port = group[1].port
    wrong = {1: group[3].workdir, 3: group[3].workdir}
    group[2].write_ini(peer_ini(pg, port, 2, wrong))
    group[2].admin("RELOAD", host=group[2].workdir)
    sock, key = sleeping_session(group[1])
    with sock:
        send_cancel(group[2], key)
        assert sqlstate(outcome(sock, 5)) == QUERY_CANCELED


def test_show_peer_pools_has_a_row_for_each_peer_a_cancel_went_to(group) -> None:
    receiver = group[2]
    assert receiver.admin("SHOW PEER_POOLS", host=receiver.workdir) == []
    sock, key = sleeping_session(group[1])
    with sock:
        send_cancel(receiver, key)
        assert sqlstate(outcome(sock, 5)) == QUERY_CANCELED
    assert receiver.admin("SHOW PEER_POOLS", host=receiver.workdir) == [(1, 0, 0, 0, 0)]
