"""Logging in to a PostgreSQL server: startup packet, TLS, and answering its auth request.

Supports trust, cleartext, md5 and SCRAM-SHA-256.  With SCRAM, a userlist/auth_query secret in
SCRAM form cannot produce a password, so the keys recovered from the client's own SCRAM exchange
are used instead (passthrough), exactly as PgBouncer does.
"""
from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Dict, Optional

from bouncer.auth.md5 import is_md5_secret, md5_response
from bouncer.auth.scram import ScramClient, ScramError, parse_scram_secret
from bouncer.errors import ClientError
from bouncer.net.stream import read_exactly, read_message, send_all
from bouncer.net.tls import describe_connection
from bouncer.proto import backend, frontend, sqlstate
from bouncer.proto.constants import AuthCode, Backend

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.config.model import DatabaseDef
    from bouncer.pool.pool import Pool
    from bouncer.session.server import ServerConnection

log = logging.getLogger(__name__)


class ServerLoginError(ClientError):
    """The server refused our login; its message and SQLSTATE go to the client as they are.

    Unlike a connection that fails, a refusal fails the clients waiting for the pool at once
    (PgBouncer's kill_pool_logins), unless the server is only starting up or shutting down.
    """

    @property
    def fails_waiters(self) -> bool:
        return self.sqlstate != sqlstate.CANNOT_CONNECT_NOW


#: PgBouncer's words when the stored secret cannot answer the server's method.
WRONG_PASSWORD_TYPE = "server login failed: wrong password type"
_PLAIN_PASSWORD_HINT = ("put the user's plain password in auth_file (for a forced user, in "
                        "password= of its [databases] line)")


def _wrong_password_type(detail: str, hint: str = _PLAIN_PASSWORD_HINT) -> ServerLoginError:
    return ServerLoginError(WRONG_PASSWORD_TYPE, sqlstate.INVALID_PASSWORD, "FATAL",
                            detail=detail, hint=hint)


def login(app: "App", server: "ServerConnection", pool: "Pool",
          startup_params: Optional[Dict[str, str]] = None) -> None:
    """Run the whole login on a connected socket; fills ``server.params`` and ``cancel_key``.

    :param startup_params: sent besides the database's own (a replication client's).
    """
    _maybe_start_tls(app, server)
    user, secret = _server_identity(app, pool)
    params = {"user": user, "database": pool.database.definition.dbname or pool.database.name}
    params.update(pool.database.definition.startup_params)
    params.update(startup_params or {})
    send_all(server.sock, frontend.startup_message(params))
    exchange = _AuthExchange(server, pool, user, secret)
    while True:
        kind, payload = read_message(server.sock, server.engine)
        if kind == Backend.AUTHENTICATION:
            exchange.answer(*backend.parse_authentication(payload))
        elif kind == Backend.PARAMETER_STATUS:
            name, value = backend.parse_parameter_status(payload)
            server.params[name] = value
        elif kind == Backend.BACKEND_KEY_DATA:
            server.cancel_key = backend.parse_backend_key_data(payload)
        elif kind == Backend.ERROR_RESPONSE:
            fields = backend.parse_error_fields(payload)
            log.warning("%s server login failed: %s %s", server.prefix, fields.get("S", ""),
                        fields.get("M", ""))
            # A hostile or broken server may leave out the SQLSTATE or send an empty one.
            raise ServerLoginError(fields.get("M", "server login failed"),
                                   fields.get("C") or sqlstate.CONNECTION_FAILURE, "FATAL")
        elif kind == Backend.READY_FOR_QUERY:
            return


def _server_identity(app: "App", pool: "Pool"):
    """(user, secret) to log in with: the database's forced user, or the client's user."""
    definition = pool.database.definition
    if definition.user and pool.user.name == definition.user:
        return definition.user, forced_user_secret(app, definition)
    credentials = pool.server_credentials
    return pool.user.name, (credentials.secret if credentials is not None else None)


def forced_user_secret(app: "App", definition: "DatabaseDef") -> Optional[str]:
    """The secret a database's forced user logs in with: its ``password=``, else (as in
    PgBouncer) its auth_file secret; None when neither is known."""
    if definition.password is not None:
        return definition.password
    if not definition.user:  # no forced user: nobody's secret
        return None
    stored = app.user_store.from_userlist(definition.user)
    return stored.secret if stored is not None else None


class _AuthExchange:
    """Answers one server's authentication requests."""

    def __init__(self, server: "ServerConnection", pool: "Pool", user: str,
                 secret: Optional[str]) -> None:
        self.server = server
        self.pool = pool
        self.user = user
        self.secret = secret
        self.scram: Optional[ScramClient] = None

    def answer(self, code: int, data: bytes) -> None:
        if self.server.auth_request is None:
            self.server.auth_request = code
        if code == AuthCode.OK:
            return
        if code == AuthCode.CLEARTEXT_PASSWORD:
            self._send(frontend.password_message(self._plain_password("cleartext") + b"\0"))
        elif code == AuthCode.MD5_PASSWORD:
            self._send_md5(data[:4])
        elif code == AuthCode.SASL:
            self._start_scram(data)
        elif code == AuthCode.SASL_CONTINUE and self.scram is not None:
            response = self._scram_step(self.scram.handle_server_first, data)
            self._send(frontend.sasl_response(response))
        elif code == AuthCode.SASL_FINAL and self.scram is not None:
            self._scram_step(self.scram.handle_server_final, data)
        else:
            raise ServerLoginError(
                f"server requested unsupported authentication method {code}",
                sqlstate.FEATURE_NOT_SUPPORTED, "FATAL",
                hint="let the server's pg_hba.conf ask this user for scram-sha-256, md5, "
                     "password or trust")

    def _send(self, message: bytes) -> None:
        send_all(self.server.sock, message)

    def _asks(self, method: str) -> str:
        """``the server asks for <method> for user "x" and bouncer knows <what it has>``."""
        if self.secret is None:
            known = "no password"
        elif parse_scram_secret(self.secret):
            known = "only a SCRAM secret"
        else:
            known = "only an md5 secret" if is_md5_secret(self.secret) else "the password"
        return f'the server asks for {method} for user "{self.user}" and bouncer knows {known}'

    def _plain_password(self, method: str) -> bytes:
        if self.secret is None or is_md5_secret(self.secret) or parse_scram_secret(self.secret):
            raise _wrong_password_type(self._asks(f"a {method} password"))
        return self.secret.encode()

    def _send_md5(self, salt: bytes) -> None:
        if self.secret is None or parse_scram_secret(self.secret):
            raise _wrong_password_type(self._asks("md5"))
        response = md5_response(self.secret, self.user, salt)
        self._send(frontend.password_message(response.encode() + b"\0"))

    def _start_scram(self, data: bytes) -> None:
        mechanisms = [m.decode() for m in data.split(b"\0") if m]
        if "SCRAM-SHA-256" not in mechanisms:
            raise ServerLoginError(
                "server login failed: none of the server's SASL authentication mechanisms are "
                "supported", sqlstate.FEATURE_NOT_SUPPORTED, "FATAL",
                detail=f"the server offers {', '.join(mechanisms) or 'none'}; bouncer speaks "
                       "SCRAM-SHA-256")
        self.scram = self._scram_client()
        self._send(frontend.sasl_initial_response("SCRAM-SHA-256", self.scram.client_first()))

    def _scram_client(self) -> ScramClient:
        if self.secret is not None and parse_scram_secret(self.secret) is not None:
            if self.pool.scram_keys is None:
                raise _wrong_password_type(
                    self._asks("SCRAM") + ", which can log in only with the keys of a "
                    "client's own SCRAM login, and none has logged in yet",
                    hint="let a client log in with SCRAM first (auth_type scram-sha-256 or "
                         "md5; never for a forced user), or " + _PLAIN_PASSWORD_HINT)
            client_key, server_key = self.pool.scram_keys
            return ScramClient(client_key=client_key, server_key=server_key)
        if self.secret is None or is_md5_secret(self.secret):
            raise _wrong_password_type(self._asks("SCRAM"))
        return ScramClient(self.secret)

    def _scram_step(self, step, data: bytes) -> bytes:
        try:
            return step(data)
        except ScramError as exc:
            raise ServerLoginError(f"SCRAM exchange with server failed: {exc}",
                                   sqlstate.INVALID_PASSWORD) from exc


def _maybe_start_tls(app: "App", server: "ServerConnection") -> None:
    """Ask for TLS when server_tls_sslmode wants it, and wrap the socket in-band."""
    mode = app.config.server_tls_sslmode
    context = app.server_tls_context()
    if context is None or mode == "disable" or server.addr == "unix":
        return
    send_all(server.sock, frontend.ssl_request())
    answer = read_exactly(server.sock, 1)
    if answer == b"S":
        hostname = server.host if mode == "verify-full" else None
        try:
            server.sock = context.wrap_socket(server.sock, server_hostname=hostname)
        except ssl.SSLCertVerificationError as exc:
            raise _certificate_rejected(server, mode, hostname, exc) from exc
        server.tls = describe_connection(server.sock)
    elif mode in ("require", "verify-ca", "verify-full"):
        raise ServerLoginError(
            f"server refused TLS but server_tls_sslmode={mode} requires it",
            sqlstate.CONNECTION_FAILURE)


def _certificate_rejected(server: "ServerConnection", mode: str, hostname: Optional[str],
                          exc: ssl.SSLCertVerificationError) -> ClientError:
    """The error for a server certificate that fails the check, logged PgBouncer's way.

    A connection failure rather than a :class:`ServerLoginError`: as in PgBouncer, the clients
    waiting for the pool go on waiting (the server may get a good certificate, or the setting
    may be fixed, within their query_wait_timeout); new clients get it as the cached error.
    """
    log.warning("%s TLS handshake error: certificate verify failed: %s", server.prefix,
                exc.verify_message)
    checked = "server_tls_ca_file" + (" and the host name" if hostname else "")
    return ClientError(
        f"server certificate rejected ({exc.verify_message}): server_tls_sslmode={mode} "
        f"checks it against {checked}; fix the server's certificate or the setting",
        sqlstate.CONNECTION_FAILURE)
