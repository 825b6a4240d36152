"""Cancel keys that say which peer issued them (PgBouncer's peering), as pure functions.

A cancel key is BackendKeyData's (pid, secret).  Bouncer processes sharing a port with
``so_reuseport`` cannot choose which of them receives a client's CancelRequest, so with
``peer_id`` set the key carries its issuer: the pid's second and third bytes hold the peer id
(low byte first), and the secret's two lowest bits are a TTL, how many more times the
cancel may be forwarded.  This is PgBouncer's layout since 1.21, so bouncer and PgBouncer
processes can share one peer group.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from bouncer.randomness import random_bytes

CancelKey = Tuple[int, int]  # (pid, secret)

#: The secret's TTL bits.  Keys are issued with both set: three forwards, enough for any
#: sensible stack of load balancers, and a forwarding loop between peers still ends.
TTL_MASK = 0x03

_PEER_BITS = 0x00FFFF00  # the pid's second and third bytes


class Route(NamedTuple):
    """Where a received cancel goes: ``peer`` 0 is this process, looking ``key`` up among
    its clients; any other ``peer`` gets ``key`` forwarded."""

    peer: int
    key: CancelKey


def new_key(peer_id: int) -> CancelKey:
    """A fresh key for a client; with ``peer_id`` 0 (peering off) all its bits are random.

    The secret is what stops strangers cancelling others' queries, hence the OS's secure
    generator.  The pid stays positive: pg_basebackup, at least, chokes on a negative one.
    """
    drawn = int.from_bytes(random_bytes(8), "little")
    pid, secret = drawn & 0x7FFFFFFF, drawn >> 32
    if peer_id:
        pid = (pid & ~_PEER_BITS) | _peer_bits(peer_id)
        secret |= TTL_MASK
    return pid, secret


def key_peer(pid: int) -> int:
    """The peer id a key's pid carries (meaningful only for keys issued with peering on)."""
    return ((pid >> 16) & 0xFF) | (((pid >> 8) & 0xFF) << 8)


def route(own_peer_id: int, pid: int, secret: int) -> Optional[Route]:
    """Where the CancelRequest for (pid, secret) goes; None when it must be dropped, as a key
    of another peer whose TTL is spent.

    A forwarded key has spent one TTL unit; ours gets its TTL bits back, as our clients' keys
    were issued with them set, whatever forwards it took to come home.
    """
    peer = key_peer(pid)
    if not own_peer_id or not peer:
        # Peering is off, or no peer issued the key (ids start at 1): it can only be one of
        # ours, perhaps from before a reload set peer_id.
        return Route(0, (pid, secret))
    if peer == own_peer_id:
        return Route(0, (pid, secret | TTL_MASK))
    if not secret & TTL_MASK:
        return None
    return Route(peer, (pid, secret - 1))


def _peer_bits(peer_id: int) -> int:
    return ((peer_id & 0xFF) << 16) | (((peer_id >> 8) & 0xFF) << 8)
