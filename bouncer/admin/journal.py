"""The runtime changes a restarted worker replays (``workers`` above 1).

A worker that died is restarted from the configuration file; without more, it would serve
without what the console changed since: a SET, a user's or pool's limits (SET USER, SET POOL),
a paused, killed or disabled database.  So each console command that changes lasting state
is marked with :func:`replayed`; once it has run (in every worker), the worker that ran it
tells the supervisor, which keeps the pooler's journal of them (:class:`Journal`) and hands
it to every worker it starts; the worker runs them, for itself only, before it serves.

Design note.  The journal is the supervisor's because it is the one process that outlives
every worker (asking a living worker would fail when the only one left is the one
restarting).  It keeps commands, not state: the handlers that ran them once run them again,
so nothing here knows what a setting or a pause is.  Of equal commands only the last is kept,
at its place: the state each command sets is then the one the last command setting it left,
and a script that repeats a SET does not grow the journal.  A RELOAD undoes what SET, SET
USER and SET POOL changed (they are :data:`UNTIL_RELOAD`), so they leave the journal; a pause
outlives a reload (:data:`KEPT`).  SUSPEND is not replayed: it ends with the console user who
gave it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, TypeVar

from bouncer.admin.commands import Asker
from bouncer.admin.worker_channel import run_here_only

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App

log = logging.getLogger(__name__)

#: What a command changes lasts until the process ends (PAUSE, DISABLE, KILL...).
KEPT = "kept"
#: What a command changes lasts until a RELOAD (SET, SET USER, SET POOL).
UNTIL_RELOAD = "until_reload"
#: The command is RELOAD: what the :data:`UNTIL_RELOAD` ones changed is undone.
RELOAD = "reload"

Handler = TypeVar("Handler", bound=Callable[..., Any])


def replayed(kind: str) -> Callable[[Handler], Handler]:
    """Mark a console command whose change a restarted worker must replay (*kind*: how long
    the change lasts)."""
    def mark(handler: Handler) -> Handler:
        handler.replayed = kind  # type: ignore[attr-defined]
        return handler
    return mark


def kind_of(handler: Callable[..., Any]) -> Optional[str]:
    return getattr(handler, "replayed", None)


@dataclass(frozen=True)
class Change:
    """One console command that changed the running pooler, and who gave it."""

    kind: str
    command: str
    user: str
    admin: bool

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Change":
        """:raises ValueError, TypeError, KeyError: not a change."""
        fields = json.loads(data)
        change = cls(str(fields["kind"]), str(fields["command"]), str(fields["user"]),
                     bool(fields["admin"]))
        if change.kind not in (KEPT, UNTIL_RELOAD, RELOAD):
            raise ValueError(f"unknown kind of change: {change.kind}")
        return change


class Journal:
    """The supervisor's journal: the changes a worker replays, in the order they ran."""

    def __init__(self) -> None:
        self._changes: Dict[Tuple[str, str, bool], Change] = {}  # kept in insertion order

    def record(self, change: Change) -> None:
        if change.kind == RELOAD:
            self.reloaded()
            return
        key = (change.command, change.user, change.admin)
        self._changes.pop(key, None)  # the last of equal commands, at its place
        self._changes[key] = change

    def reloaded(self) -> None:
        """The workers re-read the file (RELOAD, SIGHUP): the SETs are undone."""
        self._changes = {key: change for key, change in self._changes.items()
                         if change.kind != UNTIL_RELOAD}

    def changes(self) -> List[Change]:
        return list(self._changes.values())


def replay(app: "App", changes: List[Change]) -> None:
    """Run *changes* in this worker only, as their console users gave them."""
    failed = 0
    for change in changes:
        message, _ = run_here_only(app, change.command, Asker(change.user, change.admin))
        if "error" in message:  # e.g. a RESUME of a pause this worker never had
            failed += 1
            log.debug("replaying %s: %s", change.command, message["error"])
    if changes:
        log.info("replayed %d runtime changes of the running pooler (%d had nothing to do)",
                 len(changes), failed)
