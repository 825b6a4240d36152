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
from dataclasses import dataclass
from types import MappingProxyType
from typing import List, Optional, Tuple

from bouncer.config import Config, PeerDef

log = logging.getLogger(__name__)

ENV = "BOUNCER_WORKER"
#: prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """A worker's place in the pooler.

    :param index: 1 to ``workers``.
    :param peer_dir: the supervisor's private directory of the workers' cancel sockets;
        worker *i*'s is ``.s.PGSQL.i`` there (the "port" names the socket file).
    :param listen_fds: the inherited listening sockets, the worker's private one included.
    :param ready_fd: written to once the worker serves, then closed.
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

    def sockets(self) -> List[socket.socket]:
        return [socket.socket(fileno=fd) for fd in self.listen_fds]

    def ready(self) -> None:
        os.write(self.ready_fd, b"1")
        os.close(self.ready_fd)

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


def from_environment() -> Optional[WorkerSpec]:
    """This process's description when the supervisor started it, else None."""
    text = os.environ.pop(ENV, None)  # nothing this process starts is a worker
    if not text:
        return None
    fields = json.loads(text)
    fields["listen_fds"] = tuple(fields["listen_fds"])
    return WorkerSpec(**fields)
