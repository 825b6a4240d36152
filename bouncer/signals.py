"""Signals with PgBouncer's meanings, dispatched by name in their own greenlets.

SIGHUP reload, SIGINT shutdown waiting for servers, SIGTERM shutdown waiting for clients (a
second one of either exits at once), SIGQUIT exit at once, SIGUSR1 pause, SIGUSR2 resume.

With ``workers`` above 1 a few real-time signals pass between a worker and the supervisor,
for the admin console (:mod:`bouncer.admin.control`): :data:`POOLER_SHUTDOWN_SIGNALS` and
:data:`REOPEN_SUPERVISOR_LOG`, and for an online restart, :data:`LISTENERS_HANDED_OVER`.
PgBouncer has none of them: only bouncer's own processes send them.
"""
from __future__ import annotations

import functools
import logging
import signal
from typing import TYPE_CHECKING, Callable, Dict

import gevent

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App

log = logging.getLogger(__name__)

#: The shutdown each signal asks for (App.shutdown's modes).
SHUTDOWN_SIGNALS = {
    signal.SIGINT: "wait_for_servers",
    signal.SIGTERM: "wait_for_clients",
    signal.SIGQUIT: "immediate",
}

#: A console's SHUTDOWN of the whole pooler (workers above 1), by mode: a worker sends one to
#: the supervisor, which stops as on a shutdown signal and passes it on to every worker.  Not
#: SHUTDOWN_SIGNALS: the workers have begun that shutdown already (the console asked them),
#: and a second SIGTERM would exit at once; this one begins the shutdown only in a worker
#: the console could not reach, and tells the others that the supervisor has stopped.
POOLER_SHUTDOWN_SIGNALS: Dict[int, str] = {
    signal.SIGRTMIN: "immediate",
    signal.SIGRTMIN + 1: "wait_for_servers",
    signal.SIGRTMIN + 2: "wait_for_clients",
}
#: A console's RELOAD (workers above 1): the supervisor reopens its log file, as SIGHUP has
#: it do, but passes nothing on (the console reloads the workers itself).
REOPEN_SUPERVISOR_LOG = signal.SIGRTMIN + 3
#: One worker gave the listening sockets to a new pooler (SHOW FDS, -R): the supervisor tells
#: every worker, so that none keeps serving the shared unix socket in its waiting shutdown.
LISTENERS_HANDED_OVER = signal.SIGRTMIN + 4


def signal_name(signum: int) -> str:
    """``SIGTERM``, or ``SIGRTMIN+2`` for a real-time signal (which have no names)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


def install(app: "App") -> None:
    """Route each signal to its handler; gevent runs handlers in a new greenlet."""
    handlers: Dict[int, Callable[[], None]] = {
        signal.SIGHUP: lambda: _reload(app),
        signal.SIGUSR1: lambda: app.pause(None),
        signal.SIGUSR2: lambda: _resume(app),
    }
    for signum, mode in SHUTDOWN_SIGNALS.items():
        handlers[signum] = functools.partial(app.shutdown, mode)
    for number, mode in POOLER_SHUTDOWN_SIGNALS.items():
        handlers[number] = functools.partial(app.join_pooler_shutdown, mode)
    handlers[LISTENERS_HANDED_OVER] = app.listeners.handed_over
    for number, handler in handlers.items():
        gevent.signal_handler(number, _logged(number, handler))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def _logged(signum: int, handler):
    name = signal_name(signum)

    def run() -> None:
        log.info("got %s", name)
        handler()
    return run


def _reload(app: "App") -> None:
    log.info("got SIGHUP, re-reading config")
    app.reload()


def _resume(app: "App") -> None:
    if app.shutdown_mode is not None:
        log.info("got SIGUSR2 while shutting down, ignoring")
        return
    app.resume(None)
