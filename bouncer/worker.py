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

import dataclasses
import json
import os
import socket
from dataclasses import dataclass
from types import MappingProxyType
from typing import List, Optional, Tuple

from bouncer.config import Config, PeerDef

ENV = "BOUNCER_WORKER"
#: The largest peer id a cancel key can carry (the [peers] section's range).
MAX_PEER_ID = 16383


def first_peer_id(config: Config) -> int:
    """Worker 1's peer id: ``peer_id`` when set (the pooler is one of a peer group), else 1."""
    return config.peer_id or 1


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
