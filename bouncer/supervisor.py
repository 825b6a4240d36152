"""The supervisor of a pooler with ``workers`` above 1 (gunicorn's arbiter, in small).

It binds the listening sockets once (or takes them over from the running pooler, ``-R``:
:meth:`Supervisor.take_over`) and starts the workers, each a fresh ``python -m bouncer``
serving the inherited sockets (see :mod:`bouncer.worker`).  It passes the signals on to every
worker, restarts a worker that dies, and exits once they have all exited after a shutdown.
Everything waits on events (a child's exit, a signal, a worker's ready byte): no polling.
Each worker has a line to the supervisor (:attr:`bouncer.worker.WorkerSpec.ready_fd`): down
it go the clients an online restart took over for it and the runtime changes to replay
(:mod:`bouncer.admin.journal`); up it come its ready byte, the runtime changes made on its
console, and whether it handed the listening sockets to a new pooler (then the socket file is
no longer ours to remove).
A worker's admin console reaches it with real-time signals (:mod:`bouncer.signals`): a
SHUTDOWN, which it passes on as it came (the worker that sent it waits for it: then the
supervisor has stopped), and a RELOAD, for which it only reopens its log file.

Only the supervisor does what must happen once per pooler: binding, the pidfile, sd_notify
and removing the unix socket file.  Each worker runs its own janitor, since it keeps the
pools it serves (their lifetimes and idle timeouts are per process; min_pool_size is counted
across the workers through the slots, :mod:`bouncer.slots`).
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
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, cast

import gevent
from gevent.event import Event

from bouncer import VERSION_STRING, pidfile, systemd
from bouncer.config import Config
from bouncer.admin.journal import KEPT, Change, Journal
from bouncer.log import LogSetup
from bouncer.net.listener import bind, remove_socket_file, unix_socket
from bouncer.proto.cancel_key import key_peer
from bouncer.signals import (LISTENERS_HANDED_OVER, POOLER_SHUTDOWN_SIGNALS,
                             REOPEN_SUPERVISOR_LOG, SHUTDOWN_SIGNALS, signal_name)
from bouncer.slots.arbiter import Arbiter
from bouncer.takeover import RunningBouncer, TakenClient, TakeoverError, log_taken
from bouncer.worker import CHANGE, ENV, HANDED_OVER, WorkerSpec, send_start

log = logging.getLogger(__name__)

#: A worker that ran this long before dying is restarted at once; one that dies sooner waits
#: RESTART_DELAY, doubled at each quick death up to RESTART_DELAY_MAX, so it cannot spin.
STABLE_AFTER = 10.0
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 30.0
#: An online restart gives up (the old pooler serves on) if the workers do not all serve
#: within this many seconds.
TAKEOVER_TIMEOUT = 30.0

#: Passed on only to workers that are serving: one still starting reads the file anyway, and
#: before it installs its handlers SIGHUP would kill it.
_SERVING_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
#: The signals that change the pooler as a console command does (a restarted worker replays).
_SIGNALLED_CHANGES: Dict[int, str] = {signal.SIGUSR1: "PAUSE", signal.SIGUSR2: "RESUME"}
#: The longest record on a worker's line.
_MAX_RECORD = 65536


@dataclass
class Worker:
    index: int
    private: socket.socket
    process: Optional[subprocess.Popen] = None
    serving: bool = False
    #: Clients an online restart took over for this worker, passed at its first start.
    taken_clients: List[TakenClient] = field(default_factory=list)


def restart_delay(previous: float, ran: float) -> float:
    """How long to wait before restarting a worker that died after *ran* seconds, when the
    wait before its last start was *previous*."""
    if ran >= STABLE_AFTER:
        return 0.0
    return min(max(previous * 2, RESTART_DELAY), RESTART_DELAY_MAX)


def _receive(line: socket.socket, size: int) -> bytes:
    """A record from a worker's line; empty once the worker is gone (a worker that dies
    before reading what we sent it resets the line instead of closing it)."""
    try:
        return line.recv(size)
    except ConnectionError:
        return b""


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
        self.all_serving = Event()
        #: The pooler an online restart (-R) takes over, until its workers all serve.
        self._running: Optional[RunningBouncer] = None
        self._taken_clients: List[TakenClient] = []
        #: What the console changed at run time, for the workers started from now.
        self.journal = Journal()
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
        self._own_unix_file()

    def take_over(self) -> None:
        """Online restart (-R): suspend the running pooler and take its listening sockets and
        the clients it hands over; it shuts down once our workers serve (:meth:`run`).

        :raises TakeoverError, OSError: it cannot be taken over.
        """
        running = RunningBouncer(self.config)
        taken = running.suspend_and_take()
        self._running = running
        self.listening = taken.listening
        self._taken_clients = taken.clients
        self._own_unix_file()
        log_taken(taken)

    def _own_unix_file(self) -> None:
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
        self._deal_taken_clients()
        keepers = [gevent.spawn(self._keep_running, worker) for worker in self.workers]
        if self._running is not None:
            gevent.spawn(self._finish_takeover, self._running)
        gevent.joinall(keepers)
        self._clean_up()
        log.info("exiting")
        return 0

    def _deal_taken_clients(self) -> None:
        """Give each client taken over to the worker whose peer id its cancel key carries
        (the old pooler's worker of the same index issued it), else to the first worker."""
        peer_ids = list(self.config.worker_peer_ids())
        for client in self._taken_clients:
            peer = key_peer(client.state.cancel_key[0])
            index = peer_ids.index(peer) if peer in peer_ids else 0
            self.workers[index].taken_clients.append(client)
        self._taken_clients = []

    def _finish_takeover(self, running: RunningBouncer) -> None:
        """Once every worker serves, the old pooler may go; if they do not, it serves on."""
        if self.all_serving.wait(TAKEOVER_TIMEOUT):
            try:
                running.shut_down()
            except (OSError, TakeoverError) as exc:  # it went away already: nothing to undo
                log.warning("online restart: SHUTDOWN of the running pooler: %s", exc)
            return
        running.abandon()
        log.critical("online restart: the workers did not all serve within %g s; the running "
                     "pooler serves on, this one stops", TAKEOVER_TIMEOUT)
        self._pass_on(signal.SIGINT)

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
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        slots = cast(Arbiter, self.arbiter).open_channel(worker.index)
        with ours:
            with theirs, slots:
                worker.process = self._start(worker, theirs.fileno(), slots.fileno())
            self._send_start(worker, ours)
            if _receive(ours, 1):  # empty: it died before serving
                worker.serving = True
                log.info("worker %d (pid %d) is serving", worker.index, worker.process.pid)
                self._notify_if_all_serving()
                listening = gevent.spawn(self._listen_to, ours)
                returncode = worker.process.wait()
                listening.kill()
            else:
                returncode = worker.process.wait()
        worker.serving = False
        return returncode

    def _send_start(self, worker: Worker, line: socket.socket) -> None:
        try:
            send_start(line, worker.taken_clients, self.journal.changes())
        except OSError as exc:  # it died at once: a restart starts it without the clients
            log.warning("could not pass worker %d what it starts with: %s", worker.index, exc)
        for client in worker.taken_clients:
            client.sock.close()  # the worker has its own descriptor now
        worker.taken_clients = []

    def _listen_to(self, line: socket.socket) -> None:
        """What a serving worker tells: a runtime change, or that a new pooler took the
        listening sockets (SHOW FDS)."""
        while True:
            news = _receive(line, _MAX_RECORD)
            if not news:
                return
            if news[:1] == CHANGE:
                self._record(news[1:])
            elif news == HANDED_OVER and self._unix_file is not None:
                log.info("the listening sockets were handed over to a new process")
                self._unix_file = None  # the socket file is the new pooler's now
                self._signal_serving(LISTENERS_HANDED_OVER)

    def _record(self, data: bytes) -> None:
        try:
            self.journal.record(Change.decode(data))
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("unreadable runtime change from a worker: %s", exc)

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
        if not self.all_serving.is_set() and all(worker.serving for worker in self.workers):
            self.all_serving.set()
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
            self.journal.reloaded()
        elif signum in _SIGNALLED_CHANGES:
            self.journal.record(Change(KEPT, _SIGNALLED_CHANGES[signum], "pgbouncer", True))
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

    def _signal_serving(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.serving:
                worker.process.send_signal(signum)

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
