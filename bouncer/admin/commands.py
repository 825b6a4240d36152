"""The contract between the admin console and its command handlers (built-in or plugin).

A handler is ``handler(console, args) -> Result``: ``console`` is the
:class:`~bouncer.admin.console.Console` of the user who typed the command (for plugins:
``console.context``, ``console.user``, ``console.is_admin()``; the built-ins also use
``console.app`` and ``console.client``), ``args`` the text after the command's words (e.g.
``"mydb"`` for ``PAUSE mydb``; parse it with :mod:`bouncer.admin.grammar`).  The handler
returns a :class:`Result`, or raises :class:`InvalidCommand` (reported as PgBouncer's
"invalid command") or a :class:`~bouncer.plugin.Refusal`, :class:`AdminError` or any other
``ClientError`` (reported as an ERROR).  The
console stays usable after either.

Access fails closed: only ``admin_users`` (and the local ``pgbouncer`` user) may run a handler,
unless it is decorated with :func:`stats_allowed`, which opens it to ``stats_users`` too.

With ``workers`` above 1 a handler runs in the worker the console user reached, and sees that
worker only.  One decorated with :func:`on_every_worker` runs in every worker (the others are
asked over :mod:`bouncer.admin.worker_channel`), and its ``combine`` makes the one reply the
user gets from the workers' answers (see :mod:`bouncer.admin.merge`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, TypeVar

from bouncer.admin import grammar
from bouncer.errors import ClientError
from bouncer.proto import sqlstate

#: Column type oids, by the letters PgBouncer's admin.c uses to describe result columns:
#: ``s`` text, ``i`` int4, ``q`` int8, ``N`` numeric, ``T`` a time (sent as text, as
#: PgBouncer does), ``b`` bytea.
TYPE_OIDS = {"s": 25, "i": 23, "q": 20, "N": 1700, "T": 25, "b": 17}

Column = Tuple[str, int]
Handler = TypeVar("Handler", bound=Callable[..., "Result"])


class AdminError(ClientError):
    """A command failed; the user sees an ERROR and the console stays usable."""

    # PgBouncer answers every console error with 08P01; drivers' exception classes follow it.
    def __init__(self, message: str, code: str = sqlstate.PROTOCOL_VIOLATION,
                 detail: Optional[str] = None) -> None:
        super().__init__(message, code, "ERROR", detail=detail)


class InvalidCommand(Exception):
    """The command is malformed; the console answers "invalid command '<query>'"."""


def admin_access_needed() -> AdminError:
    return AdminError("admin access needed", sqlstate.INSUFFICIENT_PRIVILEGE)


@dataclass(frozen=True)
class Notice:
    """A NoticeResponse sent before the result (``SHOW HELP``, ``SET ignored``)."""

    message: str
    detail: Optional[str] = None


@dataclass
class Result:
    """What a command answers.

    :param tag: the CommandComplete tag (``SHOW``, ``PAUSE``, ``SET key=value``...).
    :param columns: ``(name, type oid)`` pairs; empty for commands that return no rows.
    :param rows: one sequence of values per row, as many as ``columns``: ``None`` is NULL,
        ``bytes`` are sent as bytea hex, anything else as ``str(value)``.
    :param notices: sent before the rows.
    :param after: called once the reply has been sent, or has failed to go (the user left):
        ``SHUTDOWN`` finishes the shutdown it began, and exits the process.
    :param row_fds: one file descriptor per row, passed with it over the unix socket
        (``SHOW FDS`` for an online restart); ignored unless the console may pass them.
    """

    tag: str
    columns: Sequence[Column] = ()
    rows: Sequence[Sequence[Any]] = ()
    notices: Sequence[Notice] = ()
    after: Optional[Callable[[], None]] = None
    row_fds: Sequence[int] = ()


def columns(letters: str, *names: str) -> Tuple[Column, ...]:
    """Column descriptions written as admin.c writes them: ``columns("si", "list", "items")``."""
    if len(letters) != len(names):
        raise ValueError(f"{len(letters)} type letters for {len(names)} columns")
    return tuple((name, TYPE_OIDS[letter]) for letter, name in zip(letters, names))


def show(cols: Sequence[Column], rows: Sequence[Sequence[Any]]) -> Result:
    """The result of a SHOW command."""
    return Result("SHOW", cols, rows)


def stats_allowed(handler: Handler) -> Handler:
    """Mark a read-only handler that ``stats_users`` may run too."""
    handler.stats_allowed = True  # type: ignore[attr-defined]
    return handler


def is_stats_allowed(handler: Callable[..., Any]) -> bool:
    return bool(getattr(handler, "stats_allowed", False))


def on_every_worker(combine: Callable[..., "Result"]) -> Callable[[Handler], Handler]:
    """Mark a handler that acts for the whole pooler: every worker runs it, and
    ``combine(answers)`` (the :class:`~bouncer.admin.merge.Answer` of each worker, this one's
    first) makes the reply.  Without workers the handler simply runs."""
    def mark(handler: Handler) -> Handler:
        handler.on_every_worker = combine  # type: ignore[attr-defined]
        return handler
    return mark


@dataclass(frozen=True)
class Asker:
    """The console user a command runs for, in another worker too: their name, and whether
    they are an admin (as the worker they reached found it)."""

    user: str
    admin: bool


def asker_of(console: Any) -> Asker:
    return Asker(console.user, console.is_admin())


def find_command(table: Dict[str, Callable[..., Result]], query: str
                 ) -> Tuple[Callable[..., Result], str]:
    """The handler of the command *query* names, and the text after the command's words.

    :raises InvalidCommand: no command of *table* matches.
    """
    found = grammar.match_command(grammar.strip_terminator(query), table)
    if found is None:
        raise InvalidCommand()
    word, args = found
    return table[word], args


def every_worker_combine(handler: Callable[..., Any]) -> Optional[Callable[..., "Result"]]:
    """The ``combine`` of a handler marked with :func:`on_every_worker`, else None."""
    return getattr(handler, "on_every_worker", None)
