"""Online restart (``-R``): take the listening sockets and the idle clients over from a
running bouncer.

The new process logs in to the old one's admin console over the unix socket as ``pgbouncer``,
sends ``SUSPEND`` (the old one stops accepting and holds new transactions), ``SHOW FDS`` (each
row arrives with its socket attached, SCM_RIGHTS: the listening sockets, then the clients
idle between two messages, which the old process stops serving), starts serving those
sockets, then sends ``SHUTDOWN WAIT_FOR_CLIENTS``: the old process serves the clients it kept
(in a transaction, say) until they leave.

A supervisor (``workers`` above 1) takes over in the same steps, but sends SHUTDOWN only once
its workers serve, and passes each client to one of them (:mod:`bouncer.supervisor`).
"""
from __future__ import annotations

import array
import logging
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from bouncer.config import Config
from bouncer.errors import BouncerError
from bouncer.net.listener import unix_socket_path
from bouncer.proto import backend, frontend
from bouncer.proto.constants import Backend
from bouncer.proto.framing import MessageReader
from bouncer.session.handover import HandedOver, parse_client_row

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App

log = logging.getLogger(__name__)

MAX_FDS = 64

Message = Tuple[int, bytes]


class TakeoverError(BouncerError):
    """The running bouncer could not be taken over."""


@dataclass
class TakenClient:
    """A client the running bouncer handed over: its socket, its SHOW FDS row as sent (a
    supervisor passes the row on to the worker that will serve it) and the state in it."""

    sock: socket.socket
    row: Dict[str, Optional[str]]
    state: HandedOver


@dataclass
class Takeover:
    """What the running bouncer handed over."""

    listening: List[socket.socket]
    clients: List[TakenClient] = field(default_factory=list)


class RunningBouncer:
    """The admin console of the bouncer being taken over, held from SUSPEND to SHUTDOWN.

    Until :meth:`shut_down` the running bouncer holds its clients; closing without it (as
    :meth:`abandon` does) makes it serve them again, the listed ones included.
    """

    def __init__(self, config: Config) -> None:
        if not config.unix_socket_dir:
            raise TakeoverError("-R needs unix_socket_dir: the takeover talks over the unix "
                                "socket")
        self._path = unix_socket_path(config.unix_socket_dir, config.listen_port)
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def suspend_and_take(self) -> Takeover:
        """SUSPEND it and take its listening sockets and the clients it can hand over."""
        try:
            self._conn.settimeout(30)
            self._conn.connect(self._path)
            _login(self._conn)
            _command(self._conn, "SUSPEND")
            taken = _sockets(*_command(self._conn, "SHOW FDS"))
        except (OSError, TakeoverError):
            self._conn.close()
            raise
        if not taken.listening:
            self._conn.close()
            raise TakeoverError("the running bouncer passed no listening sockets")
        return taken

    def shut_down(self) -> None:
        """Have it stop listening and end once the clients it kept have left."""
        try:
            _command(self._conn, "SHUTDOWN WAIT_FOR_CLIENTS")
        finally:
            self._conn.close()

    def abandon(self) -> None:
        self._conn.close()


def take_over(app: "App") -> Takeover:
    """Suspend the running bouncer and take its listening sockets and idle clients."""
    running = RunningBouncer(app.config)
    taken = running.suspend_and_take()
    app.listeners.adopt(taken.listening)  # before SHUTDOWN: no moment with nobody accepting
    running.shut_down()
    log_taken(taken)
    return taken


def log_taken(taken: Takeover) -> None:
    log.info("took over %d listening sockets and %d clients from the running bouncer",
             len(taken.listening), len(taken.clients))


def _sockets(messages: List[Message], fds: List[int]) -> Takeover:
    """SHOW FDS's rows, each with the descriptor that came with it."""
    rows = _rows(messages)
    if len(rows) != len(fds):
        raise TakeoverError(f"the running bouncer passed {len(fds)} descriptors for "
                            f"{len(rows)} rows")
    taken = Takeover([])
    for row, fd in zip(rows, fds):
        sock = socket.socket(fileno=fd)
        if row.get("task") == "client":
            taken.clients.append(TakenClient(sock, row, _client_state(row, sock)))
        else:
            taken.listening.append(sock)
    return taken


def _client_state(row: Dict[str, Optional[str]], sock: socket.socket) -> HandedOver:
    try:
        return parse_client_row(row)
    except (ValueError, KeyError, TypeError) as exc:
        sock.close()
        raise TakeoverError(f"unreadable client row in SHOW FDS: {exc}") from None


def _rows(messages: List[Message]) -> List[Dict[str, Optional[str]]]:
    names: List[str] = []
    rows = []
    for kind, payload in messages:
        if kind == Backend.ROW_DESCRIPTION:
            names = backend.parse_row_description(payload)
        elif kind == Backend.DATA_ROW:
            values = [None if value is None else value.decode()
                      for value in backend.parse_data_row(payload)]
            rows.append(dict(zip(names, values)))
    return rows


def _login(conn: socket.socket) -> None:
    conn.sendall(frontend.startup_message({"user": "pgbouncer", "database": "pgbouncer"}))
    _read_until_ready(conn)


def _command(conn: socket.socket, sql: str) -> Tuple[List[Message], List[int]]:
    conn.sendall(frontend.query(sql))
    return _read_until_ready(conn)


def _read_until_ready(conn: socket.socket) -> Tuple[List[Message], List[int]]:
    """Messages up to ReadyForQuery, with any descriptors that came along."""
    reader = MessageReader()
    fds: List[int] = []
    messages: List[Message] = []
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
            return messages, fds
        messages.append((kind, payload))


def _recv_with_fds(conn: socket.socket) -> Tuple[bytes, List[int]]:
    fds = array.array("i")
    data, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, item in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(item[:len(item) - len(item) % fds.itemsize])
    return data, list(fds)
