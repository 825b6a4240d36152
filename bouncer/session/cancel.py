"""CancelRequest routing: clients get our own cancel keys; a cancel is forwarded to the
server the client is linked to, with that server's key (PgBouncer's behaviour)."""
from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Dict, Tuple

import gevent

from bouncer.proto import frontend

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.session.client import ClientSession

log = logging.getLogger(__name__)


class CancelRegistry:
    """Cancel key -> logged-in client."""

    def __init__(self, app: "App") -> None:
        self.app = app
        self._clients: Dict[Tuple[int, int], "ClientSession"] = {}

    def register(self, client: "ClientSession") -> None:
        self._clients[client.cancel_key] = client

    def forget(self, client: "ClientSession") -> None:
        if self._clients.get(client.cancel_key) is client:
            del self._clients[client.cancel_key]

    def forward(self, pid: int, secret: int) -> None:
        """Forward a client's cancel to its server; unknown or idle clients are ignored."""
        client = self._clients.get((pid, secret))
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
        timeout = self.app.config.cancel_wait_timeout or None
        try:
            with gevent.Timeout(timeout, OSError("cancel_wait_timeout")):
                family, sockaddr = self.app.resolver.resolve(server.host, server.port)[0]
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.connect(sockaddr)
                    sock.sendall(frontend.cancel_request(*server.cancel_key))
                    sock.recv(1)  # the postmaster closes once it has signalled the backend
        except OSError as exc:
            log.warning("%s cancel request to server failed: %s", prefix, exc)
        finally:
            server.cancels_in_flight -= 1
            if not server.cancels_in_flight:
                server.pool.cancels_done(server)
