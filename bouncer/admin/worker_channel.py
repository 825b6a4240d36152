"""The control channel between the workers of one pooler (``workers`` above 1).

An admin command marked :func:`~bouncer.admin.commands.on_every_worker` runs in the worker
the console user reached, which asks every other worker to run it too and combines their
answers into one reply (:mod:`bouncer.admin.merge`); KILL_CLIENT goes to the one worker that
owns the client.

Design note.  Each worker listens on a unix socket of its own, ``.s.control.<index>`` in the
supervisor's private directory (mode 0700, and the socket 0600).  A request is one
connection: ``{"command": "KILL db", "user": "admin", "admin": true}`` in a frame
(:mod:`bouncer.proto.control_frames`: length-prefixed JSON), answered by ``{"result": {...}}``
or ``{"error": {...}}``; the worker asked runs the command for itself only, as the console
user who typed it (a handler checks ``is_admin()`` itself at times: SET), and never asks
further.

- *Why a socket per worker and JSON*: the console's answers are rows and errors, small, rare
  and made of strings and numbers; JSON over a unix socket carries them with nothing to keep
  in step, and a worker that dies takes nothing shared with it.  Shared memory would need
  locks and a fixed layout for lists (clients, servers) that have none, for no gain on a path
  an operator uses a few times a minute.  Nothing here is on the clients' path.
- *Why the worker binds its socket itself* (unlike its cancel socket, which the supervisor
  holds so that a cancel waits out a restart): a dead worker's socket refuses at once, so the
  console answers with the others' rows at once instead of after a timeout; a worker being
  restarted has nothing the request could act on (no clients, a fresh configuration); and
  the supervisor stays as it is.
- *No polling, every wait bounded*: connecting, sending and each wait for a frame time out
  after :data:`TIMEOUT`.  A command that takes long (PAUSE waits for transactions to end)
  sends ``{"working": true}`` every :data:`HEARTBEAT` while it runs, so a slow command is
  waited for and a hung worker is not.  A worker that does not answer is named: its rows are
  left out of a SHOW with a NOTICE saying so, and an action it missed is an ERROR (SHUTDOWN,
  which reaches it through the supervisor all the same, a NOTICE).  Whether it is gone (its
  socket refuses, or closes before answering) or too slow is told apart: a worker that exits
  for an immediate SHUTDOWN has done what it was asked.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import gevent
from gevent.server import StreamServer

from bouncer.admin.commands import (AdminError, Asker, InvalidCommand, Notice, Result,
                                    admin_access_needed, find_command, is_stats_allowed)
from bouncer.admin.grammar import GrammarError
from bouncer.admin.merge import Answer
from bouncer.errors import ClientError
from bouncer.proto import sqlstate
from bouncer.proto.control_frames import FrameError, FrameReader, encode

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.plugin.context import PluginContext
    from bouncer.worker import WorkerSpec

log = logging.getLogger(__name__)

#: Seconds to connect, to send, and to wait for each frame of an answer.
TIMEOUT = 5.0
#: Seconds between two ``working`` frames while a command runs.
HEARTBEAT = 1.0
_WORKING = {"working": True}
_RECV_SIZE = 65536


def control_socket_path(peer_dir: str, index: int) -> str:
    return os.path.join(peer_dir, f".s.control.{index}")


class ForwardedConsole:
    """What a handler sees when another worker asks: the console user, and no file
    descriptor goes anywhere (there is no client session here)."""

    client = None

    def __init__(self, app: "App", asker: Asker) -> None:
        self.app = app
        self.user = asker.user
        self._admin = asker.admin
        self.suspended_pooler = False

    @property
    def context(self) -> "PluginContext":
        return self.app.plugin_context

    def is_admin(self) -> bool:
        return self._admin

    def may_pass_fds(self) -> bool:
        return False


class WorkerChannel:
    """This worker's end: it serves the others' requests and asks them."""

    def __init__(self, app: "App", spec: "WorkerSpec") -> None:
        self.app = app
        self.spec = spec
        self.index = spec.index
        self.path = control_socket_path(spec.peer_dir, spec.index)
        self._server: Optional[StreamServer] = None

    # -- serving -----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on this worker's control socket (a dead predecessor's file is replaced)."""
        if os.path.exists(self.path):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        sock.listen(self.spec.workers * 4)
        self._server = StreamServer(sock, self._serve)
        self._server.start()

    def close(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=0)
            self._server = None
            if os.path.exists(self.path):
                os.unlink(self.path)

    def _serve(self, sock: socket.socket, address: Any) -> None:
        sock.settimeout(TIMEOUT)
        reader = FrameReader()
        try:
            while True:
                data = sock.recv(_RECV_SIZE)
                if not data:
                    return
                for request in reader.feed(data):
                    self._answer(sock, request)
        except (OSError, FrameError) as exc:
            log.warning("control channel: request dropped: %s", exc)

    def _answer(self, sock: socket.socket, request: Dict[str, Any]) -> None:
        query, user, admin = request.get("command"), request.get("user"), request.get("admin")
        if not (isinstance(query, str) and isinstance(user, str) and isinstance(admin, bool)):
            raise FrameError("not a request")
        log.debug("control channel: another worker asks for %s: %s", user, query)
        running = gevent.spawn(run_here_only, self.app, query, Asker(user, admin))
        while not running.ready():
            running.join(HEARTBEAT)
            if not running.ready():
                sock.sendall(encode(_WORKING))
        reply, after = running.get()
        try:
            frame = encode(reply)
        except (TypeError, FrameError) as exc:  # a row holds what JSON cannot carry
            frame = encode(error_message(AdminError(f"cannot pass the result on: {exc}")))
        try:
            sock.sendall(frame)
        finally:  # the asker may have given up on us: a SHUTDOWN begun here still finishes
            if after is not None:
                after()

    # -- asking ------------------------------------------------------------------------------

    def run_everywhere(self, query: str, asker: Asker, run_here: Callable[[], Result],
                       combine: Callable[..., Result]) -> Result:
        """Run *query* of *asker* here (``run_here``) and in every other worker at once; the
        reply is ``combine`` of the answers, this worker's first.

        :raises InvalidCommand: the command is malformed (the others refuse it alike).
        """
        asking = [gevent.spawn(self.ask, worker, query, asker) for worker in self._others()]
        try:
            here = Answer(self.index, result=run_here())
        except ClientError as err:
            here = Answer(self.index, error=err)
        return combine([here, *(greenlet.get() for greenlet in asking)])

    def forward(self, worker: int, query: str, asker: Asker) -> Result:
        """Have *worker* alone run *query* of *asker*; its result.

        :raises ClientError: it failed there, or the worker did not answer.
        """
        answer = self.ask(worker, query, asker)
        if answer.result is None:
            raise answer.error or AdminError(answer.failure())
        return answer.result

    def owner_of(self, socket_id: int) -> Optional[int]:
        """The other worker that opened socket *socket_id*; None when it is this one."""
        owner = self.spec.owner_of(socket_id)
        return None if owner == self.index else owner

    def ask(self, worker: int, query: str, asker: Asker) -> Answer:
        """*worker*'s answer to *query* of *asker*, or why there is none (never raises)."""
        gone = False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(TIMEOUT)
                sock.connect(control_socket_path(self.spec.peer_dir, worker))
                sock.sendall(encode({"command": query, "user": asker.user,
                                     "admin": asker.admin}))
                return _read_answer(worker, sock)
        except socket.timeout:
            missing = f"no reply within {TIMEOUT:g} s"
        except OSError as exc:
            missing = (exc.strerror or str(exc)).lower()
            gone = isinstance(exc, (ConnectionError, FileNotFoundError))
        except FrameError as exc:
            missing = f"a malformed reply ({exc})"
        log.warning("worker %d did not answer %r: %s", worker, query, missing)
        return Answer(worker, missing=missing, gone=gone)

    def _others(self) -> List[int]:
        return [index for index in range(1, self.spec.workers + 1) if index != self.index]


def _read_answer(worker: int, sock: socket.socket) -> Answer:
    """:raises OSError, FrameError: the connection failed or carried no proper answer."""
    reader = FrameReader()
    while True:
        data = sock.recv(_RECV_SIZE)
        if not data:
            raise ConnectionError(0, "closed the connection before answering")
        for message in reader.feed(data):
            if message != _WORKING:  # the command runs on: wait for the next frame
                return answer_from(worker, message)


def run_here_only(app: "App", query: str, asker: Asker
                  ) -> Tuple[Dict[str, Any], Optional[Callable]]:
    """Run *query* as another worker asked it: here only, for *asker*.  The reply message,
    and what to call once it is sent."""
    try:
        handler, args = find_command(app.admin_commands, query)
        if not (is_stats_allowed(handler) or asker.admin):  # as the console does, here too
            raise admin_access_needed()
        result = handler(ForwardedConsole(app, asker), args)
    except (InvalidCommand, GrammarError):
        return error_message(AdminError(f"invalid command '{query}', use SHOW HELP;")), None
    except ClientError as err:
        return error_message(err), None
    except Exception as exc:  # a bug must not cost the asking console its answer
        log.exception("admin command from another worker failed: %s", query)
        return error_message(AdminError(f"admin command failed: {exc}",
                                        sqlstate.INTERNAL_ERROR)), None
    return result_message(result), result.after


# -- messages --------------------------------------------------------------------------------

def result_message(result: Result) -> Dict[str, Any]:
    return {"result": {"tag": result.tag, "columns": [list(column) for column in result.columns],
                       "rows": [list(row) for row in result.rows],
                       "notices": [[notice.message, notice.detail]
                                   for notice in result.notices]}}


def error_message(err: ClientError) -> Dict[str, Any]:
    return {"error": {"message": err.message, "sqlstate": err.sqlstate, "detail": err.detail,
                      "hint": err.hint}}


def answer_from(worker: int, message: Dict[str, Any]) -> Answer:
    """The :class:`Answer` a reply message carries.

    :raises FrameError: the message is not a reply.
    """
    try:
        if "result" in message:
            return Answer(worker, result=_result_from(message["result"]))
        error = message["error"]
        return Answer(worker, error=ClientError(
            _text(error["message"]), _text(error["sqlstate"]), "ERROR",
            _optional_text(error["detail"]), _optional_text(error["hint"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise FrameError(f"not a reply: {exc!r}") from None


def _result_from(body: Dict[str, Any]) -> Result:
    columns = [(_text(name), int(oid)) for name, oid in body["columns"]]
    rows = [list(row) for row in body["rows"]]
    if any(len(row) != len(columns) for row in rows):
        raise ValueError("a row of the wrong width")
    notices = [Notice(_text(message), _optional_text(detail))
               for message, detail in body["notices"]]
    return Result(_text(body["tag"]), columns, rows, notices)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _optional_text(value: Any) -> Optional[str]:
    return None if value is None else _text(value)
