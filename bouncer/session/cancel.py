"""CancelRequest routing: clients get our own cancel keys; a cancel is forwarded to the
server the client is linked to, with that server's key (PgBouncer's behaviour).  With peering
on, a cancel for a key another peer issued is passed on to that peer instead."""
from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Dict

import gevent

from bouncer.pool.peer_pool import PeerPool, peer_pool_size
from bouncer.proto import frontend
from bouncer.proto.cancel_key import CancelKey, route

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.session.client import ClientSession

log = logging.getLogger(__name__)


class CancelRegistry:
    """Cancel key -> logged-in client."""

    def __init__(self, app: "App") -> None:
        self.app = app
        self._clients: Dict[CancelKey, "ClientSession"] = {}
        #: Peer id -> its pool, from the first cancel forwarded there (SHOW PEER_POOLS).
        self.peer_pools: Dict[int, PeerPool] = {}

    def register(self, client: "ClientSession") -> None:
        self._clients[client.cancel_key] = client

    def forget(self, client: "ClientSession") -> None:
        if self._clients.get(client.cancel_key) is client:
            del self._clients[client.cancel_key]

    def request(self, pid: int, secret: int) -> None:
        """Act on a CancelRequest: pass it to the peer that issued the key, or cancel what our
        client with that key runs.  Unknown keys and idle clients are ignored.

        A peer is sent the cancel before this returns, so the requester's connection closes
        once the peer has closed it, as it would after PostgreSQL had acted on it.
        """
        target = route(self.app.config.peer_id, pid, secret)
        if target is None:
            log.debug("cancel request for another peer dropped: its TTL is spent")
        elif target.peer:
            self._forward_to_peer(target.peer, target.key)
        else:
            self._forward_to_server(target.key)

    def _forward_to_peer(self, peer_id: int, key: CancelKey) -> None:
        config = self.app.config
        peer = config.peers.get(peer_id)
        if peer is None:
            log.debug("cancel request for unknown peer %d ignored", peer_id)
            return
        # No host means a unix socket in unix_socket_dir, as for [databases].
        host = peer.host or config.unix_socket_dir or "/tmp"
        pool = self._peer_pool(peer_id)
        log.debug("forwarding cancel request to peer %d", peer_id)
        try:
            # cancel_wait_timeout covers the wait for a slot as well as the delivery.
            with self._cancel_timeout(), pool.turn(peer_pool_size(config, peer)):
                self._deliver(host, peer.port, key)
        except OSError as exc:
            log.warning("cancel request to peer %d failed: %s", peer_id, exc)

    def _peer_pool(self, peer_id: int) -> PeerPool:
        pool = self.peer_pools.get(peer_id)
        if pool is None:
            pool = self.peer_pools[peer_id] = PeerPool(peer_id)
        return pool

    def _forward_to_server(self, key: CancelKey) -> None:
        client = self._clients.get(key)
        if client is None:
            log.debug("cancel request for unknown key ignored")
            return
        server = client.server
        if server is None:
            log.debug("%s cancel request while not linked: nothing to cancel", client.prefix)
            return
        self.cancel_server(server, client.prefix)

    def cancel_server(self, server, prefix: str) -> None:
        """Ask the server to cancel what it is running (from a new connection, as libpq does).

        Until PostgreSQL has acted on it, the server is not given to another client
        (:meth:`Pool.release` keeps it ``being_canceled``).
        """
        server.cancels_in_flight += 1
        gevent.spawn(self._send_cancel, server, prefix)

    def _send_cancel(self, server, prefix: str) -> None:
        try:
            with self._cancel_timeout():
                self._deliver(server.host, server.port, server.cancel_key)
        except OSError as exc:
            log.warning("%s cancel request to server failed: %s", prefix, exc)
        finally:
            server.cancels_in_flight -= 1
            if not server.cancels_in_flight:
                server.pool.cancels_done(server)

    def _cancel_timeout(self) -> gevent.Timeout:
        """cancel_wait_timeout, raising OSError as a failed connection would."""
        timeout = self.app.config.cancel_wait_timeout or None
        return gevent.Timeout(timeout, OSError("cancel_wait_timeout"))

    def _deliver(self, host: str, port: int, key: CancelKey) -> None:
        """Send a CancelRequest from a new connection and wait until the other end closes it
        (the postmaster does once it has signalled the backend, a peer once it has passed the
        cancel on).

        :raises OSError: it could not be delivered.
        """
        family, sockaddr = self.app.resolver.resolve(host, port)[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.connect(sockaddr)
            sock.sendall(frontend.cancel_request(*key))
            sock.recv(1)
