"""Online restart (``-R``): take the listening sockets over from a running bouncer.

The new process logs in to the old one's admin console over the unix socket as ``pgbouncer``,
sends ``SUSPEND`` (the old one stops accepting), ``SHOW FDS`` (each row arrives with a listening
socket attached, SCM_RIGHTS), starts serving those sockets, then sends ``SHUTDOWN
WAIT_FOR_CLIENTS``: the old process serves its existing clients until they leave.  Unlike
PgBouncer's ``-R``, client connections are not moved; a rolling restart with ``so_reuseport``
is the preferred way to upgrade.
"""
from __future__ import annotations

import array
import logging
import socket
from typing import TYPE_CHECKING, List, Tuple

from bouncer.errors import BouncerError
from bouncer.net.listener import unix_socket_path
from bouncer.proto import backend, frontend
from bouncer.proto.constants import Backend
from bouncer.proto.framing import MessageReader

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App

log = logging.getLogger(__name__)

MAX_FDS = 64


class TakeoverError(BouncerError):
    """The running bouncer could not be taken over."""


def take_over(app: "App") -> List[socket.socket]:
    """Suspend the running bouncer and return its listening sockets."""
    config = app.config
    if not config.unix_socket_dir:
        raise TakeoverError("-R needs unix_socket_dir: the takeover talks over the unix socket")
    path = unix_socket_path(config.unix_socket_dir, config.listen_port)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(path)
        _login(conn)
        _command(conn, "SUSPEND")
        _, fds = _command(conn, "SHOW FDS")
        sockets = [socket.socket(fileno=fd) for fd in fds]
        if not sockets:
            raise TakeoverError("the running bouncer passed no listening sockets")
        app.listeners.adopt(sockets)
        _command(conn, "SHUTDOWN WAIT_FOR_CLIENTS")
    log.info("took over %d listening sockets from the running bouncer", len(sockets))
    return sockets


def _login(conn: socket.socket) -> None:
    conn.sendall(frontend.startup_message({"user": "pgbouncer", "database": "pgbouncer"}))
    _read_until_ready(conn)


def _command(conn: socket.socket, sql: str) -> Tuple[List[bytes], List[int]]:
    conn.sendall(frontend.query(sql))
    return _read_until_ready(conn)


def _read_until_ready(conn: socket.socket) -> Tuple[List[bytes], List[int]]:
    """Messages up to ReadyForQuery, with any descriptors that came along."""
    reader = MessageReader()
    fds: List[int] = []
    payloads: List[bytes] = []
    while True:
        message = reader.next_message()
        if message is None:
            data, received = _recv_with_fds(conn)
            if not data:
                raise TakeoverError("the running bouncer closed the connection")
            reader.feed(data)
            fds.extend(received)
            continue
        kind, payload = message
        if kind == Backend.ERROR_RESPONSE:
            fields = backend.parse_error_fields(payload)
            raise TakeoverError(f"the running bouncer refused: {fields.get('M', '?')}")
        if kind == Backend.READY_FOR_QUERY:
            return payloads, fds
        payloads.append(payload)


def _recv_with_fds(conn: socket.socket) -> Tuple[bytes, List[int]]:
    fds = array.array("i")
    data, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, item in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(item[:len(item) - len(item) % fds.itemsize])
    return data, list(fds)
