"""Handing idle clients over to a new process (online restart, ``-R``), as PgBouncer does.

The old process lists a movable client in ``SHOW FDS`` (one row, its descriptor attached);
the new one rebuilds it, already logged in, from that row.  A client is movable only when
nothing of its session lives in this process but what the row carries: logged in, idle
between two messages, no server linked, no prepared statements, no TLS (a TLS session's keys
cannot be moved), no replication.

The row has PgBouncer's columns, then ``bouncer_state``: JSON with what PgBouncer's columns
lack (every tracked parameter, the startup parameters, the credentials' source).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from bouncer.auth.store import Credentials
from bouncer.proto.cancel_key import CancelKey
from bouncer.session import replication

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.session.client import ClientSession

log = logging.getLogger(__name__)

#: The tracked parameters PgBouncer's SHOW FDS has columns for, by column.
_VAR_COLUMNS = (("client_encoding", "client_encoding"),
                ("std_strings", "standard_conforming_strings"),
                ("datestyle", "DateStyle"), ("timezone", "TimeZone"))


class TakenOver(Exception):
    """Thrown into a handed-over client's greenlet: it ends without a word to the client."""


def movable(client: "ClientSession") -> bool:
    """Whether *client* can be handed over now: its greenlet waits for the client's next
    message with nothing under way (checked and acted on without yielding)."""
    link = client.link
    if (not client.logged_in or client.is_admin or client.tls or link is None
            or client.replication != replication.NONE or client.server is not None):
        return False
    engine = link.engine
    prepared = engine.prepared
    return (link.parked_idle() and engine.at_boundary and not engine.buffered
            and not (prepared is not None and prepared.names))


def hand_over(client: "ClientSession") -> None:
    """Stop serving *client* here: it reads nothing more (its wakeups are ignored from now)
    until the new process has it (:func:`end_handed_over`) or the restart fails (RESUME:
    :func:`resume_handed_over`)."""
    client.link.park()
    client.app.handing_over.append(client)


def end_handed_over(app: "App") -> None:
    """The new process serves the clients listed in SHOW FDS (it sent SHUTDOWN): their
    greenlets end here, closing only this process's descriptors."""
    for client in app.handing_over:
        client.end_handed_over()
    app.handing_over.clear()


def resume_handed_over(app: "App") -> None:
    """No new process took the clients listed in SHOW FDS (RESUME): serve them again."""
    if app.handing_over:
        log.info("serving again %d clients listed in SHOW FDS", len(app.handing_over))
    for client in app.handing_over:
        client.link.unpark()
    app.handing_over.clear()


def client_row(client: "ClientSession") -> List[Any]:
    """The SHOW FDS row of a client being handed over."""
    pid, secret = client.cancel_key
    credentials = client.credentials
    client_key, server_key = client.scram_keys or (None, None)
    state = {"vars": client.vars, "params": client.params,
             "application_name": client.application_name,
             "source": credentials.source if credentials is not None else None,
             "connect_time": client.connect_time}
    return ([client.sock.fileno(), "client", client.user, client.database, client.addr, client.port,
             (pid << 32) | secret, 0]
            + [client.vars.get(name) for _, name in _VAR_COLUMNS]
            + [credentials.secret if credentials is not None else None, client_key, server_key,
               json.dumps(state)])


@dataclass
class HandedOver:
    """A client's state as the old process sent it."""

    user: str
    database: str
    addr: str
    port: int
    cancel_key: CancelKey
    vars: Dict[str, str]
    params: Dict[str, str]
    application_name: str
    credentials: Optional[Credentials]
    scram_keys: Optional[Tuple[bytes, bytes]]
    connect_time: float


def parse_client_row(row: Dict[str, Optional[str]]) -> HandedOver:
    """The state in a client's SHOW FDS row (column name -> text value).

    :raises ValueError: the row is not one of ours (a PgBouncer's, or malformed).
    """
    extra = row.get("bouncer_state")
    if extra is None:
        raise ValueError("client row without bouncer_state")
    state = json.loads(extra)
    cancel = int(_required(row, "cancel"))
    source = state["source"]
    credentials = (Credentials(_required(row, "user"), row.get("password"), source)
                   if source is not None else None)
    client_key, server_key = row.get("scram_client_key"), row.get("scram_server_key")
    keys = ((_bytea(client_key), _bytea(server_key))
            if client_key is not None and server_key is not None else None)
    return HandedOver(_required(row, "user"), _required(row, "database"),
                      _required(row, "addr"), int(_required(row, "port")),
                      (cancel >> 32, cancel & 0xFFFFFFFF), dict(state["vars"]),
                      dict(state["params"]), str(state["application_name"]), credentials,
                      keys, float(state["connect_time"]))


def _required(row: Dict[str, Optional[str]], name: str) -> str:
    value = row.get(name)
    if value is None:
        raise ValueError(f"client row without {name}")
    return value


def _bytea(text: str) -> bytes:
    """A bytea value in hex output (``\\x...``)."""
    if not text.startswith("\\x"):
        raise ValueError("bytea value not in hex form")
    return bytes.fromhex(text[2:])
