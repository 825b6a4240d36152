"""What one server connection owes: the requests sent to it, in the order of their replies.

Sans-IO.  The client side of the protocol engine appends a request for every message the
server answers (Query, FunctionCall, Sync, Parse, Bind, Describe, Execute, Close, and a
CopyDone/CopyFail while the server is copying in); the server side pops them as replies
come.  A server can go back to the pool when nothing is owed, which replaces any rule of the
form "the last message the client sent was a Query".  The queue models what PostgreSQL does:

* an ErrorResponse to an extended-protocol request makes the server skip everything up to the
  client's next Sync (requests already queued are dropped; while no Sync is queued the
  pipeline is ``skipping`` and later requests are not queued);
* in COPY IN the server ignores Sync and Flush and consumes CopyData up to CopyDone or
  CopyFail; a CommandComplete or ErrorResponse ends the copy.  CopyData is not queued (it
  gets no reply), so a client that sends copy messages before it was asked to makes the
  queue unreliable: the pipeline is then ``lost`` and the server never serves another client;
* requests bouncer injects (a Parse before a Bind, a Close to evict) have their replies
  swallowed (SKIP), and replies bouncer makes up (a ParseComplete for a statement the server
  already has) take the place of a request that was never sent (FAKE).

A request is one ``int``: its message type in the low byte, flags above.  The few that carry
a prepared-statement effect or an undo action also hold a sequence number that keys them in a
dict, so the common request costs one deque append and one popleft.
"""
from __future__ import annotations

import itertools
from collections import deque
from typing import Callable, Deque, Dict, Iterable, List, Optional, Tuple

from bouncer.proto.constants import Frontend
from bouncer.proto.codec import build_message
from bouncer.proto.constants import Backend
from bouncer.proto.statements import Effect, ServerStatements

QUERY, FUNCTION_CALL, SYNC = Frontend.QUERY, Frontend.FUNCTION_CALL, Frontend.SYNC
PARSE, BIND, DESCRIBE = Frontend.PARSE, Frontend.BIND, Frontend.DESCRIBE
EXECUTE, CLOSE = Frontend.EXECUTE, Frontend.CLOSE
COPY_DONE, COPY_FAIL = Frontend.COPY_DONE, Frontend.COPY_FAIL

#: Requests answered by a ReadyForQuery.
SYNC_KINDS = frozenset((QUERY, FUNCTION_CALL, SYNC))
#: Extended-protocol requests: an error in one makes the server skip to the next Sync.
EXTENDED = frozenset((PARSE, BIND, DESCRIBE, EXECUTE, CLOSE))

KIND = 0xFF
#: The reply is swallowed: bouncer sent the request, the client did not.
SKIP = 0x100
#: Not sent: bouncer gives the client this reply when its turn comes.
FAKE = 0x200
#: Carries an effect and/or undo action, under the sequence number above bit 12.
SPECIAL = 0x400
_SEQ_SHIFT = 12

PARSE_COMPLETE = build_message(Backend.PARSE_COMPLETE)
CLOSE_COMPLETE = build_message(Backend.CLOSE_COMPLETE)
_FAKE_REPLIES = {PARSE: PARSE_COMPLETE, CLOSE: CLOSE_COMPLETE}

Undo = Callable[[], None]


class Pipeline:
    """The requests a server connection still owes replies for.

    :ivar statements: the prepared statements bouncer made on this server.
    :ivar names: the linked client's statement names (a DISCARD ALL empties them), if any.
    """

    __slots__ = ("queue", "fakes", "_special", "_seq", "skipping", "copy_in", "client_copy",
                 "copy_rows_sent", "unsynced", "lost", "mid_reply", "statements", "names")

    def __init__(self) -> None:
        #: The requests owed, oldest first (read it; change it through the methods).
        self.queue: Deque[int] = deque()
        #: How many of them are FAKE.
        self.fakes = 0
        self._special: Dict[int, Tuple[Optional[Effect], Optional[Undo]]] = {}
        self._seq = itertools.count(1)
        #: The server ignores the client's messages up to its next Sync.
        self.skipping = False
        #: The server is in COPY IN (or COPY BOTH): it consumes CopyData.
        self.copy_in = False
        #: The client was told to copy in and has not sent CopyDone/CopyFail yet.
        self.client_copy = False
        #: CopyData was sent since the server asked for it (a row may have failed the copy).
        self.copy_rows_sent = False
        #: An extended-protocol message was sent since the last Sync: the server holds the
        #: client's unnamed statement, portal or implicit transaction even once it answered.
        self.unsynced = False
        #: The client sent copy messages it was not asked for (CopyData before the server's
        #: CopyInResponse, say): where the server stands can no longer be told from the
        #: replies, so the connection stays with this client and is closed when it leaves.
        self.lost = False
        #: A server message is half forwarded to the client (set by the server engine).
        self.mid_reply = False
        self.statements = ServerStatements()
        self.names: Optional[dict] = None

    def __len__(self) -> int:
        return len(self.queue)

    @property
    def idle(self) -> bool:
        """Nothing owed, nothing held for the client until its next Sync, no COPY under way."""
        return not (self.queue or self.skipping or self.client_copy or self.unsynced
                    or self.lost)

    def kinds(self) -> List[int]:
        """The message types owed, oldest first (for tests and SHOW)."""
        return [entry & KIND for entry in self.queue]

    # -- what the client side sends --------------------------------------------------------

    def sent(self, kind: int) -> None:
        """A client message the server will answer was forwarded."""
        if self.copy_in and self.client_copy:
            if kind == SYNC:
                return  # PostgreSQL ignores Sync during COPY IN (not after CopyDone)
            self._copy_broken()
        if kind == SYNC:
            self.unsynced = self.skipping = False
        elif kind in EXTENDED:
            self.unsynced = True
        elif not (self.skipping or self.copy_in):
            self.unsynced = False  # a Query or FunctionCall ends the implicit transaction too
        if not self.skipping:
            self.queue.append(kind)

    def copy_data_sent(self) -> None:
        """CopyData was forwarded (the client engine calls this until ``copy_rows_sent``)."""
        if not self.client_copy:
            self.lost = True
        self.copy_rows_sent = True

    def copy_end_sent(self, kind: int) -> None:
        """CopyDone or CopyFail was forwarded: answered only if the server is still copying."""
        if not self.client_copy:
            self.lost = True
        self.client_copy = False
        if self.copy_in and not self.skipping:
            self.queue.append(kind)

    def sent_special(self, kind: int, effect: Optional[Effect] = None,
                     undo: Optional[Undo] = None, injected: bool = False) -> None:
        """A request whose success matters (``effect`` on the server's statements once it
        succeeds, ``undo`` if it fails or is skipped); ``injected``: bouncer's own, its reply
        is swallowed."""
        if self.copy_in and self.client_copy:
            self._copy_broken()
        seq = next(self._seq)
        self._special[seq] = (effect, undo)
        self.unsynced = True
        self.queue.append(kind | SPECIAL | (SKIP if injected else 0) | (seq << _SEQ_SHIFT))
        if effect is not None:
            self.statements.expect(effect)

    def fake(self, kind: int, undo: Optional[Undo] = None) -> bytes:
        """Answer a Parse or Close without the server.

        :return: the reply to send the client now, or ``b""`` when it is queued to follow the
            replies still owed (then ``undo`` runs if the server skips past it).
        """
        self.unsynced = True
        if not self.queue and not self.mid_reply:
            return _FAKE_REPLIES[kind]
        seq = next(self._seq)
        self._special[seq] = (None, undo)
        self.queue.append(kind | FAKE | SPECIAL | (seq << _SEQ_SHIFT))
        self.fakes += 1
        return b""

    def expects_in_this_region(self, effect: Effect) -> bool:
        """Whether a request with ``effect`` is queued since the last Sync queued."""
        for entry in reversed(self.queue):
            if entry & KIND == SYNC:
                return False
            if entry & SPECIAL and self._special[entry >> _SEQ_SHIFT][0] == effect:
                return True
        return False

    # -- what the server replies -----------------------------------------------------------

    def ready(self) -> None:
        """ReadyForQuery: the oldest Query, FunctionCall or Sync is answered."""
        queue = self.queue
        dropped = []
        while queue:
            entry = queue.popleft()
            if entry & KIND in SYNC_KINDS:
                self._settle(entry)
                break
            dropped.append(entry)  # not answered before the sync point: skipped
        self.skipping = False
        self._dropped(dropped)

    def answered(self, kind: int) -> bool:
        """A reply that completes a request of ``kind`` (ParseComplete for PARSE, ...).

        :return: whether the client gets the reply (False for an injected request's).
        """
        queue = self.queue
        if not queue or queue[0] & (KIND | FAKE) != kind:
            return True  # part of a Query's replies, or nothing of ours
        return self.pop_answered()

    def pop_answered(self) -> bool:
        """The oldest request got the reply that completes it (the caller checked its kind).

        :return: whether the client gets the reply (False for an injected request's).
        """
        entry = self.queue.popleft()
        if entry & SPECIAL:
            self._settle(entry)
        return not entry & SKIP

    def error(self) -> None:
        """ErrorResponse.  After an extended-protocol request the server skips to Sync."""
        if self.copy_in:
            self._end_copy()
        queue = self.queue
        if not queue or queue[0] & KIND not in EXTENDED:
            return  # a Query's or FunctionCall's: its ReadyForQuery follows
        dropped = []
        while queue and queue[0] & KIND != SYNC:
            dropped.append(queue.popleft())
        self.skipping = not queue
        self._dropped(dropped)

    def command_complete(self) -> bool:
        """CommandComplete: ends a COPY, and an Execute (a Query may have several)."""
        if self.copy_in:
            self._end_copy()
        return self.answered(EXECUTE)

    def copy_started(self) -> None:
        """CopyInResponse or CopyBothResponse: the client now sends CopyData, unless it
        already sent (before this reply came) a message that will break the copy."""
        self.copy_in = True
        self.copy_rows_sent = False
        sent_behind = itertools.islice(self.queue, 1, None)
        self.client_copy = all(entry & KIND == SYNC for entry in sent_behind)

    def due_fakes(self) -> bytes:
        """The made-up replies that are next in line (sent after the current reply)."""
        queue = self.queue
        replies = []
        while queue and queue[0] & FAKE:
            entry = queue.popleft()
            self.fakes -= 1
            self._special.pop(entry >> _SEQ_SHIFT)
            replies.append(_FAKE_REPLIES[entry & KIND])
        return b"".join(replies)

    def reset_statements(self) -> None:
        """DISCARD ALL / DEALLOCATE ALL completed: the server and the client forget all."""
        self.statements.clear()
        if self.names is not None:
            self.names.clear()

    def clear(self) -> None:
        """The server connection is being closed: nothing will be answered."""
        self._dropped(list(self.queue))
        self.queue.clear()
        self.skipping = self.copy_in = self.client_copy = self.unsynced = self.lost = False
        self.copy_rows_sent = False

    # -- bookkeeping -----------------------------------------------------------------------

    def _copy_broken(self) -> None:
        """A message other than copy data, Sync or Flush was sent during COPY IN: PostgreSQL
        fails the copy on it, so the Syncs after it are answered.  Copy messages the client
        sends later are out of turn.  If rows went before it, one of them may have failed the
        copy already, and then PostgreSQL runs this message instead: the replies can no longer
        tell which (``lost``)."""
        self.client_copy = False
        if self.copy_rows_sent:
            self.lost = True

    def _end_copy(self) -> None:
        """The copy is over: drop what copy mode consumed after the request that started it
        (Syncs, then its CopyDone, CopyFail or the message that broke it)."""
        self.copy_in = False
        queue = self.queue
        if len(queue) < 2:
            return
        head = queue.popleft()
        dropped = []
        while queue and queue[0] & KIND == SYNC:
            dropped.append(queue.popleft())
        if queue:
            dropped.append(queue.popleft())
        queue.appendleft(head)
        self._dropped(dropped)
        self._resync()

    def _resync(self) -> None:
        """Whether the server holds extended-protocol state, from what is still owed: the
        copy consumed messages that were counted when sent (a Sync, or an extended-protocol
        message that broke a simple-query copy)."""
        for entry in reversed(self.queue):
            kind = entry & KIND
            if kind in SYNC_KINDS:
                self.unsynced = False
                return
            if kind in EXTENDED:
                self.unsynced = True
                return

    def _settle(self, entry: int) -> None:
        """A request succeeded: its effect on the server's statements is confirmed."""
        if entry & SPECIAL:
            effect, _ = self._special.pop(entry >> _SEQ_SHIFT)
            if effect is not None:
                self.statements.confirm(effect)

    def _dropped(self, entries: Iterable[int]) -> None:
        """Requests that failed or were skipped: undo them, latest first (they may touch the
        same names), and expect of the server only what may still happen."""
        specials = [self._special.pop(entry >> _SEQ_SHIFT) for entry in entries
                    if entry & SPECIAL]
        if not specials:
            return
        self.fakes -= sum(1 for entry in entries if entry & FAKE)
        for _, undo in reversed(specials):
            if undo is not None:
                undo()
        if any(effect is not None for effect, _ in specials):
            self.statements.rebuild(effect for effect, _ in self._special.values()
                                    if effect is not None)
