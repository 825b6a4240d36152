"""What a hook is told about a client: :class:`ClientInfo`, a read-only snapshot.

The hooks that decide about a client get this instead of bouncer's live session object, whose
insides change with bouncer: a plugin written against these fields keeps working.  Fields are
only ever added.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class ClientInfo:
    """A client as its startup packet and its transport describe it.

    :param user: the user name it logs in as.
    :param database: the database name it asked for (``pgbouncer`` for the admin console).
    :param addr: its IP address as text, or ``"unix"`` over a unix socket.
    :param port: its TCP port (0 over a unix socket).
    :param unix: whether it came over the unix socket.
    :param tls: the TLS protocol version (``"TLSv1.3"``), or ``""`` for plaintext.
    :param peer_cert: the DER certificate it presented over TLS, or ``None``.
    :param peer_uid: the uid of the process at the other end of the unix socket, or ``None``.
    :param application_name: its ``application_name`` startup parameter.
    :param replication: ``"no"``, ``"database"`` (logical) or ``"yes"`` (physical).
    :param params: the tracked startup parameters it sent (``application_name``,
        ``search_path``, ... as servers spell them, ``options -c`` settings included), which
        bouncer sets on the servers it uses.
    :param log_prefix: PgBouncer's log prefix for it (``C-0x...: db/user@addr:port``): start
        a log line with it and operators' log parsers know which client it is about.
    """

    user: str
    database: str
    addr: str
    port: int
    unix: bool
    tls: str
    peer_cert: Optional[bytes]
    peer_uid: Optional[int]
    application_name: str
    replication: str
    params: Mapping[str, str]
    log_prefix: str

    @classmethod
    def of(cls, session: Any) -> "ClientInfo":
        """The snapshot of a :class:`bouncer.session.client.ClientSession`."""
        return cls(user=session.user, database=session.database, addr=session.addr,
                   port=session.port, unix=session.unix, tls=session.tls,
                   peer_cert=session.peer_cert, peer_uid=session.peer_uid,
                   application_name=session.application_name,
                   replication=session.replication, params=MappingProxyType(dict(session.params)),
                   log_prefix=session.prefix)
