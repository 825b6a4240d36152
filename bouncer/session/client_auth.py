"""Authenticating a client: choosing the method (hooks), fetching credentials (hooks), and
running the password exchange (trust, plain, md5, SCRAM-SHA-256), or asking for a cleartext
password that a plugin checks (ldap, pam: bouncer_password_checkers).

What the client is told is only what PostgreSQL would say; the log says why.
"""
from __future__ import annotations

import functools
import hmac
import logging
import os
from typing import TYPE_CHECKING, Optional, Tuple, cast

from bouncer.auth.md5 import is_md5_secret, md5_secret, verify_md5_response
from bouncer.auth.scram import (ScramAuthFailed, ScramError, ScramSecret, ScramServer,
                                 make_scram_secret, parse_scram_secret)
from bouncer.auth.store import Credentials
from bouncer.errors import AuthFailed, ClientError
from bouncer.net.stream import read_message, send_all
from bouncer.proto import backend, frontend, sqlstate
from bouncer.proto.constants import AuthCode, Frontend
from bouncer.randomness import random_bytes
from bouncer.session.startup_checks import quoted

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.plugin.hooks import PasswordChecker
    from bouncer.session.client import ClientSession

log = logging.getLogger(__name__)

#: Largest password message we accept (PgBouncer 1.26 raised passwords to 65535 bytes).
MAX_PASSWORD_PACKET = 70000

ADMIN_LOCAL_USER = "pgbouncer"


class LoginRefused(AuthFailed):
    """Authentication failed.  The client and the ``closing because`` line get PgBouncer's
    words, which do not tell an unknown user from a wrong password; ``why`` does, for the log
    and the client_login hook only."""

    def __init__(self, message: str, sqlstate: str, *, log_reason: str = "",
                 why: str = "") -> None:
        super().__init__(message, sqlstate, log_reason=log_reason)
        self.why = why or self.log_reason


def password_failed(user: str, why: str) -> LoginRefused:
    return LoginRefused(f'password authentication failed for user "{user}"',
                        sqlstate.INVALID_PASSWORD, log_reason="password authentication failed",
                        why=why)


def sasl_failed(why: str) -> LoginRefused:
    return LoginRefused("SASL authentication failed", sqlstate.INVALID_PASSWORD, why=why)


def authenticate(client: "ClientSession") -> None:
    """Authenticate a normal client; on success the pool learns the server credentials.

    :raises ClientError: refused (the message is what the client sees).
    """
    app = client.app
    try:
        # Inside the try: a refusal by the method choice (an HBA line) or a failing
        # credentials backend is an outcome the login observers must hear about too.
        method = app.hooks.auth_method(client)
        credentials, scram_keys = _authenticate_by(client, method)
    except LoginRefused as err:
        if err.why != err.log_reason:
            log.info("%s %s", client.prefix, err.why)
        app.hooks.client_login(client, False, err.why)
        raise
    except ClientError as err:
        app.hooks.client_login(client, False, err.log_reason)
        raise
    app.hooks.client_login(client, True, "")
    client.credentials = credentials
    client.scram_keys = scram_keys


def authenticate_admin(client: "ClientSession") -> None:
    """The admin console: admin_users and stats_users, or ``pgbouncer`` over a local socket."""
    app = client.app
    config = app.config
    if (client.unix and client.user == ADMIN_LOCAL_USER and client.peer_uid == os.geteuid()):
        return
    allowed = set(config.admin_users) | set(config.stats_users)
    not_allowed = LoginRefused("not allowed", sqlstate.INVALID_AUTHORIZATION,
                               log_reason=f"user {client.user} is in neither admin_users nor "
                                          "stats_users")
    if client.user not in allowed and config.auth_type not in ("trust", "any"):
        raise not_allowed
    # The method as for any database (auth_type, or the HBA line for database "pgbouncer");
    # secrets as for any database too: auth_file first, then auth_query, as in PgBouncer.
    _authenticate_by(client, app.hooks.auth_method(client))
    if client.user not in allowed:
        raise not_allowed


def _authenticate_by(client: "ClientSession", method: Optional[str]
                     ) -> Tuple[Optional[Credentials], Optional[tuple]]:
    """The client's credentials for server logins, and SCRAM keys when passthrough works."""
    app = client.app
    checker = app.hooks.password_checkers().get(method or "")
    if checker is not None:
        return _check_by_plugin(client, cast(str, method), checker), None
    credentials = app.hooks.get_credentials(app, client.user, client.database)
    return credentials, _run_method(client, method, credentials)


def _check_by_plugin(client: "ClientSession", method: str,
                     checker: "PasswordChecker") -> Credentials:
    """A plugin's method (ldap, pam): the cleartext password is checked by the plugin and is
    then what bouncer logs into the servers with, as PgBouncer does."""
    password = _ask_cleartext_password(client)
    if not password:
        # An empty password would be an anonymous bind to an LDAP server: never let one by.
        raise LoginRefused("empty password returned by client", sqlstate.INVALID_PASSWORD,
                           why="empty password returned by client")
    if not client.app.hooks.check_password(checker, client, password):
        failed = f"{method.upper()} authentication failed"
        raise LoginRefused(failed, sqlstate.INVALID_PASSWORD, log_reason=failed)
    return Credentials(client.user, password, method)


def _run_method(client: "ClientSession", method: Optional[str],
                credentials: Optional[Credentials]) -> Optional[tuple]:
    """Run one method; returns SCRAM (client_key, server_key) when passthrough became possible."""
    user = client.user
    if method in ("trust", "any"):
        if credentials is None and method == "trust":
            raise LoginRefused('"trust" authentication failed', sqlstate.INVALID_AUTHORIZATION,
                               why=f"no such user: {user} (trust needs a known user)")
        return None
    if method == "reject" or method is None:
        raise LoginRefused(f'authentication rejected for user "{user}"',
                           sqlstate.INVALID_AUTHORIZATION, log_reason=f"auth method {method}")
    if method == "plain" or method == "password":
        _check_plain(client, credentials)
        return None
    if method == "md5":
        if credentials is not None and parse_scram_secret(credentials.secret or ""):
            return _check_scram(client, credentials)  # md5 upgrades to SCRAM (PgBouncer rule)
        _check_md5(client, credentials)
        return None
    if method == "scram-sha-256":
        return _check_scram(client, credentials)
    if not client.app.hooks.verify_client(client, method):
        raise LoginRefused(f'authentication failed for user "{user}"',
                           sqlstate.INVALID_AUTHORIZATION,
                           log_reason=f"{method} authentication failed")
    return None


def _read_password_message(client: "ClientSession") -> bytes:
    kind, payload = read_message(client.sock, client.engine, MAX_PASSWORD_PACKET)
    if kind != Frontend.PASSWORD:
        raise ClientError(f"expected password response, got message type {chr(kind)!r}",
                          sqlstate.PROTOCOL_VIOLATION)
    return payload


def _ask_cleartext_password(client: "ClientSession") -> str:
    send_all(client.sock, backend.authentication(AuthCode.CLEARTEXT_PASSWORD))
    # surrogateescape keeps non-UTF-8 bytes as they are, so such passwords still match.
    return frontend.parse_password_message(_read_password_message(client)).decode(
        "utf-8", "surrogateescape")


def _check_plain(client: "ClientSession", credentials: Optional[Credentials]) -> None:
    password = _ask_cleartext_password(client)
    if credentials is None or credentials.secret is None:
        raise password_failed(client.user, f"no such user: {client.user}")
    secret = credentials.secret
    scram = parse_scram_secret(secret)
    if scram is not None:
        ok = ScramServer.verify_password(scram, password)
    elif is_md5_secret(secret):
        ok = hmac.compare_digest(md5_secret(client.user, password), secret)
    else:
        ok = hmac.compare_digest(password.encode("utf-8", "surrogateescape"),
                                 secret.encode("utf-8", "surrogateescape"))
    if not ok:
        raise password_failed(client.user, "wrong password (cleartext)")


def _check_md5(client: "ClientSession", credentials: Optional[Credentials]) -> None:
    salt = random_bytes(4)
    send_all(client.sock, backend.authentication(AuthCode.MD5_PASSWORD, salt))
    response = frontend.parse_password_message(_read_password_message(client)).decode(
        "ascii", "replace")
    if credentials is None or credentials.secret is None:
        raise password_failed(client.user, f"no such user: {client.user}")
    if not verify_md5_response(credentials.secret, client.user, salt, response):
        raise password_failed(client.user, "wrong password (md5)")


@functools.lru_cache(maxsize=1024)
def _secret_for_plain(password: str, iterations: int) -> ScramSecret:
    """Deriving a SCRAM secret takes milliseconds and blocks the hub: do it once per password
    (PgBouncer 1.25 caches it too).  Keyed by the password itself, which the userlist already
    holds in memory."""
    # (A secret make_scram_secret() made always parses.)
    return cast(ScramSecret, parse_scram_secret(make_scram_secret(password, iterations=iterations)))


def _check_scram(client: "ClientSession", credentials: Optional[Credentials]) -> Optional[tuple]:
    secret = credentials.secret if credentials is not None else None
    scram_secret = parse_scram_secret(secret) if secret else None
    unusable = None  # why no proof can succeed, when none can
    if credentials is None:
        unusable = f"no such user: {client.user}"
    elif not secret or is_md5_secret(secret):
        unusable = f"user {client.user} has no secret that can check a SCRAM proof (md5 or none)"
    if scram_secret is not None:
        server = ScramServer(scram_secret)
    elif secret and not is_md5_secret(secret):
        server = ScramServer(_secret_for_plain(secret, client.app.config.scram_iterations))
    else:
        # Run the whole exchange anyway so an unknown user looks like a wrong password.
        server = ScramServer.mock(client.user, client.app.config.scram_iterations)
    send_all(client.sock, backend.authentication_sasl(["SCRAM-SHA-256"]))
    try:
        mechanism, first = frontend.parse_sasl_initial_response(_read_password_message(client))
        if mechanism != "SCRAM-SHA-256":
            raise ClientError(f"unsupported SASL mechanism {quoted(mechanism)}",
                              sqlstate.PROTOCOL_VIOLATION)
        send_all(client.sock, backend.authentication(AuthCode.SASL_CONTINUE,
                                                     server.handle_client_first(first)))
        final = server.handle_client_final(_read_password_message(client))
    except ScramAuthFailed:
        raise sasl_failed(unusable or "wrong password (SCRAM)") from None
    except ScramError as exc:
        raise ClientError(f"malformed SCRAM message: {exc}", sqlstate.PROTOCOL_VIOLATION) from None
    if unusable:
        raise sasl_failed(unusable)
    send_all(client.sock, backend.authentication(AuthCode.SASL_FINAL, final))
    if scram_secret is not None:
        return (server.client_key, scram_secret.server_key)
    return None
