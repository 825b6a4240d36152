"""The supervisor of a pooler with ``workers`` above 1 (gunicorn's arbiter, in small).

It binds the listening sockets once and starts the workers, each a fresh ``python -m bouncer``
serving the inherited sockets (see :mod:`bouncer.worker`).  It passes the signals on to every
worker, restarts a worker that dies, and exits once they have all exited after a shutdown.
Everything waits on events (a child's exit, a signal, a worker's ready byte): no polling.
A worker's admin console reaches it with real-time signals (:mod:`bouncer.signals`): a
SHUTDOWN, which it passes on as it came (the worker that sent it waits for it: then the
supervisor has stopped), and a RELOAD, for which it only reopens its log file.

Only the supervisor does what must happen once per pooler: binding, the pidfile, sd_notify
and removing the unix socket file.  Each worker runs its own janitor, since it keeps the
pools it serves (their lifetimes, idle timeouts and min_pool_size are per process).
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple, cast

import gevent
from gevent.event import Event

from bouncer import VERSION_STRING, pidfile, systemd
from bouncer.config import Config
from bouncer.log import LogSetup
from bouncer.net.listener import bind, remove_socket_file, unix_socket
from bouncer.signals import (POOLER_SHUTDOWN_SIGNALS, REOPEN_SUPERVISOR_LOG, SHUTDOWN_SIGNALS,
                             signal_name)
from bouncer.slots.arbiter import Arbiter
from bouncer.worker import ENV, WorkerSpec

log = logging.getLogger(__name__)

#: A worker that ran this long before dying is restarted at once; one that dies sooner waits
#: RESTART_DELAY, doubled at each quick death up to RESTART_DELAY_MAX, so it cannot spin.
STABLE_AFTER = 10.0
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 30.0

#: Passed on only to workers that are serving: one still starting reads the file anyway, and
#: before it installs its handlers SIGHUP would kill it.
_SERVING_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class Worker:
    index: int
    private: socket.socket
    process: Optional[subprocess.Popen] = None
    serving: bool = False


def restart_delay(previous: float, ran: float) -> float:
    """How long to wait before restarting a worker that died after *ran* seconds, when the
    wait before its last start was *previous*."""
    if ran >= STABLE_AFTER:
        return 0.0
    return min(max(previous * 2, RESTART_DELAY), RESTART_DELAY_MAX)


def status_text(returncode: int) -> str:
    """A child's exit as PgBouncer-style log words."""
    if returncode < 0:
        return f"was killed by signal {signal_name(-returncode)}"
    return f"exited with status {returncode}"


class Supervisor:
    """Runs ``config.workers`` workers of the pooler configured in ``config_path``."""

    def __init__(self, config: Config, config_path: str, worker_flags: List[str],
                 logs: LogSetup) -> None:
        self.config = config
        self.logs = logs
        self.command = [sys.executable, "-m", "bouncer", *worker_flags, config_path]
        self.listening: List[socket.socket] = []
        self.workers: List[Worker] = []
        self.peer_dir = ""
        self.arbiter: Optional[Arbiter] = None
        self.stopping = Event()
        self._told_ready = False
        #: The unix socket file we bound, and its inode: ours to remove at exit.
        self._unix_file: Optional[Tuple[str, int]] = None

    def install_signals(self) -> None:
        for signum in (*_SERVING_SIGNALS, *SHUTDOWN_SIGNALS, *POOLER_SHUTDOWN_SIGNALS):
            gevent.signal_handler(signum, self._pass_on, signum)
        gevent.signal_handler(REOPEN_SUPERVISOR_LOG, self.logs.reopen)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def bind(self) -> None:
        """:raises ConfigError: an address cannot be bound."""
        config = self.config
        self.listening = bind(config.listen_addr, config.listen_port, config.unix_socket_dir,
                              config.unix_socket_mode, config.listen_backlog,
                              config.so_reuseport, config.unix_socket_group)
        for sock in self.listening:
            if sock.family == socket.AF_UNIX:
                path = sock.getsockname()
                self._unix_file = (path, os.stat(path).st_ino)

    def run(self) -> int:
        """Start the workers, keep them running until a shutdown, clean up; the exit status."""
        log.info("process up: %s, supervisor of %d workers", VERSION_STRING, self.config.workers)
        # Made here, after -u and -d: the workers, running as that user, connect to these.
        self.peer_dir = tempfile.mkdtemp(prefix="bouncer-workers-")
        self.arbiter = Arbiter(self.peer_dir, self.config.workers)
        self.workers = [Worker(index, unix_socket(self.peer_dir, index, 0o600,
                                                  self.config.listen_backlog, ""))
                        for index in range(1, self.config.workers + 1)]
        gevent.joinall([gevent.spawn(self._keep_running, worker) for worker in self.workers])
        self._clean_up()
        log.info("exiting")
        return 0

    def _keep_running(self, worker: Worker) -> None:
        delay = 0.0
        while not self.stopping.is_set():
            started = time.monotonic()
            returncode = self._run_once(worker)
            if self.stopping.is_set():
                break
            delay = restart_delay(delay, time.monotonic() - started)
            log.warning("worker %d (pid %d) %s, restarting it in %g s", worker.index,
                        worker.process.pid if worker.process else 0, status_text(returncode),
                        delay)
            self.stopping.wait(delay)

    def _run_once(self, worker: Worker) -> int:
        """Start the worker, wait for it to serve, then to exit; its return code."""
        ours, theirs = socket.socketpair()
        slots = cast(Arbiter, self.arbiter).open_channel(worker.index)
        with ours:
            with theirs, slots:
                worker.process = self._start(worker, theirs.fileno(), slots.fileno())
            if ours.recv(1):  # empty: it died before serving
                worker.serving = True
                log.info("worker %d (pid %d) is serving", worker.index, worker.process.pid)
                self._notify_if_all_serving()
        returncode = worker.process.wait()
        worker.serving = False
        return returncode

    def _start(self, worker: Worker, ready_fd: int, slot_fd: int) -> subprocess.Popen:
        fds = tuple(sock.fileno() for sock in self.listening) + (worker.private.fileno(),)
        spec = WorkerSpec(index=worker.index, workers=len(self.workers),
                          first_peer_id=self.config.worker_peer_ids()[0],
                          peer_dir=self.peer_dir,
                          supervisor_pid=os.getpid(), listen_fds=fds, ready_fd=ready_fd,
                          slot_fd=slot_fd)
        env = {**os.environ, ENV: spec.to_env()}
        env.pop("NOTIFY_SOCKET", None)  # systemd hears from the supervisor, the main PID
        return subprocess.Popen(self.command, env=env, pass_fds=fds + (ready_fd, slot_fd))

    def _notify_if_all_serving(self) -> None:
        # Once: a restarted worker is no news to systemd (the log line says it).
        if not self._told_ready and all(worker.serving for worker in self.workers):
            self._told_ready = True
            systemd.notify("READY=1", f"STATUS={len(self.workers)} workers accepting "
                                      f"connections on port {self.config.listen_port}")

    def _pass_on(self, signum: int) -> None:
        if signum in POOLER_SHUTDOWN_SIGNALS:
            log.info("a worker's console asked for a shutdown (%s), passing it on to the "
                     "workers", POOLER_SHUTDOWN_SIGNALS[signum].replace("_", " "))
        else:
            log.info("got %s, passing it on to the workers", signal_name(signum))
        if signum == signal.SIGHUP:
            self.logs.reopen()  # logrotate moved the file away from us too
        stops = signum in SHUTDOWN_SIGNALS or signum in POOLER_SHUTDOWN_SIGNALS
        if stops and not self.stopping.is_set():
            systemd.notify("STOPPING=1")
            self.stopping.set()
            # Our copies would keep the sockets listening after the workers closed theirs:
            # new clients would wait in the backlog instead of being refused.
            self._close_listening()
        for worker in self.workers:
            process = worker.process
            if process is not None and (worker.serving or signum not in _SERVING_SIGNALS):
                process.send_signal(signum)

    def _close_listening(self) -> None:
        for sock in self.listening:
            sock.close()
        self.listening = []

    def _clean_up(self) -> None:
        self._close_listening()
        if self._unix_file is not None:
            remove_socket_file(*self._unix_file)
        for worker in self.workers:
            worker.private.close()
        shutil.rmtree(self.peer_dir, ignore_errors=True)
        pidfile.remove(self.config.pidfile)
