"""The App: owns the configuration, plugin hooks, registry, listeners and janitor; starts,
reloads, pauses and shuts down the pooler."""
from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import time
from typing import Any, List, NamedTuple, Optional, Set, Tuple

import gevent
from gevent.event import Event

from bouncer import VERSION_STRING
from bouncer.admin.worker_channel import WorkerChannel
from bouncer.auth.store import UserStore
from bouncer.auth.userlist import load_userlist
from bouncer.config import Config, load_config, unreloadable_changes
from bouncer.config.validate import validate
from bouncer.errors import ConfigError
from bouncer.log import LogSetup
from bouncer.net.dns import Resolver
from bouncer.net.greenlets import spawn
from bouncer.net.listener import Listeners
from bouncer.net.stream import ConnectionLost, send_all
from bouncer.net.tls import TlsSettings, describe_connection, servers_need_reconnect
from bouncer.plugin.context import PluginContext
from bouncer.plugin.hooks import PluginHooks
from bouncer.plugin.manager import make_plugin_manager
from bouncer.pool.janitor import Janitor
from bouncer.pool.registry import Registry
from bouncer.pool.stats import Counters, StatsPeriod
from bouncer.session.cancel import CancelRegistry
from bouncer.session.client import ClientSession
from bouncer.session import handover, number_socket_ids
from bouncer.session.handover import HandedOver
from bouncer.session.server import connect_server
from bouncer.signals import signal_name
from bouncer.slots.client import SlotClient, for_worker as slots_for_worker
from bouncer.slots.client_count import ClientCount
from bouncer.worker import WorkerSpec
from bouncer import fd_limit, operations, pidfile, systemd

log = logging.getLogger(__name__)

#: How often shutdown checks whether what it waits for is done.
SHUTDOWN_POLL = 0.1


def load_and_check(path: str, hooks: Optional[PluginHooks] = None) -> Config:
    """Parse *path* (with the plugins' declared sections) and run every validation (settings,
    cross-field, plugins).

    :raises ConfigError: listing every problem found.
    """
    config = load_config(path, hooks.declared_settings() if hooks is not None else None)
    problems = list(validate(config))
    if hooks is not None:
        problems += hooks.validate_config(config)
    if problems:
        raise ConfigError("; ".join(problems), filename=path)
    return config


class TlsContexts(NamedTuple):
    """The contexts in force; a reload swaps them, so existing client connections are
    untouched (server connections are recycled when the server settings change).

    ``client`` is anything with ``wrap_socket(sock, server_side=True)``: the built-in policy
    wraps clients with pyOpenSSL so it can explain a rejected certificate in words.
    ``server_settings`` are the ``server_tls_*`` settings ``server`` was built from."""

    client: Optional[Any]
    server: Optional[ssl.SSLContext]
    server_settings: TlsSettings


class App:
    """One pooler process."""

    def __init__(self, config_path: str, logs: LogSetup,
                 worker: Optional[WorkerSpec] = None) -> None:
        self.config_path = config_path
        self.logs = logs
        #: This process's place among the workers (``workers`` above 1), else None.
        self.worker = worker
        #: How the console reaches the other workers (``workers`` above 1), else None.
        self.workers_channel = WorkerChannel(self, worker) if worker is not None else None
        if worker is not None:
            number_socket_ids(worker.index, worker.workers)
        self.config: Config = load_config(config_path)
        self._apply_logging(self.config)
        pm = make_plugin_manager(self.config.plugins, self.config.disable_plugins)
        self.hooks = PluginHooks(pm)
        #: What every hook is given as ``context``: the plugins' stable view of this process.
        self.plugin_context = PluginContext(self)
        self.config = self._load_checked()
        for warning in self.config.warnings:
            log.warning("%s", warning)
        self.user_store = UserStore()
        self._load_users(self.config)
        self.resolver = Resolver(self.config.dns_max_ttl, self.config.dns_nxdomain_ttl)
        #: With workers, the slot channel to the supervisor and the shared client count that
        #: make the limits hold across the workers (bouncer.slots); None in one process.
        self.slots: Optional[SlotClient] = None
        self.client_count: Optional[ClientCount] = None
        if worker is not None:
            self.slots, self.client_count = slots_for_worker(worker)
        self.registry = Registry(lambda: self.config, lambda pool: connect_server(self, pool),
                                 lambda pool: self.hooks.server_connect_limit(self, pool),
                                 on_wait=lambda pool, seconds: self.hooks.client_waited(
                                     pool.database.name, pool.user.name, seconds),
                                 slots=self.slots)
        self.cancels = CancelRegistry(self)
        self.stats_period = StatsPeriod()
        #: The admin console's own counters (its logins and commands), as a database's.
        self.admin_stats = Counters()
        self.clients: Set[ClientSession] = set()
        #: Clients listed in SHOW FDS, parked until SHUTDOWN (or RESUME: no takeover).
        self.handing_over: List[ClientSession] = []
        self.listeners = Listeners(self._handle_connection)
        self.janitor = Janitor(self)
        self.start_time = time.time()
        self.paused = False
        self.suspended = False
        self.shutdown_mode: Optional[str] = None
        #: Set once the supervisor passed on a console's SHUTDOWN (workers above 1): it has
        #: closed its copies of the listening sockets and restarts no worker.
        self.supervisor_stopped = Event()
        self.tls = self._build_tls(self.config)
        self.admin_commands = self.hooks.admin_commands(self)

    # -- start -------------------------------------------------------------------------------

    def start(self, inherited_sockets: Optional[List[socket.socket]] = None) -> None:
        """Listen (or serve *inherited_sockets*, already adopted by an online restart)."""
        config = self.config
        log.info("process up: %s, gevent %s, tls: %s", VERSION_STRING, gevent.__version__,
                 ssl.OPENSSL_VERSION)
        fd_limit.apply(config, len(self.user_store.names()))
        self.hooks.startup(self)
        if not inherited_sockets:
            self.listeners.open(config.listen_addr, config.listen_port, config.unix_socket_dir,
                                config.unix_socket_mode, config.listen_backlog,
                                config.so_reuseport, config.unix_socket_group)
        self.listeners.defer_accept(config.tcp_defer_accept)
        if self.workers_channel is not None:
            self.workers_channel.start()
        if self.slots is not None:
            self.slots.start(self)
        self.janitor.start()
        systemd.notify("READY=1", f"STATUS=accepting connections on port {config.listen_port}")

    def _load_checked(self) -> Config:
        config = load_and_check(self.config_path, self.hooks)
        return self.worker.apply(config) if self.worker is not None else config

    def _apply_logging(self, config: Config) -> None:
        self.logs.apply(config.logfile, config.syslog, config.syslog_ident,
                        config.syslog_facility, config.verbose)

    def _load_users(self, config: Config) -> None:
        if config.auth_file:
            entries, warnings = load_userlist(config.auth_file)
            for warning in warnings:
                log.warning("%s", warning)
            self.user_store.load_userlist(entries)
        self.user_store.set_configured_users(config.users)

    # -- clients -----------------------------------------------------------------------------

    def _handle_connection(self, sock: socket.socket, address: Any) -> None:
        """Serve a new connection; its session closes the socket (the listener does not)."""
        unix = sock.family == socket.AF_UNIX
        try:
            if not unix:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.tune_socket(sock)
            client = ClientSession(self, sock, address, unix)
        except Exception:  # the peer has gone already (setsockopt), or a bug
            sock.close()
            raise
        self.clients.add(client)
        client.run()

    def hand_over_listeners(self) -> None:
        """A new process serves our listening sockets too (SHOW FDS): the unix socket file
        is its to remove now, not ours nor our supervisor's."""
        self.listeners.handed_over()
        if self.worker is not None:
            self.worker.listeners_handed_over()

    def serve_handed_over(self, clients: List[Tuple[socket.socket, HandedOver]]) -> None:
        """Serve the clients an online restart took over, each in its own greenlet."""
        for sock, state in clients:
            spawn(self._serve_handed_over, sock, state)

    def _serve_handed_over(self, sock: socket.socket, state: HandedOver) -> None:
        unix = sock.family == socket.AF_UNIX
        client = ClientSession(self, sock, (state.addr, state.port), unix)
        self.clients.add(client)
        client.run_handed_over(state)

    def forget_client(self, client: ClientSession) -> None:
        self.clients.discard(client)
        self.cancels.forget(client)
        if self.client_count is not None:
            self.client_count.leave(client)

    def tune_socket(self, sock: socket.socket) -> None:
        """TCP keepalive settings, as PgBouncer applies them to both sides."""
        config = self.config
        if config.tcp_socket_buffer:
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, config.tcp_socket_buffer)
        if not config.tcp_keepalive:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", config.tcp_keepidle),
                            ("TCP_KEEPINTVL", config.tcp_keepintvl),
                            ("TCP_KEEPCNT", config.tcp_keepcnt)):
            if value and hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), int(value))
        if config.tcp_user_timeout and hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                            int(config.tcp_user_timeout))  # milliseconds, as the kernel wants

    # -- TLS: contexts come from the TLS policy plugins ------------------------------------

    def _build_tls(self, config: Config) -> TlsContexts:
        """:raises ConfigError: TLS cannot be set up with *config* (every problem listed)."""
        client, server = self.hooks.tls_contexts(self, config)
        return TlsContexts(client, server, TlsSettings.from_config(config, "server"))

    def _setup_tls(self, config: Config) -> TlsContexts:
        """:meth:`_build_tls` in a running pooler, each problem logged as PgBouncer logs it."""
        try:
            return self._build_tls(config)
        except ConfigError as err:
            for problem in getattr(err, "problems", (err,)):
                log.error("TLS setup failed: %s", problem)
            raise

    def _use_tls(self, tls: TlsContexts) -> None:
        """Put *tls* in force.  Servers opened under other server TLS settings are recycled,
        as PgBouncer does, so that old (possibly weaker) settings do not live on in pooled
        connections; their cached login failure goes too: it was a failure of the old
        settings, and the next client should try the new ones at once."""
        old, self.tls = self.tls, tls
        if servers_need_reconnect(old.server_settings, tls.server_settings):
            for pool in self.registry.pools():
                pool.recycle("database configuration changed")

    def start_client_tls(self, client: ClientSession) -> None:
        """Answer an SSLRequest: ``N`` without a client context, else ``S`` and the handshake."""
        context = self.tls.client
        if context is None or client.tls:
            send_all(client.sock, b"N")
            return
        send_all(client.sock, b"S")
        try:
            client.sock = context.wrap_socket(client.sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.warning("%s TLS handshake error: %s", client.prefix, exc)
            raise ConnectionLost(f"TLS handshake error: {exc}") from exc
        client.tls = describe_connection(client.sock)
        client.peer_cert = client.sock.getpeercert(binary_form=True)

    def server_tls_context(self) -> Optional[ssl.SSLContext]:
        return self.tls.server

    # -- reload ------------------------------------------------------------------------------

    def reload(self) -> List[str]:
        """Re-read the ini and auth_file; a bad new config is refused and the old one kept.

        :return: the problems found (empty when the reload was applied).
        """
        systemd.notify("RELOADING=1")
        try:
            new, tls = self._read_for_reload()
        except (ConfigError, OSError, ssl.SSLError) as exc:
            log.error("config reload failed, keeping the old configuration: %s", exc)
            systemd.notify("READY=1")
            return [str(exc)]
        self._load_users(new)
        self.registry.overrides.clear()  # RELOAD restores the ini's limits (SET USER/POOL undone)
        self.apply_settings(new, tls)
        systemd.notify("READY=1")
        return []

    def _read_for_reload(self) -> Tuple[Config, TlsContexts]:
        """The new configuration and its TLS contexts, all checked before anything changes.

        :raises ConfigError, OSError, ssl.SSLError: the files cannot be used.
        """
        new = self._load_checked()
        if new.auth_file:
            load_userlist(new.auth_file)
        return new, self._setup_tls(new)

    def apply_tls_setting(self, new: Config) -> bool:
        """SET of a TLS setting, as PgBouncer does it: the value is taken even when TLS cannot
        be set up with it (a key and its certificate are SET one after the other), and the
        contexts in force then stay until a SET or RELOAD makes a usable configuration.

        :return: whether contexts built from *new* are now in force.
        """
        try:
            tls: Optional[TlsContexts] = self._setup_tls(new)
        except ConfigError:
            tls = None
        self.apply_settings(new, tls)
        return tls is not None

    def apply_settings(self, new: Config, tls: Optional[TlsContexts] = None) -> None:
        """Put a new configuration in force (RELOAD, or SET on the admin console).

        :param tls: contexts built from *new* (RELOAD builds them first so a bad certificate
            refuses the reload); without them the contexts in force stay.
        """
        old, self.config = self.config, new
        self._warn_unreloadable(old, new)
        self._apply_logging(new)
        self.logs.reopen()
        self.registry.apply_config(new)
        self.resolver.max_ttl, self.resolver.nxdomain_ttl = new.dns_max_ttl, new.dns_nxdomain_ttl
        if new.tcp_defer_accept != old.tcp_defer_accept:
            self.listeners.defer_accept(new.tcp_defer_accept)
        if tls is not None:
            self._use_tls(tls)
        self.admin_commands = self.hooks.admin_commands(self)
        self.hooks.reload(self, old, new)

    @staticmethod
    def _warn_unreloadable(old: Config, new: Config) -> None:
        for name in unreloadable_changes(old, new):
            log.warning("%s cannot be changed by a reload; restart to apply it", name)

    # -- pause and shutdown ------------------------------------------------------------------

    def shutdown(self, mode: str) -> None:
        """A shutdown signal: stop listening, wait as *mode* says, then exit.

        ``immediate``: exit now; ``wait_for_servers``: until no server is linked to a client
        (SIGINT); ``wait_for_clients``: until every client has gone (SIGTERM).  A second
        shutdown request while waiting exits at once.
        """
        if self.shutdown_mode is not None and mode != "immediate":
            mode = "immediate"
        self.begin_shutdown(mode)
        self.finish_shutdown()

    def begin_shutdown(self, mode: str) -> bool:
        """Stop accepting clients and set *mode*'s rules for those served (see
        :meth:`shutdown`); then :meth:`finish_shutdown` waits and exits.

        :return: False when a shutdown of *mode* is under way already (nothing changes: the
            console's SHUTDOWN given twice is not a second signal, as in PgBouncer).
        """
        if self.shutdown_mode == mode:
            return False
        log.info("shutting down (%s)", mode.replace("_", " "))
        self.shutdown_mode = mode
        handover.end_handed_over(self)
        systemd.notify("STOPPING=1")
        self.listeners.close(keep_unix=mode != "immediate")
        if mode == "wait_for_servers":
            operations.refuse_new_transactions(self, "server shutting down")
        elif mode == "wait_for_clients":
            for database in self.registry.databases.values():
                database.resumed.set()  # a suspended process (online restart) serves its clients
        return True

    def finish_shutdown(self) -> None:
        """Wait as the mode of the shutdown begun says, then exit; at once when the mode
        becomes ``immediate`` meanwhile."""
        while self.shutdown_mode != "immediate" and not self._shutdown_done():
            gevent.sleep(SHUTDOWN_POLL)
        if self.shutdown_mode != "immediate":  # PgBouncer's lines
            log.info("%s connections dropped, exiting",
                     "server" if self.shutdown_mode == "wait_for_servers" else "client")
        self._exit()

    def join_pooler_shutdown(self, mode: str) -> None:
        """The supervisor passed on a console's SHUTDOWN (:data:`~bouncer.signals.
        POOLER_SHUTDOWN_SIGNALS`): it has stopped.  The console asked this worker to begin the
        shutdown already, unless it could not reach it."""
        began = self.begin_shutdown(mode)
        self.supervisor_stopped.set()
        if began:
            self.finish_shutdown()

    def admits_login(self, unix: bool) -> bool:
        """Whether a client that logs in now may stay: yes unless a shutdown is under way.
        A shutdown that waits for the clients lets TCP clients finish their login too: the
        TCP listeners are closed, so each was accepted before, or from a listener's queue as
        it closed, and a rolling restart loses none of them (PgBouncer refuses them).  The
        unix socket stays open for the admin console only."""
        if self.shutdown_mode is None:
            return True
        return self.shutdown_mode == "wait_for_clients" and not unix

    def _shutdown_done(self) -> bool:
        if self.shutdown_mode == "wait_for_clients":  # a TCP client logging in is waited for
            return not any(not client.is_admin and (client.logged_in or not client.unix)
                           for client in self.clients)
        return not any(pool.active for pool in self.registry.pools())

    def _exit(self) -> None:
        self.listeners.close()
        if self.workers_channel is not None:
            self.workers_channel.close()
        self.janitor.stop()
        self.hooks.shutdown(self)
        for pool in self.registry.pools():
            for server in pool.all_servers():
                server.close("shutting down")
        pidfile.remove(self.config.pidfile)
        log.info("exiting")
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)

    def pause(self, database: Optional[str]) -> None:
        operations.pause(self, database)

    def resume(self, database: Optional[str]) -> None:
        operations.resume(self, database)

    def signal_supervisor(self, signum: int) -> bool:
        """With workers, send *signum* to the supervisor, which passes SIGUSR2 (the RESUME
        after a suspending console user left) and :data:`~bouncer.signals.
        POOLER_SHUTDOWN_SIGNALS` on to every worker, this one included.  The console's other
        commands reach the workers over :attr:`workers_channel`.

        :return: False in a pooler of one process (the caller acts itself).
        """
        if self.worker is None:
            return False
        if self.worker.supervisor_alive():
            os.kill(self.worker.supervisor_pid, signum)
        else:
            log.error("the supervisor (pid %d) is gone: %s not passed on",
                      self.worker.supervisor_pid, signal_name(signum))
        return True

    def notify_status(self, line: str) -> None:
        systemd.notify(f"STATUS={line}")
