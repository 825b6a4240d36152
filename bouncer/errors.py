"""Exception types shared across layers.

Sans-IO modules (``proto``, ``auth``, ``config``) raise these; the session layer turns
:class:`ClientError` into an ErrorResponse for the client.
"""
from __future__ import annotations

from typing import Optional


class BouncerError(Exception):
    """Base class for errors bouncer raises on purpose."""


class ConfigError(BouncerError):
    """A configuration file is invalid.  ``str()`` names the file, line and key."""

    def __init__(self, message: str, *, filename: Optional[str] = None,
                 lineno: Optional[int] = None, key: Optional[str] = None) -> None:
        self.message = message
        self.filename = filename
        self.lineno = lineno
        self.key = key
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.filename:
            where = self.filename + (f":{self.lineno}" if self.lineno else "") + ": "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ProtocolError(BouncerError):
    """The peer sent bytes that are not valid PostgreSQL protocol (SQLSTATE 08P01)."""

    sqlstate = "08P01"


class ClientError(BouncerError):
    """An error to report to the client as an ErrorResponse.

    :param message: the primary message (``M`` field), worded as PgBouncer words it.
    :param sqlstate: the SQLSTATE code (``C`` field).
    :param severity: ``FATAL`` closes the connection after sending; ``ERROR`` does not.
    :param hint: optional ``H`` field telling the user what to do.
    :param log_reason: what the log says instead of ``message`` (never sent to the client).
    """

    def __init__(self, message: str, sqlstate: str = "08P01", severity: str = "FATAL",
                 detail: Optional[str] = None, hint: Optional[str] = None, *,
                 log_reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.severity = severity
        self.detail = detail
        self.hint = hint
        self.log_reason = log_reason or message


class Refusal(ClientError):
    """How a plugin's hook says no: the one error type of the plugin API.

    Raised by a hook that decides about a client (``bouncer_check_client_tls``,
    ``bouncer_client_admit``, ``bouncer_auth_method``, ``bouncer_get_credentials``,
    ``bouncer_verify_client``, a password checker), the client gets a ``FATAL`` ErrorResponse
    with these fields and the connection is closed.  Raised by ``bouncer_server_connect_limit``,
    *message* names the limit reached (SHOW and the log say it; the clients wait).  Raised by a
    TLS context hook, the configuration is refused with *message*.

    :param message: what the client reads (``M``); say what is wrong and what to do.
    :param sqlstate: the SQLSTATE (``C``); 28000 (invalid authorization) unless you know better.
    :param detail: an optional ``D`` field.
    :param hint: an optional ``H`` field: what the user should do.
    :param log_reason: what bouncer's log says instead of *message*, when the client must not
        be told (never put a secret in either).
    """

    def __init__(self, message: str, sqlstate: str = "28000", *, detail: Optional[str] = None,
                 hint: Optional[str] = None, log_reason: str = "") -> None:
        super().__init__(message, sqlstate, "FATAL", detail, hint, log_reason=log_reason)


class AuthFailed(ClientError):
    """Password or certificate authentication failed (SQLSTATE 28P01 / 28000)."""

    def __init__(self, message: str, sqlstate: str = "28P01", *, log_reason: str = "",
                 hint: Optional[str] = None) -> None:
        super().__init__(message, sqlstate, "FATAL", hint=hint, log_reason=log_reason)
