"""The requests a server still owes replies for, while prepared statements need them walked.

Used by :mod:`bouncer.session.prepared` when it has injected requests whose replies must be
swallowed, synthetic replies to place among the server's, or requests whose success
matters (a Parse, a Close, DISCARD ALL).  The queue holds every request sent from then on,
in order; each server reply is matched to the request at the head
(:class:`~bouncer.proto.extended.ReplyFilter` walks them).  An ErrorResponse to an
extended-protocol request makes the server skip everything up to the next Sync, which the
queue mirrors: skipped requests are dropped, the client gets its names back, and the
server's expected statements are rebuilt from what it confirmed.  What was sent before the
queue started is one barrier: so many ReadyForQuery messages.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Iterable, List, Optional, Tuple

from bouncer.proto.constants import Backend, Frontend
from bouncer.proto.extended import ReplyFilter
from bouncer.proto.scanner import ReplyPosition
from bouncer.session.statements import ADD, Effect, ServerStatements, Statement

_PARSE, _BIND, _DESCRIBE = Frontend.PARSE, Frontend.BIND, Frontend.DESCRIBE
_EXECUTE, _CLOSE, SYNC = Frontend.EXECUTE, Frontend.CLOSE, Frontend.SYNC
_QUERY, _FUNCTION_CALL = Frontend.QUERY, Frontend.FUNCTION_CALL
_ERROR, _READY = Backend.ERROR_RESPONSE, Backend.READY_FOR_QUERY
#: The kind of the barrier (not a type byte, so no client message can pass for it).
_BARRIER = -1
#: Requests answered up to a ReadyForQuery, errors included.
SYNC_KINDS = frozenset((SYNC, _QUERY, _FUNCTION_CALL, _BARRIER))
#: Extended-protocol requests: an error ends them and makes the server skip to Sync.
EXTENDED = frozenset((_PARSE, _BIND, _DESCRIBE, _EXECUTE, _CLOSE))
#: The reply that completes each extended request (besides ErrorResponse).
_ENDS = {
    _PARSE: (Backend.PARSE_COMPLETE,),
    _BIND: (Backend.BIND_COMPLETE,),
    _CLOSE: (Backend.CLOSE_COMPLETE,),
    _DESCRIBE: (Backend.ROW_DESCRIPTION, Backend.NO_DATA),
    _EXECUTE: (Backend.COMMAND_COMPLETE, Backend.EMPTY_QUERY_RESPONSE,
               Backend.PORTAL_SUSPENDED),
}
#: What happens to a request's reply: forwarded, swallowed, or made up by the pooler.
FORWARD, SKIP, FAKE = 0, 1, 2


class Request:
    """A request sent to the server (or answered for it), in the order of its replies.

    :param kind: its message type.
    :param mode: FORWARD, SKIP (injected: the reply is swallowed) or FAKE (not sent:
        ``reply`` is given to the client when its turn comes).
    :param undo: gives the client back the names it had, should the request fail or be
        skipped.
    :param effect: what it does to the server's statements once it succeeds.
    """

    __slots__ = ("kind", "mode", "reply", "undo", "effect", "special", "failed", "waiting")

    def __init__(self, kind: int, mode: int = FORWARD, reply: bytes = b"",
                 undo: Optional[Callable[[], None]] = None, effect: Optional[Effect] = None,
                 waiting: int = 0) -> None:
        self.kind = kind
        self.mode = mode
        self.reply = reply
        self.undo = undo
        self.effect = effect
        #: Needs the replies walked: swallowed, synthetic, or with a result to watch.
        self.special = mode != FORWARD or undo is not None or effect is not None
        self.failed = False  # an error came among its replies (a Query's do not end it)
        self.waiting = waiting  # ReadyForQuery messages a barrier still waits for


class RequestQueue:
    """The requests one server still owes replies for, and the walk of its replies.

    :param sync_points: ReadyForQuery messages owed for what was sent before (a barrier).
    :param unsynced: the extended requests sent since the last Sync.
    :param position: where the server's reply stream stands.
    :param server: the server's statements, confirmed as replies come.
    """

    def __init__(self, sync_points: int, unsynced: Iterable[int], position: ReplyPosition,
                 server: ServerStatements) -> None:
        self._queue: Deque[Request] = deque()
        if sync_points:
            self._queue.append(Request(_BARRIER, waiting=sync_points))
        self._queue.extend(Request(kind) for kind in unsynced)
        self._server = server
        self._specials = 0  # requests in the queue that are special
        #: True while the server ignores everything up to the client's next Sync.
        self.skipping = False
        #: Sync points the server skipped (an error before them): never answered.
        self.lost_syncs = 0
        self._replies = ReplyFilter()
        self._replies.adopt(position, self._on_reply)

    def __bool__(self) -> bool:
        return bool(self._queue)

    def append(self, request: Request) -> None:
        self._queue.append(request)
        self._specials += request.special

    def send_after_current(self, reply: bytes) -> bool:
        """Queue-empty answer: after the reply the client is receiving (False: send now)."""
        return self._replies.send_after_current(reply)

    def expects_in_this_region(self, statement: Statement) -> bool:
        """Whether a Parse of ``statement`` is pending since the last Sync queued."""
        for request in reversed(self._queue):
            if request.kind == SYNC:
                return False
            if request.effect == (ADD, statement):
                return True
        return False

    def settled(self) -> Optional[int]:
        """The ReadyForQuery messages still owed, when nothing needs the replies walked any
        more (the caller then only counts); None while something does."""
        if self._specials or self.skipping or not self._replies.at_boundary:
            return None
        unsynced = False
        for request in self._queue:
            if request.kind == SYNC:
                unsynced = False
            elif request.kind in EXTENDED:
                unsynced = True
            elif unsynced:  # a Query the server skips if a request before it fails
                return None
        if unsynced:
            return None  # their replies could not be found again
        return sum(request.waiting or 1 for request in self._queue
                   if request.kind in SYNC_KINDS)

    # -- replies -------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        """Filter a server chunk; return the bytes for the client."""
        return self._replies.feed(chunk, self._on_reply)

    def _on_reply(self, msg_type: int) -> Tuple[bool, bytes]:
        queue = self._queue
        if not queue:
            return True, b""  # asynchronous (NOTICE, ParameterStatus) or unexpected
        head = queue[0]
        if msg_type == _READY:
            self._ready()
        elif head.kind in SYNC_KINDS:
            head.failed = head.failed or msg_type == _ERROR  # a Query goes on to ReadyForQuery
            return True, b""
        elif msg_type == _ERROR:
            self._failed()
        elif msg_type in _ENDS[head.kind]:
            self._pop()
            if head.effect is not None:
                self._server.confirm(head.effect)
            return head.mode != SKIP, self._due_fakes()
        else:
            return True, b""
        return True, self._due_fakes()

    def _ready(self) -> None:
        """ReadyForQuery: anything still expected before the sync point was skipped."""
        queue = self._queue
        dropped = []
        while queue and queue[0].kind not in SYNC_KINDS:
            dropped.append(self._pop())
        self.skipping = False
        if queue:
            head = queue[0]
            head.waiting -= 1
            if head.waiting <= 0:  # (a barrier stands for several)
                self._pop()
                if head.failed:
                    dropped.append(head)
                elif head.effect is not None:
                    self._server.confirm(head.effect)
        self._dropped(dropped)

    def _failed(self) -> None:
        """An extended request failed: the server skips the rest up to the next Sync."""
        queue = self._queue
        dropped = [self._pop()]
        while queue and queue[0].kind != SYNC:
            request = self._pop()
            self.lost_syncs += request.kind in SYNC_KINDS
            dropped.append(request)
        self.skipping = not queue
        self._dropped(dropped)

    def _dropped(self, requests: List[Request]) -> None:
        """Requests that failed or were skipped: give the client its names back (latest
        first: they may touch the same names), expect of the server only what still may be."""
        for request in reversed(requests):
            if request.undo is not None:
                request.undo()
        if any(request.effect is not None for request in requests):
            self._server.rebuild(request.effect for request in self._queue
                                 if request.effect is not None)

    def _pop(self) -> Request:
        request = self._queue.popleft()
        self._specials -= request.special
        return request

    def _due_fakes(self) -> bytes:
        """The synthetic replies that are next in line."""
        queue = self._queue
        replies = []
        while queue and queue[0].mode == FAKE:
            replies.append(self._pop().reply)
        return b"".join(replies)
