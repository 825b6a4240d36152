"""SHOW commands that list connections: CLIENTS, SERVERS, SOCKETS, ACTIVE_SOCKETS and FDS.

One row per socket, with PgBouncer 1.25's columns (admin.c's ``socket_row``).  A connection's
state is the collection it sits in, as in PgBouncer: a client waiting in its pool's queue is
``waiting``, one linked to a server ``active``, any other logged-in client ``idle``; a server
is ``active``, ``idle`` or ``tested`` after its pool's set.  The columns about libevent's
buffers (``recv_pos`` ... ``send_avail``) have no counterpart in bouncer and are always 0.
With ``workers`` above 1 the lists are of the whole pooler, worker by worker, a ``worker``
column at the end of each row saying which (SHOW FDS stays the worker's own).
"""
from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Tuple

from bouncer.admin import grammar, merge
from bouncer.admin.commands import Result, columns, on_every_worker, show, stats_allowed
from bouncer.admin.show import split_seconds
from bouncer.session import handover

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.admin.console import Console
    from bouncer.app import App

log = logging.getLogger(__name__)

_SOCKET_LETTERS = "ssssssisiTTiiississii"
_SOCKET_NAMES = ("type", "user", "database", "replication", "state", "addr", "port",
                 "local_addr", "local_port", "connect_time", "request_time", "wait", "wait_us",
                 "close_needed", "ptr", "link", "remote_pid", "tls", "application_name",
                 "prepared_statements", "id")
_BUFFER_NAMES = ("recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail",
                 "send_avail")
SOCKET_COLUMNS = columns(_SOCKET_LETTERS, *_SOCKET_NAMES)
DEBUG_SOCKET_COLUMNS = columns(_SOCKET_LETTERS + "i" * len(_BUFFER_NAMES),
                               *_SOCKET_NAMES, *_BUFFER_NAMES)
#: PgBouncer's columns, then bouncer's own state of a client being handed over (JSON).
FDS_COLUMNS = columns("issssiqisssssbbs", "fd", "task", "user", "database", "addr", "port",
                      "cancel", "link", "client_encoding", "std_strings", "datestyle",
                      "timezone", "password", "scram_client_key", "scram_server_key",
                      "bouncer_state")

#: The ``replication`` column, from the startup value (session.replication's constants).
_REPLICATION = {"no": "none", "database": "logical", "yes": "physical"}

#: Server states by the pool collection holding them, in PgBouncer's listing order.
_SERVER_SETS = (("active", "active"), ("idle", "idle"), ("tested", "tested"),
                ("being_canceled", "being_canceled"))


def pointer(obj: Any) -> str:
    """The ``ptr`` / ``link`` columns: an object identity, like PgBouncer's ``%p``."""
    return f"{id(obj):#x}" if obj is not None else ""


def timestamp(epoch: float) -> str:
    """Local time as PgBouncer formats ``connect_time`` and ``request_time``."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


# -- rows ------------------------------------------------------------------------------------

def _waiting_since(app: "App") -> Dict[Any, float]:
    """Queued clients and when they started to wait (monotonic)."""
    return {client: since for pool in app.registry.pools()
            for client, since in pool.waiting_clients().items()}


def _client_rows(app: "App", debug: bool) -> Iterator[List[Any]]:
    waiting = _waiting_since(app)
    now = time.monotonic()
    clients = sorted(app.clients, key=lambda c: (c.database, c.user, c.id))
    for client in clients:
        since = waiting.get(client)
        if not client.logged_in:
            if debug:  # SHOW SOCKETS lists logins in progress; SHOW CLIENTS does not
                yield _client_row(client, "cl_login", 0.0, debug)
            continue
        if since is not None:
            state = "cl_waiting" if debug else "waiting"
        elif debug:
            state = "cl_active"
        else:
            state = "active" if client.server is not None else "idle"
        yield _client_row(client, state, now - since if since is not None else 0.0, debug)


def _client_row(client: Any, state: str, waited: float, debug: bool) -> List[Any]:
    wait, wait_us = split_seconds(waited)
    row = ["C", client.user, client.database, _REPLICATION[client.replication], state,
           client.addr, client.port,
           client.local_addr, client.local_port, timestamp(client.connect_time),
           timestamp(client.request_time), wait, wait_us, 0, pointer(client),
           pointer(client.server), 0, client.tls, client.application_name,
           _client_statements(client), client.id]
    return row + [0] * len(_BUFFER_NAMES) if debug else row


def _server_rows(app: "App", debug: bool) -> Iterator[List[Any]]:
    pools = sorted(app.registry.pools(), key=lambda pool: (pool.database.name, pool.user.name))
    for pool in pools:
        for state, attribute in _SERVER_SETS:
            shown = f"sv_{state}" if debug else state
            for server in sorted(getattr(pool, attribute), key=lambda s: s.id):
                yield _server_row(server, shown, debug)


def _server_row(server: Any, state: str, debug: bool) -> List[Any]:
    pool = server.pool
    last_request = time.time() - server.idle_for()
    replication = _REPLICATION[getattr(server.link, "replication", "no")]
    row = ["S", pool.user.name, pool.database.name, replication, state, server.addr, server.port,
           server.local_addr, server.local_port, timestamp(server.connect_time),
           timestamp(last_request), 0, 0, int(server.close_needed), pointer(server),
           pointer(server.link), server.cancel_key[0], server.tls,
           server.params.get("application_name", ""), len(server.engine.pipeline.statements),
           server.id]
    return row + [0] * len(_BUFFER_NAMES) if debug else row


def _client_statements(client: Any) -> int:
    """The client's named prepared statements, when bouncer tracks them (not in session
    mode, nor with ``max_prepared_statements = 0``)."""
    prepared = client.engine.prepared
    return len(prepared.names) if prepared is not None else 0


# -- commands --------------------------------------------------------------------------------

@stats_allowed
@on_every_worker(merge.union)
def show_clients(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    return show(SOCKET_COLUMNS, client_table(console.app))


def client_table(app: "App") -> List[List[Any]]:
    """SHOW CLIENTS' rows (:data:`SOCKET_COLUMNS`)."""
    return list(_client_rows(app, debug=False))


@stats_allowed
@on_every_worker(merge.union)
def show_servers(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    return show(SOCKET_COLUMNS, list(_server_rows(console.app, debug=False)))


@stats_allowed
@on_every_worker(merge.union)
def show_sockets(console: "Console", args: str) -> Result:
    grammar.no_arguments(args)
    app = console.app
    return show(DEBUG_SOCKET_COLUMNS,
                [*_server_rows(app, debug=True), *_client_rows(app, debug=True)])


@stats_allowed
@on_every_worker(merge.union)
def show_active_sockets(console: "Console", args: str) -> Result:
    """PgBouncer lists the sockets with data in their buffers; bouncer keeps none buffered
    between reads and writes, so no socket qualifies."""
    grammar.no_arguments(args)
    return show(DEBUG_SOCKET_COLUMNS, [])


def show_fds(console: "Console", args: str) -> Result:
    """The listening sockets, then (when suspended, for an online restart) the idle clients
    that can be moved, each passed with its row over the unix socket to the local
    ``pgbouncer`` user.  Listed clients are handed over: this process serves them no more.
    Server connections are not listed: the new process opens its own."""
    grammar.no_arguments(args)
    app = console.app
    listening = app.listeners.sockets()
    rows = [_pooler_row(sock, app.config.listen_port) for sock in listening]
    if not console.may_pass_fds():
        return Result("SHOW", FDS_COLUMNS, rows)
    fds = [sock.fileno() for sock in listening]
    app.hand_over_listeners()
    if app.suspended:
        _hand_over_clients(app, rows, fds)
    return Result("SHOW", FDS_COLUMNS, rows, row_fds=fds)


def _hand_over_clients(app: "App", rows: List[List[Any]], fds: List[int]) -> None:
    """Add a row and a descriptor for each movable client.  No yield between the check and
    the handover: a client cannot send anything in between that this process would read."""
    moved = 0
    for client in list(app.clients):
        if handover.movable(client):
            handover.hand_over(client)
            rows.append(handover.client_row(client))
            fds.append(client.sock.fileno())
            moved += 1
    if moved:
        log.info("handing %d idle clients over to the new process", moved)


def _pooler_row(sock: socket.socket, listen_port: int) -> List[Any]:
    addr, port = _listening_address(sock, listen_port)
    return [sock.fileno(), "pooler", None, None, addr, port, 0, 0,
            None, None, None, None, None, None, None, None]


def _listening_address(sock: socket.socket, listen_port: int) -> Tuple[str, int]:
    if sock.family == socket.AF_UNIX:
        return "unix", listen_port
    name = sock.getsockname()
    return str(name[0]), int(name[1])


COMMANDS = {
    "SHOW CLIENTS": show_clients,
    "SHOW SERVERS": show_servers,
    "SHOW SOCKETS": show_sockets,
    "SHOW ACTIVE_SOCKETS": show_active_sockets,
    "SHOW FDS": show_fds,
}
