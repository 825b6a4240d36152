"""One worker of a pooler with ``workers`` above 1: what the supervisor hands it.

The supervisor starts each worker as a fresh ``python -m bouncer`` process (no gevent state
crosses a fork) with the listening sockets as inherited descriptors and this description, as
JSON, in the environment variable :data:`ENV`.  Peering carries cancels between workers: each
worker has its own peer id and a private unix socket, and every worker's configuration lists
the others as ``[peers]``.  Peering was chosen over shared memory because it already carries
cancels between PgBouncer-compatible processes and is tested as such, and because the
supervisor holds the private sockets: a cancel for a worker being restarted waits in the
socket's backlog instead of failing, and the restarted worker keeps its peer id.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from bouncer.admin.journal import Change
from bouncer.config import Config, PeerDef
from bouncer.session.handover import HandedOver, parse_client_row

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.takeover import TakenClient

log = logging.getLogger(__name__)

ENV = "BOUNCER_WORKER"
#: The records on a worker's line to its supervisor (the first byte says which).
READY = b"r"
HANDED_OVER = b"h"
CHANGE = b"j"
_CLIENT = b"c"
_END = b"e"
_MAX_RECORD = 65536
#: prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """A worker's place in the pooler.

    :param index: 1 to ``workers``.
    :param peer_dir: the supervisor's private directory of the workers' cancel sockets;
        worker *i*'s is ``.s.PGSQL.i`` there (the "port" names the socket file).
    :param listen_fds: the inherited listening sockets: the pooler's, then the worker's
        private one.
    :param ready_fd: the worker's end of its line to the supervisor (a SOCK_SEQPACKET
        socketpair, a record per message): the supervisor first sends what the worker starts
        with (:func:`send_start`: the clients an online restart took over for it, the
        pooler's runtime changes); the worker writes :data:`READY` once it serves, then a
        record for each runtime change it made (:meth:`remember`) and :data:`HANDED_OVER` if
        it hands the listening sockets to a new pooler.
    :param slot_fd: the worker's end of its slot channel to the supervisor (pool limits
        across the workers, see :mod:`bouncer.slots`).
    """

    index: int
    workers: int
    first_peer_id: int
    peer_dir: str
    supervisor_pid: int
    listen_fds: Tuple[int, ...]
    ready_fd: int
    slot_fd: int

    @property
    def peer_id(self) -> int:
        return self.first_peer_id + self.index - 1

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    def apply(self, config: Config) -> Config:
        """*config* as this worker runs it: its own peer id, and the workers as ``[peers]``
        (replacing the file's entries with the same ids, as a shared [peers] section of a
        peer group lists this pooler's ids at its public address)."""
        peers = {**config.peers}
        for index in range(1, self.workers + 1):
            peer_id = self.first_peer_id + index - 1
            peers[peer_id] = PeerDef(peer_id=peer_id, host=self.peer_dir, port=index)
        return dataclasses.replace(config, settings=MappingProxyType(
            {**config.settings, "peer_id": self.peer_id}), peers=MappingProxyType(peers))

    def sockets(self) -> Tuple[List[socket.socket], socket.socket]:
        """The pooler's listening sockets, and the worker's private one."""
        *shared, private = [socket.socket(fileno=fd) for fd in self.listen_fds]
        return shared, private

    def ready(self) -> None:
        os.write(self.ready_fd, READY)

    def listeners_handed_over(self) -> None:
        """Tell the supervisor that a new pooler serves the listening sockets too (SHOW FDS):
        the unix socket file is no longer the supervisor's to remove when it exits."""
        os.write(self.ready_fd, HANDED_OVER)

    def remember(self, change: Change) -> None:
        """Tell the supervisor of a runtime change, for the workers it starts from now."""
        os.write(self.ready_fd, CHANGE + change.encode())

    def receive_start(self) -> "Start":
        """What the supervisor sends this worker to start with."""
        line = socket.socket(fileno=self.ready_fd)
        start = Start()
        try:
            while True:
                record, fds, _, _ = socket.recv_fds(line, _MAX_RECORD, 1)
                if not record or record == _END:
                    return start
                start.add(record, fds)
        finally:
            line.detach()  # the descriptor stays open for ready() and the rest

    def owner_of(self, socket_id: int) -> int:
        """The worker that opened socket *socket_id*: worker *i* numbers its sockets *i*,
        *i* + ``workers``, ... (bouncer.session.number_socket_ids)."""
        return (socket_id - 1) % self.workers + 1

    def end_with_the_supervisor(self) -> None:
        """Have the kernel send this worker SIGTERM when the supervisor dies (Linux's
        PR_SET_PDEATHSIG), so a supervisor killed with SIGKILL does not leave workers serving
        the port for ever: each finishes with its clients, as on SIGTERM, and exits.  On
        another system, or when the call fails, the workers outlive it (the log says so)."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            failed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0
        except (OSError, AttributeError):
            failed = True
        if failed:
            log.warning("worker %d: cannot ask the kernel to end it with the supervisor: it "
                        "will outlive a supervisor killed with SIGKILL", self.index)
        elif not self.supervisor_alive():  # it died before the call: no signal will come
            os.kill(os.getpid(), signal.SIGTERM)

    def supervisor_alive(self) -> bool:
        """Whether the supervisor is still our parent (else a signal meant for it would reach
        whatever adopted us, init perhaps)."""
        return os.getppid() == self.supervisor_pid


def send_start(line: socket.socket, clients: Sequence["TakenClient"],
               changes: Sequence[Change]) -> None:
    """Send a starting worker, over its *line* (see :attr:`WorkerSpec.ready_fd`), *clients*
    (each SHOW FDS row with its descriptor) and *changes*, then the end."""
    for client in clients:
        socket.send_fds(line, [_CLIENT + json.dumps(client.row).encode()],
                        [client.sock.fileno()])
    for change in changes:
        line.send(CHANGE + change.encode())
    line.send(_END)


@dataclass
class Start:
    """What a worker starts with: clients taken over by an online restart, and the
    runtime changes to replay (:mod:`bouncer.admin.journal`)."""

    clients: List[Tuple[socket.socket, HandedOver]] = field(default_factory=list)
    changes: List[Change] = field(default_factory=list)

    def add(self, record: bytes, fds: List[int]) -> None:
        kind, body = record[:1], record[1:]
        socks = [socket.socket(fileno=fd) for fd in fds]
        try:
            if kind == _CLIENT and len(socks) == 1:
                state = parse_client_row(json.loads(body))
                self.clients.append((socks.pop(), state))
            elif kind == CHANGE:
                self.changes.append(Change.decode(body))
            else:
                log.warning("unexpected record from the supervisor: %r", record[:40])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable record from the supervisor: %s", exc)
        for sock in socks:  # any left over belongs to no record we could read
            sock.close()


def from_environment() -> Optional[WorkerSpec]:
    """This process's description when the supervisor started it, else None."""
    text = os.environ.pop(ENV, None)  # nothing this process starts is a worker
    if not text:
        return None
    fields = json.loads(text)
    fields["listen_fds"] = tuple(fields["listen_fds"])
    return WorkerSpec(**fields)
