"""A client connection's life: startup packet, admission, authentication, welcome, relay.

One greenlet per client runs :meth:`ClientSession.run` (PgBouncer's client.c); a logged-in
client that waits idle sleeps without one, and :meth:`ClientSession.run_woken` goes on in
another.  The password exchanges live in :mod:`bouncer.session.client_auth`; the traffic
after login in :mod:`bouncer.session.relay`.
"""
from __future__ import annotations

import logging
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Set, Tuple, cast

import gevent

from bouncer import VERSION_STRING
from bouncer.config.sections import ADMIN_DATABASE
from bouncer.errors import ClientError, ProtocolError
from bouncer.plugin.client import ClientInfo
from bouncer.net.stream import ConnectionLost, recv_some, send_all
from bouncer.proto import backend, sqlstate
from bouncer.proto.cancel_key import CancelKey, new_key
from bouncer.proto.client_engine import ClientEngine
from bouncer.proto.constants import PROTOCOL_3_0, TXN_IDLE
from bouncer.proto.framing import CancelRequest, GSSENCRequest, SSLRequest, StartupMessage
from bouncer.proto.startup_options import OptionsError, parse_options
from bouncer.admin.console import serve_admin
from bouncer.session import client_auth, next_socket_id, relay, replication
from bouncer.session.handover import HandedOver, TakenOver
from bouncer.session.startup_checks import check_startup_names, quoted
from bouncer.session.varcache import tracked_names

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.pool.pool import Pool
    from bouncer.pool.registry import DatabaseState

log = logging.getLogger(__name__)

#: Startup parameters every pooler accepts without tracking them.
_ALWAYS_ACCEPTED = {"user", "database", "replication"}
#: The same bytes for every login.
_AUTHENTICATION_OK = backend.authentication(0)
_READY_IDLE = backend.ready_for_query(TXN_IDLE)


class LoginTimeout(ClientError):
    """client_login_timeout expired.  A class for gevent.Timeout to raise: the error is made
    only when a login does time out, not for every login."""

    def __init__(self) -> None:
        super().__init__("client_login_timeout", sqlstate.PROTOCOL_VIOLATION)


class ClientSession:
    """State of one client connection (shown by SHOW CLIENTS)."""

    # Slots, because there is one of these per client and more than 30 attributes: past
    # that, Python gives each instance a dict of its own (about 1.5 KB of an idle client).
    __slots__ = ("app", "id", "sock", "engine", "unix", "addr", "port", "_local", "user",
                 "database", "params", "vars", "application_name", "tls",
                 "peer_cert", "peer_pid", "peer_uid", "connect_time", "request_time", "db",
                 "pool", "server", "link", "logged_in", "is_admin", "wait_time_us",
                 "cancel_key", "close_reason", "closing_logged", "greenlet", "credentials",
                 "scram_keys", "replication", "startup_options", "handed_over", "_info",
                 "__weakref__")  # (auth_cert keeps a client's user map in a WeakKeyDictionary)

    def __init__(self, app: "App", sock: socket.socket, addr: Any, unix: bool) -> None:
        self.app = app
        self.id = next_socket_id()
        #: A socket.socket; after an SSLRequest, what the TLS policy's wrap_socket() returned
        #: (a TlsSocket from the built-in one).
        self.sock: Any = sock
        #: Everything the client sent and bouncer has not consumed yet, from the startup
        #: packet to Terminate.
        self.engine = ClientEngine(app.config.max_packet_size)
        self.unix = unix
        self.addr: str
        self.port: int
        self.addr, self.port = ("unix", 0) if unix else (addr[0], addr[1])
        self._local: Optional[Tuple[str, int]] = ("unix", 0) if unix else None
        self.user = "(nouser)"
        self.database = "(nodb)"
        self.params: Dict[str, str] = {}
        #: Tracked parameters this client expects servers to have (name as servers spell it).
        self.vars: Dict[str, str] = {}
        self.application_name = ""
        self.tls = ""
        self.peer_cert: Any = None
        self.peer_pid, self.peer_uid = peer_credentials(sock) if unix else (0, None)
        self.connect_time = time.time()
        self.request_time = self.connect_time
        self.db: Optional["DatabaseState"] = None
        self.pool: Optional["Pool"] = None
        self.server: Any = None
        self.link: Any = None
        self.logged_in = False
        self.is_admin = False
        self.wait_time_us = 0
        self.cancel_key: CancelKey = new_key(app.config.peer_id)
        self.close_reason = ""
        self.closing_logged = False
        #: The greenlet serving the client; None while it sleeps (see bouncer.session.relay).
        self.greenlet: Any = gevent.getcurrent()
        self.credentials: Any = None
        self.scram_keys: Optional[tuple] = None
        #: The ``replication`` startup value: replication.NONE, LOGICAL or PHYSICAL.
        self.replication = replication.NONE
        #: A replication client's ``options`` startup parameter, for its own server.
        self.startup_options: Optional[str] = None
        #: The new process of an online restart serves it now (nothing more is said here).
        self.handed_over = False
        self._info: Optional[ClientInfo] = None

    @property
    def local_addr(self) -> str:
        return self._local_address()[0]

    @property
    def local_port(self) -> int:
        return self._local_address()[1]

    def _local_address(self) -> Tuple[str, int]:
        """The address the client connected to, asked of the socket the first time it is
        shown (SHOW CLIENTS): a login does without it, and a connection storm counts every
        system call."""
        if self._local is None:
            local = self.sock.getsockname()
            self._local = (local[0], local[1])
        return self._local

    @property
    def prefix(self) -> str:
        """``C-0x...: db/user@addr:port``, PgBouncer's client log prefix."""
        if self.unix:
            where = f"unix({self.peer_uid})" if self.peer_uid is not None else "unix"
        else:
            where = self._tcp_address()
        return f"C-{id(self):#x}: {self.database}/{self.user}@{where}"

    @property
    def info(self) -> ClientInfo:
        """What plugins' hooks are told of this client: made at the first hook, once the
        startup packet is read, and the same for every hook of the login after it."""
        if self._info is None:
            self._info = ClientInfo.of(self)
        return self._info

    # -- the whole life ------------------------------------------------------------------------

    def run(self) -> None:
        """Serve this client until it leaves; never raises (the greenlet's top level)."""
        self._serve(self._login_and_serve)

    def run_handed_over(self, state: HandedOver) -> None:
        """Serve a client the old process logged in (online restart); never raises."""
        self._serve(self._resume, state)

    def run_woken(self, body: Callable[[int], bool], source: int) -> None:
        """Serve a client that slept again, in the greenlet that woke it; never raises."""
        self._serve(body, source)

    def _login_and_serve(self) -> bool:
        if not self._login():
            return False
        if self.is_admin:
            serve_admin(self)
            return False
        return relay.serve(self)

    def _serve(self, body: Callable[..., bool], *args: Any) -> None:
        """Run *body*, which says whether the client sleeps; clean up unless it does."""
        asleep = False
        try:
            asleep = body(*args)
        except TakenOver:
            pass  # the new process serves the client: _cleanup says so, the client hears nothing
        except ClientError as err:
            self.fail(err)
        except ProtocolError as err:
            self.fail(ClientError(str(err), sqlstate.PROTOCOL_VIOLATION))
        except ConnectionLost as err:
            self.close_reason = self.close_reason or f"client unexpected eof ({err})"
        except gevent.GreenletExit:
            self.close_reason = self.close_reason or "client killed"
        except Exception:  # a bug: this client ends with an error, the daemon lives on
            log.exception("%s internal error", self.prefix)
            self.fail(ClientError("bouncer internal error (see its log)", sqlstate.INTERNAL_ERROR))
        finally:
            if not asleep:
                self._cleanup()

    def fail(self, err: ClientError) -> None:
        """Send *err* to the client (best effort) and remember it as the close reason.

        Runs in the client's own greenlet; an error is never written into the middle of a
        message the client is receiving (the connection just closes then).
        """
        if isinstance(err, client_auth.LoginRefused) or not self.close_reason:
            self.close_reason = err.log_reason
        if err.severity == "FATAL":
            self._log_closing()  # before the error goes out, as PgBouncer logs it
        if self.app.config.log_pooler_errors:  # PgBouncer's switch for exactly this line
            level = logging.WARNING if not self.logged_in else logging.INFO
            log.log(level, "%s pooler error: %s", self.prefix, self.close_reason)
            if err.detail:
                log.log(level, "%s %s", self.prefix, err.detail)
        if self.link is not None and not self.link.client_at_boundary:
            return
        try:
            send_all(self.sock, backend.error_response(err.severity, err.sqlstate, err.message,
                                                       err.detail, err.hint))
        except ConnectionLost:
            pass  # the client is gone; the reason is logged above

    def end(self, err: ClientError) -> None:
        """End this session from another greenlet (KILL, a timeout, shutdown): the client's
        own greenlet stops where it waits and sends *err* itself."""
        if self.link is not None and self.link.parked:
            return  # being handed over: not a word to the client from here, the new process has it
        self.close_reason = err.log_reason
        self._throw(err)

    def end_handed_over(self) -> None:
        """The new process serves this client now: its greenlet (parked by
        :func:`handover.hand_over`) ends without a word to the client."""
        self.handed_over = True
        self._throw(TakenOver())

    def _throw(self, exc: Exception) -> None:
        """Raise *exc* in the client's greenlet where it waits, as ``kill(block=False)``."""
        greenlet = self.greenlet
        if greenlet is gevent.getcurrent():
            return
        if self.link is not None:  # it knows which greenlet serves the client (maybe none)
            self.link.throw(exc)
        else:
            gevent.get_hub().loop.run_callback(self._throw_due, greenlet, exc)

    def _throw_due(self, greenlet: Any, exc: Exception) -> None:
        """In the hub, when *exc* is due: only if *greenlet* still serves this client.  It is
        a spare one (:mod:`bouncer.net.greenlets`): by now the session may be over and the
        greenlet parked for the next one, as a finished Greenlet would ignore its kill."""
        if greenlet is self.greenlet and self in self.app.clients:
            greenlet.throw(exc)

    def _cleanup(self) -> None:
        relay.unlink_on_exit(self)
        if self.pool is not None:
            self.pool.clients.discard(self)
        self.app.forget_client(self)
        if self.handed_over:
            log.info("%s handed over to the new process (online restart)", self.prefix)
        else:
            self._log_closing()
        try:
            self.sock.close()
        except OSError:
            pass  # already closed by the peer

    def _log_closing(self) -> None:
        """PgBouncer's ``closing because`` line, once; refused logins get it too: operators
        grep it for why a client left."""
        if self.closing_logged or not self.app.config.log_disconnections:
            return
        self.closing_logged = True
        log.info("%s closing because: %s (age=%ds)", self.prefix,
                 self.close_reason or "client close request", time.time() - self.connect_time)

    def _resume(self, state: HandedOver) -> bool:
        """Take the session up where the old process left it: logged in, idle."""
        self.user, self.database = state.user, state.database
        self.vars, self.params = state.vars, state.params
        self.application_name = state.application_name
        self.cancel_key = state.cancel_key
        self.credentials, self.scram_keys = state.credentials, state.scram_keys
        self.connect_time = state.connect_time
        log.info("%s taken over from the old process", self.prefix)
        self._attach_pool()
        self.logged_in = True
        self.app.cancels.register(self)
        return relay.serve(self)

    # -- login -----------------------------------------------------------------------------

    def _login(self) -> bool:
        """Everything up to ReadyForQuery; False when the connection was only a cancel."""
        with gevent.Timeout(self.app.config.client_login_timeout or None, LoginTimeout):
            startup = self._read_startup()
            if startup is None:
                return False
            self._accept_startup(startup)
            if self.app.config.log_connections:
                log.info("%s login attempt: db=%s user=%s tls=%s replication=%s", self.prefix,
                         self.database, self.user, self.tls or "no", self.replication)
            self.app.hooks.check_client_tls(self)
            self.app.hooks.client_admit(self)
            if self.database == ADMIN_DATABASE:
                self.is_admin = True
                client_auth.authenticate_admin(self)
                self.app.admin_stats.client_login_count += 1
                self._send_admin_welcome()
                return True
            client_auth.authenticate(self)
            self._attach_pool()
            self._send_welcome()
        return True

    def _read_startup(self) -> Optional[StartupMessage]:
        """Read startup packets until a StartupMessage; answer SSL/GSS requests on the way."""
        engine = self.engine
        while True:
            packet = engine.next_startup_packet()
            if packet is None:
                engine.feed(recv_some(self.sock))
                continue
            if isinstance(packet, StartupMessage):
                engine.start_authentication()
                return packet
            if isinstance(packet, CancelRequest):
                self.app.cancels.request(packet.pid, packet.secret)
                self.close_reason = "cancel request"
                return None
            if engine.buffered:
                # What follows must come encrypted (or after our 'N'), as PostgreSQL says.
                raise ProtocolError("received unencrypted data after SSL request")
            if isinstance(packet, SSLRequest):
                self.app.start_client_tls(self)
            elif isinstance(packet, GSSENCRequest):
                send_all(self.sock, b"N")

    def _accept_startup(self, startup: StartupMessage) -> None:
        params = dict(startup.params)
        if "user" not in params:
            raise ClientError("no username supplied", sqlstate.PROTOCOL_VIOLATION)
        check_startup_names(params)
        self.user = params["user"]
        self.database = params.get("database") or self.user
        if startup.protocol != PROTOCOL_3_0 or _pq_options(params):
            send_all(self.sock, backend.negotiate_protocol_version(0, _pq_options(params)))
        self.replication = replication.replication_kind(params.get("replication", "no"))
        if self.replication != replication.NONE and "options" in params:
            # Its server is its own: the options go there as they are (PgBouncer does so).
            self.startup_options = params.pop("options")
        self.params = self._check_parameters(params)
        if self.app.config.application_name_add_host:
            named = self.params.get("application_name", "app")
            self.params["application_name"] = f"{named} - {self._address_details()}"
        self.application_name = self.params.get("application_name", "")

    def _address_details(self) -> str:
        """Where the client is, as application_name_add_host appends it (PgBouncer's form)."""
        if self.unix:
            pid = f"({self.peer_pid}@{socket.gethostname()})" if self.peer_pid else ""
            return f"unix{pid}:{self.app.config.listen_port}"
        return self._tcp_address()

    def _tcp_address(self) -> str:
        return f"[{self.addr}]:{self.port}" if ":" in self.addr else f"{self.addr}:{self.port}"

    def _check_parameters(self, params: Dict[str, str]) -> Dict[str, str]:
        """Keep tracked parameters; refuse others unless ignore_startup_parameters lists them."""
        config = self.app.config
        tracked = tracked_names(config.track_extra_parameters)
        ignored = {name.strip().lower() for name in config.ignore_startup_parameters}
        accepted: Dict[str, str] = {}
        for name, value in params.items():
            lower = name.lower()
            if lower in _ALWAYS_ACCEPTED or name.startswith("_pq_."):
                continue
            if lower in tracked:
                accepted[tracked[lower]] = value
            elif lower != "options" and lower not in ignored:
                raise ClientError(f"unsupported startup parameter: {quoted(name)}",
                                  sqlstate.PROTOCOL_VIOLATION)
        if "options" in params:
            self._accept_options(params["options"], tracked, ignored, accepted)
        return accepted

    def _accept_options(self, options: str, tracked: Mapping[str, str], ignored: Set[str],
                        accepted: Dict[str, str]) -> None:
        """``-c name=value`` settings of ``options``: tracked ones as if sent on their own,
        ignored ones (or all unknown ones, when ``options`` itself is ignored) dropped, as
        PgBouncer 1.20+ does."""
        try:
            settings = parse_options(options)
        except OptionsError as exc:
            raise ClientError(str(exc), sqlstate.PROTOCOL_VIOLATION) from None
        for name, value in settings:
            lower = name.lower()
            if lower in tracked:
                accepted[tracked[lower]] = value
            elif lower not in ignored and "options" not in ignored:
                log.warning("%s unsupported startup parameter in options: %s=%s", self.prefix,
                            name, value)
                raise ClientError(f"unsupported startup parameter in options: {name[:64]}",
                                  sqlstate.PROTOCOL_VIOLATION)

    def _attach_pool(self) -> None:
        db = self.app.registry.find_database(self.database)
        if db is None:
            raise ClientError(
                f"no such database: {self.database}", sqlstate.INVALID_CATALOG_NAME,
                detail="bouncer's [databases] section has no such entry and no * entry",
                hint="connect to a database it lists (SHOW DATABASES on the admin console), or "
                     "add the database to [databases] and RELOAD")
        if db.refuses_logins:
            raise ClientError(
                f'database "{self.database}" is disabled', sqlstate.CONNECTION_FAILURE,
                hint=f"an admin ran DISABLE {self.database} (or its [databases] line was "
                     f"removed); ENABLE {self.database} on the admin console lets clients in")
        if not self.app.admits_login(self.unix):
            raise ClientError("pooler is shutting down", sqlstate.CANNOT_CONNECT_NOW,
                              hint="connect to the pooler that replaces this one")
        self.db = db
        user = db.definition.user or self.user
        self.pool = self.app.registry.pool(db, user)
        self.pool.clients.add(self)
        if not db.definition.user:
            # Servers of this pool log in as this user: with its secret, and with SCRAM keys
            # when only a SCRAM secret is known (passthrough).
            self.pool.server_credentials = self.credentials
            if self.scram_keys is not None:
                self.pool.scram_keys = self.scram_keys
        db.stats.client_login_count += 1

    def _send_welcome(self) -> None:
        """AuthenticationOk, the server's parameters (with the client's own), key, ReadyForQuery."""
        pool = cast("Pool", self.pool)  # (admitted)
        if self.replication != replication.NONE:
            welcome = replication.open_server(self).params
        else:
            if pool.welcome_params is None:
                relay.fetch_welcome_params(self)
            welcome = cast("Dict[str, str]", pool.welcome_params)  # set by the line above
        tracked = tracked_names(self.app.config.track_extra_parameters).values()
        params = dict(welcome)
        params.update(self.params)
        self.vars = {name: params[name] for name in tracked if name in params}
        self._send_welcome_messages(params)
        self.app.cancels.register(self)

    def _send_admin_welcome(self) -> None:
        params = {"server_version": VERSION_STRING.split()[1], "client_encoding": "UTF8",
                  "server_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "UTC",
                  "standard_conforming_strings": "on", "integer_datetimes": "on",
                  "application_name": self.application_name}
        self._send_welcome_messages(params)

    def _send_welcome_messages(self, params: Dict[str, str]) -> None:
        """AuthenticationOk, ParameterStatus, BackendKeyData, login_notify_message as a NOTICE
        (where PgBouncer puts it), ReadyForQuery: in one write."""
        parts = [_AUTHENTICATION_OK]
        parts += [backend.parameter_status(k, v) for k, v in params.items()]
        parts.append(backend.backend_key_data(*self.cancel_key))
        message = self.app.config.login_notify_message
        if message:
            parts.append(backend.notice_response("NOTICE", sqlstate.SUCCESSFUL_COMPLETION,
                                                 message))
        parts.append(_READY_IDLE)
        send_all(self.sock, b"".join(parts))
        self.logged_in = True

    def tell_queued(self) -> None:
        """query_wait_notify: this logged-in client has waited that long for a server; tell it
        in PgBouncer's words.  Called in its own greenlet, where it waits: no other message
        to it is under way."""
        if not self.logged_in:
            return
        send_all(self.sock, backend.notice_response(
            "NOTICE", sqlstate.SUCCESSFUL_COMPLETION,
            "No server connection available in postgres backend, client being queued"))


def _pq_options(params: Dict[str, str]) -> list:
    return [name for name in params if name.startswith("_pq_.")]


def peer_credentials(sock: socket.socket) -> Tuple[int, Optional[int]]:
    """(pid, uid) of a unix-socket peer (SO_PEERCRED); (0, None) where unavailable."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except (OSError, AttributeError):
        return 0, None
    return (int.from_bytes(creds[0:4], sys.byteorder), int.from_bytes(creds[4:8], sys.byteorder))
