"""Command line, as pgbouncer's: ``bouncer [-d] [-R] [-q] [-v...] [-u USER] [-V] [-h] CONFIG``,
plus ``bouncer --check [--connect] CONFIG``.

Builds the App and runs it; daemonizing, pidfile and dropping privileges happen here.
"""
from __future__ import annotations

import argparse
import logging
import os
import pwd
import sys
from typing import TYPE_CHECKING, List, Optional

from bouncer import VERSION_STRING, pidfile
from bouncer.errors import BouncerError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.config import Config
    from bouncer.log import LogSetup
    from bouncer.worker import WorkerSpec

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bouncer", description="A PgBouncer-compatible PostgreSQL connection pooler.")
    parser.add_argument("config", nargs="?", help="the ini file (pgbouncer.ini format)")
    parser.add_argument("-d", "--daemon", action="store_true",
                        help="run in the background (needs pidfile)")
    parser.add_argument("-R", "--reboot", action="store_true",
                        help="online restart: take the listening sockets over from a running "
                             "bouncer (a rolling restart with so_reuseport is preferred)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no logging to stderr")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (repeat for more)")
    parser.add_argument("-u", "--user", help="switch to this user after start")
    parser.add_argument("-V", "--version", action="store_true", help="print the version")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration, print every problem (or, when there "
                             "is none, what it would do), exit")
    parser.add_argument("--connect", action="store_true",
                        help="with --check: also log in to every [databases] target as the "
                             "pooler would, and print a line per database")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(VERSION_STRING)
        return 0
    if not args.config:
        build_parser().print_usage(sys.stderr)
        return 1
    if args.connect and not args.check:
        print("bouncer: --connect works with --check only", file=sys.stderr)
        return 1
    if args.check:
        return check(args.config, args.connect)
    return run(args)


def check(path: str, connect: bool = False) -> int:
    """``--check`` (and ``--connect``): validate without listening; exit 0 when usable."""
    from bouncer.check.report import run_check
    from bouncer.log import LogSetup
    LogSetup().apply()  # plugins' warnings (e.g. a certificate about to expire) print as lines
    return run_check(path, connect)


def run(args: argparse.Namespace) -> int:
    from bouncer.app import App
    from bouncer.log import LogSetup, skip_unused_record_fields
    from bouncer import signals
    from bouncer import worker
    skip_unused_record_fields()
    logs = LogSetup(quiet=args.quiet, verbosity=args.verbose)
    logs.apply()
    spec = worker.from_environment()
    try:
        app = App(args.config, logs, spec)
    except ConfigError as err:
        for problem in getattr(err, "problems", (err,)):
            log.critical("%s", problem)
        return 1
    except OSError as err:  # an auth_file that cannot be read
        log.critical("%s", err)
        return 1
    if args.daemon and not app.config.pidfile:
        log.critical("-d needs pidfile to be set in the config")
        return 1
    if spec is not None:
        return _serve_as_worker(app, spec)
    if app.config.workers > 1:
        # The App above was built for its checks only: a configuration the workers would
        # refuse is refused here, once, before anything starts.
        return _supervise(app.config, args, logs)
    signals.install(app)  # before listening: a signal right after start must not kill us
    taken = None
    try:
        if args.reboot:
            from bouncer.takeover import take_over
            taken = take_over(app)
            app.start(taken.listening)
        else:
            app.start()
    except (ConfigError, OSError, BouncerError) as err:
        log.critical("%s", err)
        return 1
    _become_the_service(args, logs, app.config.pidfile)
    if taken is not None:  # once daemonized: their greenlets must not cross the fork
        app.serve_handed_over([(client.sock, client.state) for client in taken.clients])
    import gevent
    gevent.wait()  # returns only if every greenlet ended; shutdown() normally exits first
    return 0


def _serve_as_worker(app: "App", spec: "WorkerSpec") -> int:
    """One worker of a supervisor: serve the sockets it passed; no pidfile, no daemonizing
    (the supervisor did both for the whole pooler)."""
    from bouncer import signals
    from bouncer.admin import journal
    signals.install(app)
    spec.end_with_the_supervisor()  # after install: the SIGTERM must find our handler
    shared, private = spec.sockets()
    start = spec.receive_start()
    app.listeners.adopt(shared, "from the supervisor")
    app.listeners.adopt([private], "the worker's own", private=True)
    try:
        app.start([*shared, private])
    except (ConfigError, OSError, BouncerError) as err:
        log.critical("%s", err)
        return 1
    journal.replay(app, start.changes)  # at once: its first clients see what the others do
    spec.ready()
    app.serve_handed_over(start.clients)
    import gevent
    gevent.wait()
    return 0


def _supervise(config: "Config", args: argparse.Namespace, logs: "LogSetup") -> int:
    """``workers`` above 1: bind, drop privileges, daemonize, then run the supervisor."""
    from bouncer.supervisor import Supervisor
    flags = (["-q"] if args.quiet else []) + ["-v"] * args.verbose
    supervisor = Supervisor(config, args.config, flags, logs)
    supervisor.install_signals()  # before binding, as for one process
    try:
        if args.reboot:
            supervisor.take_over()
        else:
            supervisor.bind()
    except (ConfigError, OSError, BouncerError) as err:
        log.critical("%s", err)
        return 1
    _become_the_service(args, logs, config.pidfile)
    return supervisor.run()


def _become_the_service(args: argparse.Namespace, logs: "LogSetup", pidfile_path: str) -> None:
    """After binding: the -u user, the -d background process, then the pidfile (its pid)."""
    if args.user:
        _drop_privileges(args.user)
    if args.daemon:
        _daemonize(logs)
    pidfile.write(pidfile_path)


def _drop_privileges(user: str) -> None:
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _daemonize(logs) -> None:
    """Double fork, new session, stdio to /dev/null (after listening, so errors were seen)."""
    from gevent import reinit
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    reinit()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    logs.detach_stderr()
