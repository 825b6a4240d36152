"""The admin console session: read a console user's messages, run commands, send replies.

Entered by the client session after an admin login (``psql -d pgbouncer``).  Only the simple
query protocol is served, one command per Query; commands come from ``app.admin_commands``
(the built-in table plus plugins', see :mod:`bouncer.admin.commands`).  Every failure is an
ERROR followed by ReadyForQuery: the console never drops the connection over a bad command.
"""
from __future__ import annotations

import array
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

from bouncer import operations
from bouncer.admin import grammar, journal
from bouncer.admin.commands import (AdminError, InvalidCommand, Result, admin_access_needed,
                                    asker_of, every_worker_combine, find_command,
                                    is_stats_allowed)
from bouncer.errors import ClientError
from bouncer.net.stream import ConnectionLost, read_message, send_all
from bouncer.proto import backend, frontend, sqlstate
from bouncer.proto.constants import TXN_IDLE, Frontend

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.plugin.context import PluginContext
    from bouncer.session.client import ClientSession

log = logging.getLogger(__name__)

#: The unix-socket user that is admin without a password when its uid is ours.
LOCAL_ADMIN_USER = "pgbouncer"
#: Extended-protocol messages: refused once, then skipped up to the next Sync.
_EXTENDED = {Frontend.PARSE, Frontend.BIND, Frontend.DESCRIBE, Frontend.EXECUTE,
             Frontend.CLOSE, Frontend.FLUSH}
_READY = backend.ready_for_query(TXN_IDLE)


def serve_admin(client: "ClientSession") -> None:
    """Serve a logged-in console user until Terminate (runs in the client's greenlet).

    :raises ConnectionLost: the user went away without Terminate.
    """
    console = Console(client)
    try:
        console.serve()
    finally:
        console.close()


def execute_for(app: "App", console: Any, query: str) -> Result:
    """Run the command *query* for *console*'s user: access checked, then in every worker when
    the command is marked so (``on_every_worker``), else here.

    :raises InvalidCommand: no command matches (or its handler found the rest malformed).
    :raises ClientError: the command failed or this user may not run it.
    """
    handler, args = find_command(app.admin_commands, query)
    if not (is_stats_allowed(handler) or console.is_admin()):
        raise admin_access_needed()
    combine = every_worker_combine(handler)
    channel = app.workers_channel
    if combine is None or channel is None:
        result = handler(console, args)
    else:
        result = channel.run_everywhere(query, asker_of(console),
                                        lambda: handler(console, args), combine)
    kind = journal.kind_of(handler)
    if kind is not None and app.worker is not None:
        asker = asker_of(console)
        app.worker.remember(journal.Change(kind, query, asker.user, asker.admin))
    return result


class Console:
    """One console user's session; handlers receive it as their first argument."""

    def __init__(self, client: "ClientSession") -> None:
        self.client = client
        self.app = client.app
        #: Set by SUSPEND: if this user leaves while the pooler is suspended, it resumes.
        self.suspended_pooler = False
        self._skipping_to_sync = False

    # -- who is asking (with context: what a plugin's handler may rely on) -----------------

    @property
    def context(self) -> "PluginContext":
        """The plugins' stable view of the pooler (:mod:`bouncer.plugin.context`)."""
        return self.app.plugin_context

    @property
    def user(self) -> str:
        """The console user's name."""
        return self.client.user

    def is_admin(self) -> bool:
        """May run every command (``admin_users``, or the local ``pgbouncer`` user)."""
        return self.client.user in self.app.config.admin_users or self._is_local_owner()

    def _is_local_owner(self) -> bool:
        client = self.client
        return (client.unix and client.user == LOCAL_ADMIN_USER
                and client.peer_uid == os.geteuid())

    def may_pass_fds(self) -> bool:
        """File descriptors go only to our own uid, over a plain unix socket (as PgBouncer)."""
        return self._is_local_owner() and not self.client.tls

    # -- the session -----------------------------------------------------------------------

    def serve(self) -> None:
        engine = self.client.engine  # it holds what came with the login, too
        while True:
            kind, payload = read_message(self.client.sock, engine)
            if kind == Frontend.TERMINATE:
                return
            self._answer(kind, payload)

    def close(self) -> None:
        if self.suspended_pooler and self.app.suspended:
            log.info("admin disappeared when suspended, doing RESUME")
            # SUSPEND suspended every worker: SIGUSR2 resumes them all.
            if not self.app.signal_supervisor(signal.SIGUSR2):
                operations.resume(self.app, None)

    def _answer(self, kind: int, payload: bytes) -> None:
        if kind == Frontend.QUERY:
            self._run(frontend.parse_query(payload))
        elif kind == Frontend.SYNC:
            self._skipping_to_sync = False
            self._send(_READY)
        elif kind in _EXTENDED:
            # As PostgreSQL after an error: one ErrorResponse, then silence until Sync.
            if not self._skipping_to_sync:
                self._skipping_to_sync = True
                self._send(self._error(AdminError(
                    "extended query protocol not supported by admin console",
                    sqlstate.FEATURE_NOT_SUPPORTED)))
        else:
            message = f"unsupported packet type for admin console: {chr(kind)!r}"
            self._send(self._error(AdminError(message, sqlstate.PROTOCOL_VIOLATION)) + _READY)

    def _run(self, query: str) -> None:
        log.debug("%s got admin query: %s", self.client.prefix, query)
        stats = self.app.admin_stats  # each command is a transaction of its own, as in PgBouncer
        stats.xact_count += 1
        stats.query_count += 1
        if not grammar.strip_terminator(query):
            self._send(backend.empty_query_response() + _READY)
            return
        try:
            result = self.execute(query)
        except (InvalidCommand, grammar.GrammarError):
            self._send(self._error(AdminError(f"invalid command '{query}', use SHOW HELP;"))
                       + _READY)
            return
        except ClientError as err:
            self._send(self._error(err) + _READY)
            return
        except Exception as exc:  # a plugin's bug must not cost the operator the console
            log.exception("admin command failed: %s", query)
            error = AdminError(f"admin command failed: {exc}", sqlstate.INTERNAL_ERROR)
            self._send(self._error(error) + _READY)
            return
        try:
            self._reply(result)
        finally:  # SHUTDOWN began before its reply: it must finish if the user left
            if result.after is not None:
                result.after()

    def execute(self, query: str) -> Result:
        """Find and run the command *query* names; access is checked before it runs.

        :raises InvalidCommand: no command matches (or its handler found the rest malformed).
        :raises ClientError: the command failed or this user may not run it.
        """
        return execute_for(self.app, self, query)

    # -- replies ---------------------------------------------------------------------------

    def _error(self, err: ClientError) -> bytes:
        log.error("%s %s", self.client.prefix, err.message)
        # Always ERROR, never FATAL: the console survives its user's mistakes.
        return backend.error_response("ERROR", err.sqlstate, err.message, err.detail, err.hint)

    def _reply(self, result: Result) -> None:
        head = [backend.notice_response("NOTICE", sqlstate.SUCCESSFUL_COMPLETION,
                                        notice.message, notice.detail)
                for notice in result.notices]
        if result.columns:
            head.append(backend.row_description(result.columns))
        rows = [backend.data_row(_texts(row)) for row in result.rows]
        tail = backend.command_complete(result.tag) + _READY
        if result.row_fds and self.may_pass_fds():
            self._send(b"".join(head))
            self._send_with_fds(rows, result.row_fds)
            self._send(tail)
        else:
            self._send(b"".join(head + rows) + tail)

    def _send(self, data: bytes) -> None:
        send_all(self.client.sock, data)

    def _send_with_fds(self, rows: Sequence[bytes], fds: Sequence[int]) -> None:
        """Each row with its descriptor attached (SCM_RIGHTS), as PgBouncer's SHOW FDS."""
        sock = self.client.sock
        for row, fd in zip(rows, fds):
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            try:
                sent = sock.sendmsg([row], ancillary)
            except OSError as exc:
                raise ConnectionLost(str(exc)) from exc
            if sent < len(row):
                self._send(row[sent:])


def _texts(row: Sequence[Any]) -> List[Optional[str]]:
    """DataRow values: NULL for None, bytea hex for bytes, ``str()`` for the rest."""
    return [None if value is None else "\\x" + value.hex() if isinstance(value, bytes)
            else str(value) for value in row]
