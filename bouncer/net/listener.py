"""Listening sockets: one gevent StreamServer per TCP address, plus the unix socket.

Each handler runs in a spare greenlet (:mod:`bouncer.net.greenlets`), as many at once as
clients come: ``max_client_conn`` is enforced by sending the client a PostgreSQL error after
accepting it, never by stalling the accept queue.  The handler owns the accepted socket and
closes it: a client session outlives its first greenlet when it sleeps (see
:mod:`bouncer.session.relay`).
"""
from __future__ import annotations

import errno
import grp
import logging
import os
import socket
from typing import Any, Callable, List, Optional, Sequence

from gevent.server import StreamServer

from bouncer.errors import ConfigError
from bouncer.net.greenlets import spawn

log = logging.getLogger(__name__)


def expand_addresses(listen_addr: Sequence[str]) -> List[str]:
    """``*`` means every IPv4 and IPv6 address, as in PgBouncer."""
    result: List[str] = []
    for addr in listen_addr:
        addr = addr.strip()
        if addr == "*":
            result += ["0.0.0.0"] + (["::"] if socket.has_ipv6 else [])
        elif addr:
            result.append(addr)
    return result


def unix_socket_path(directory: str, port: int) -> str:
    return os.path.join(directory, f".s.PGSQL.{port}")


class _StreamServer(StreamServer):
    """A StreamServer whose handlers run in spare greenlets and close their sockets."""

    def do_handle(self, sock: socket.socket, address: Any) -> None:
        spawn(self._handle, sock, address)


def bind(listen_addr: Sequence[str], port: int, unix_dir: str, unix_mode: int, backlog: int,
         reuseport: bool, unix_group: str = "") -> List[socket.socket]:
    """Every listening socket the settings ask for, bound and listening (not yet served).

    :raises ConfigError: an address cannot be bound (the sockets bound so far are closed).
    """
    sockets: List[socket.socket] = []
    try:
        sockets += [tcp_socket(addr, port, backlog, reuseport)
                    for addr in expand_addresses(listen_addr)]
        if unix_dir:
            sockets.append(unix_socket(unix_dir, port, unix_mode, backlog, unix_group))
    except ConfigError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def tcp_socket(addr: str, port: int, backlog: int, reuseport: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((addr, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {addr}:{port}: {exc.strerror}",
                          key="listen_addr") from exc
    sock.listen(backlog)
    return sock


def unix_socket(directory: str, port: int, mode: int, backlog: int,
                group: str) -> socket.socket:
    path = unix_socket_path(directory, port)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        if group:
            os.chown(path, -1, _group_id(group))
    except (OSError, KeyError) as exc:
        sock.close()
        raise ConfigError(f"cannot listen on unix socket {path}: "
                          f"{getattr(exc, 'strerror', None) or exc}",
                          key="unix_socket_dir") from exc
    sock.listen(backlog)
    return sock


class Listeners:
    """All of bouncer's listening sockets."""

    def __init__(self, handle: Callable) -> None:
        self._handle = handle
        self.servers: List[StreamServer] = []
        #: The sockets we listen on, as we made them (StreamServer keeps only the raw ones).
        self._sockets: List[socket.socket] = []
        #: A worker's own socket among them, which a new pooler must not take over.
        self._private: List[socket.socket] = []
        #: The unix socket file we bound (not one adopted): ours to remove when we close it.
        self.unix_path: Optional[str] = None
        self._unix_inode = 0
        #: SHOW FDS gave the sockets to a new process: a waiting shutdown keeps none open.
        self._handed_over = False
        #: close() ran: what is still served was kept for the admin console.
        self._closing = False

    def open(self, listen_addr: Sequence[str], port: int, unix_dir: str, unix_mode: int,
             backlog: int, reuseport: bool, unix_group: str = "") -> None:
        """Bind everything first, then start accepting: a bind error leaves nothing half-open."""
        for sock in bind(listen_addr, port, unix_dir, unix_mode, backlog, reuseport, unix_group):
            if sock.family == socket.AF_UNIX:
                self.unix_path = sock.getsockname()
                self._unix_inode = os.stat(self.unix_path).st_ino
            self._serve(sock)
            log.info("listening on %s", _describe(sock))

    def adopt(self, sockets: Sequence[socket.socket], how: str = "taken over",
              private: bool = False) -> None:
        """Serve sockets inherited from another process (online restart, or the supervisor
        of the workers: *how* says which in the log line); *private*: a worker's own, left
        out of :meth:`sockets`."""
        for sock in sockets:
            self._serve(sock)
            log.info("listening on %s (%s)", _describe(sock), how)
        if private:
            self._private.extend(sockets)

    def _serve(self, sock: socket.socket) -> None:
        server = _StreamServer(sock, self._handle)
        server.start()
        self.servers.append(server)
        self._sockets.append(sock)

    def defer_accept(self, on: bool) -> None:
        """TCP_DEFER_ACCEPT on the TCP sockets, as PgBouncer sets it (1 second when on): the
        kernel hands over a connection once its first bytes arrive, so a client that never
        sends costs no accepted socket until then."""
        option = getattr(socket, "TCP_DEFER_ACCEPT", None)  # Linux only
        for sock in self._sockets:
            if sock.family == socket.AF_UNIX:
                continue
            if option is None:  # off is what this system does anyway
                if on:
                    _tune_accept_failed(on, os.strerror(errno.EINVAL))
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, int(on))
            except OSError as exc:
                _tune_accept_failed(on, exc.strerror)

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.stop_accepting()

    def start_accepting(self) -> None:
        for server in self.servers:
            server.start_accepting()

    def close(self, keep_unix: bool = False) -> None:
        """Stop listening (existing connections are not touched).

        Connections already queued on a socket are accepted and served first: in a rolling
        restart with ``so_reuseport`` they would otherwise be reset when the socket closes.
        (Connections the kernel queues during the final microseconds are only saved by
        ``net.ipv4.tcp_migrate_req = 1``.)

        :param keep_unix: keep the unix sockets open, unless they were handed over to a new
            process: a shutdown that waits still lets the admin console in that way, as
            PgBouncer does.  Adopted ones too: a worker's, which the supervisor closes as
            the shutdown begins, are then the only way in (and its private one, which is
            never handed over).
        """
        self._closing = True
        kept = [(server, sock) for server, sock in zip(self.servers, self._sockets)
                if keep_unix and sock.family == socket.AF_UNIX
                and (sock in self._private or not self._handed_over)]
        for server, sock in zip(self.servers, self._sockets):
            if (server, sock) not in kept:
                server.stop_accepting()
                self._accept_queued(sock)
                server.close()
        self.servers = [server for server, _ in kept]
        self._sockets = [sock for _, sock in kept]
        if self.unix_path and not kept:
            self._remove_own_socket_file(self.unix_path)
            self.unix_path = None

    def _remove_own_socket_file(self, path: str) -> None:
        remove_socket_file(path, self._unix_inode)

    def _accept_queued(self, sock: socket.socket) -> None:
        sock.settimeout(0)
        while True:
            try:
                conn, address = sock.accept()
            except OSError:
                return  # the queue is empty (or the socket already failed)
            conn.settimeout(None)
            spawn(self._handle, conn, address)

    def handed_over(self) -> None:
        """The sockets now belong to a new process too: leave the socket file to it, and
        stop serving them if a waiting shutdown kept them (another worker handed them over
        as this one shut down)."""
        self.unix_path = None
        self._handed_over = True
        if not self._closing:
            return
        for server, sock in list(zip(self.servers, self._sockets)):
            if sock not in self._private:
                server.close()
                self.servers.remove(server)
                self._sockets.remove(sock)

    def sockets(self) -> List[socket.socket]:
        """The pooler's listening sockets (a worker's private one is not the pooler's)."""
        return [sock for sock in self._sockets if sock not in self._private]


def remove_socket_file(path: str, inode: int) -> None:
    """Remove the socket file only if it is still the one we bound (*inode*): in a rolling
    restart the new process has already bound a fresh one at the same path."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # -u: the user we switched to may not write the directory
        log.warning("cannot remove unix socket %s: %s", path, exc.strerror)


def _group_id(group: str) -> int:
    """A group name or number (KeyError for an unknown name)."""
    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def _remove_stale_socket(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _tune_accept_failed(on: bool, reason: Optional[str]) -> None:
    """PgBouncer's warning when TCP_DEFER_ACCEPT cannot be set."""
    log.warning("tune_accept: %s TCP_DEFER_ACCEPT: %s", "install" if on else "uninstall",
                reason)


def _describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, tuple):
        host = f"[{name[0]}]" if ":" in name[0] else name[0]
        return f"{host}:{name[1]}"
    return f"unix:{name}"
