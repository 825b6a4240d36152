"""Reading whole protocol messages from a socket, for the login phase, pooler queries and the
admin console.

The relay does not use this: it forwards raw chunks (see :mod:`bouncer.session.relay`).
"""
from __future__ import annotations

import socket
from typing import Any, Optional, Tuple

import gevent.socket

from bouncer.errors import BouncerError

RECV_SIZE = 65536


class ConnectionLost(BouncerError):
    """The peer closed the connection (or it broke) before a whole message arrived."""


def _recv(sock: socket.socket, size: int) -> bytes:
    """One ``recv``; a reset or closed connection is :class:`ConnectionLost`."""
    try:
        data = sock.recv(size)
    except (ConnectionError, OSError) as exc:
        raise ConnectionLost(str(exc)) from exc
    if not data:
        raise ConnectionLost("connection closed by peer")
    return data


def recv_some(sock: socket.socket) -> bytes:
    """Whatever the peer sent, up to RECV_SIZE bytes."""
    return _recv(sock, RECV_SIZE)


def read_message(sock: socket.socket, reader: Any, *limit: int) -> Tuple[int, bytes]:
    """The next whole (type, payload) message, reading the socket as needed.

    :param reader: what buffers the peer's bytes: a protocol engine or a MessageReader
        (``feed`` and ``next_message``); ``limit`` is passed on to ``next_message``.
    """
    while True:
        message = reader.next_message(*limit)
        if message is not None:
            return message
        reader.feed(recv_some(sock))


def raw_socket(sock: Any) -> Optional[socket.socket]:
    """The non-blocking OS socket under a plain gevent socket (None for TLS wrappers), for
    the relay to call directly once a watcher said it is ready."""
    return sock._sock if type(sock) is gevent.socket.socket else None


def read_exactly(sock: socket.socket, count: int) -> bytes:
    """*count* bytes (the untyped startup packets have only a length prefix)."""
    chunks = []
    while count > 0:
        data = _recv(sock, count)
        chunks.append(data)
        count -= len(data)
    return b"".join(chunks)


def send_through(sock: Any, raw: Optional[socket.socket], data: Any) -> None:
    """One ``send`` on *raw* (the OS socket under *sock*, None for TLS), which nearly always
    takes everything; what the kernel did not take is copied (*data* may be a view of a
    shared buffer), then sent as gevent waits.  Bypasses gevent's ``sendall``, which costs a
    ``getsockopt`` system call and several Python frames each time."""
    if raw is not None:
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    sock.sendall(bytes(data))


def send_all(sock: socket.socket, data: bytes) -> None:
    """Send everything, a broken connection reported as :class:`ConnectionLost`."""
    try:
        send_through(sock, raw_socket(sock), data)
    except (ConnectionError, OSError) as exc:
        raise ConnectionLost(str(exc)) from exc
