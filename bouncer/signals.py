"""Signals with PgBouncer's meanings, dispatched by name in their own greenlets.

SIGHUP reload, SIGINT shutdown waiting for servers, SIGTERM shutdown waiting for clients (a
second one of either exits at once), SIGQUIT exit at once, SIGUSR1 pause, SIGUSR2 resume.
"""
from __future__ import annotations

import functools
import logging
import signal
from typing import TYPE_CHECKING

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


def install(app: "App") -> None:
    """Route each signal to its handler; gevent runs handlers in a new greenlet."""
    handlers = {
        signal.SIGHUP: lambda: _reload(app),
        signal.SIGUSR1: lambda: app.pause(None),
        signal.SIGUSR2: lambda: _resume(app),
    }
    for signum, mode in SHUTDOWN_SIGNALS.items():
        handlers[signum] = functools.partial(app.shutdown, mode)
    for signum, handler in handlers.items():
        gevent.signal_handler(signum, _logged(signum, handler))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def _logged(signum: int, handler):
    name = signal.Signals(signum).name

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
