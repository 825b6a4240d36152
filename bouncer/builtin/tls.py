"""Built-in TLS policy: checks the TLS settings, builds the client and server contexts, and
decides after the handshake whether a client's transport and certificate are acceptable.

``client_tls_sslmode``: ``disable`` offers no TLS; ``allow``/``prefer`` offer it; ``require``
refuses plaintext; ``verify-ca`` also demands a certificate that chains to
``client_tls_ca_file``; ``verify-full`` also demands that its CN is the user name, or that the
``map=`` of the client's ``cert`` HBA line maps it to the user (PostgreSQL's
``clientcert=verify-full``; PgBouncer checks nothing more than verify-ca).  A certificate that
is presented is always judged when a CA file is set, whatever the mode, so nothing downstream
(``cert`` authentication) ever sees an unverified one.  Every refusal is a FATAL with SQLSTATE
28000 naming the setting and what to do, and the log gets the same reason.
"""
from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING, Optional

from bouncer.builtin.auth_hba import usermap_for
from bouncer.config import ConfigProblems
from bouncer.errors import ConfigError
from bouncer.net.certs import Rejection, common_name
from bouncer.net.tls import (VERIFYING_MODES, ClientTlsContext, TlsSettings,
                             build_client_context, build_server_context,
                             peer_certificate_problem)
from bouncer.net.tls_check import check_settings
from bouncer.plugin import ClientInfo, Refusal, hookimpl
from bouncer.proto import sqlstate

if TYPE_CHECKING:  # pragma: no cover
    import ssl

    from bouncer.app import App
    from bouncer.config import Config
    from bouncer.session.client import ClientSession

log = logging.getLogger(__name__)

_PLAINTEXT_ALLOWED = ("disable", "allow", "prefer")


@hookimpl(trylast=True)
def bouncer_client_tls_context(app: Optional["App"],
                               config: "Config") -> Optional[ClientTlsContext]:
    settings = _checked_settings(config, "client")
    return None if settings.sslmode == "disable" else build_client_context(settings)


@hookimpl(trylast=True)
def bouncer_server_tls_context(app: Optional["App"],
                               config: "Config") -> Optional["ssl.SSLContext"]:
    settings = _checked_settings(config, "server")
    return None if settings.sslmode == "disable" else build_server_context(settings)


def _checked_settings(config: "Config", side: str) -> TlsSettings:
    """One side's settings once every file and option is checked; the warnings (certificates
    expiring soon) are logged.

    The checks belong to building the context, not to validating the configuration: SET
    takes a key and its certificate one after the other, and only the pair must match.

    :raises ConfigProblems: every error found, each naming the setting and file.
    """
    settings = TlsSettings.from_config(config, side)
    errors, warnings = check_settings(settings, datetime.datetime.now(datetime.timezone.utc))
    for warning in warnings:
        log.warning("%s", warning)
    if errors:
        raise ConfigProblems([ConfigError(error) for error in errors])
    return settings


@hookimpl(trylast=True)
def bouncer_check_client_tls(app: "App", client: "ClientInfo", session: "ClientSession") -> None:
    mode = app.config.client_tls_sslmode
    if client.unix:
        return
    if not client.tls:
        if mode not in _PLAINTEXT_ALLOWED:
            raise _refuse(f"SSL required: this server has client_tls_sslmode={mode}; connect "
                          "with sslmode=require")
        return
    rejection = peer_certificate_problem(session.sock)
    if rejection is not None:
        raise _refuse(_rejection_message(rejection, mode))
    if mode not in VERIFYING_MODES:
        return
    if not client.peer_cert:
        raise _refuse(f"client certificate required: this server has client_tls_sslmode={mode}; "
                      "connect with sslcert=... and sslkey=... (a certificate issued by the CA "
                      "in client_tls_ca_file)")
    name = common_name(client.peer_cert)
    if mode == "verify-full" and not _common_name_matches(app, client, name):
        shown = f'CN "{name}"' if name is not None else "no CN"
        raise _refuse(f'client certificate {shown} does not match user "{client.user}": '
                      "client_tls_sslmode=verify-full requires the certificate's common name "
                      "to be the user name; connect as that user or with that user's "
                      "certificate")


def _common_name_matches(app: "App", client: "ClientInfo", name: Optional[str]) -> bool:
    """CN *name* == user name, or, with ``auth_type = hba``, a ``map=`` on the client's HBA
    line that maps it to the user (PostgreSQL's ``clientcert=verify-full`` with a user map)."""
    if name == client.user:
        return True
    usermap = usermap_for(app, client)
    return (name is not None and usermap is not None
            and usermap.ident.allows(usermap.name, name, client.user))


def _rejection_message(rejection: Rejection, mode: str) -> str:
    who = rejection.subject
    if rejection.reason == "expired":
        return (f"client certificate expired: {who} expired on {_date(rejection)}; connect with "
                "a renewed certificate")
    if rejection.reason == "not-yet-valid":
        return (f"client certificate not yet valid: {who} is valid from {_date(rejection)}; "
                "check the client's certificate or the clocks")
    if rejection.reason == "untrusted":
        return (f"client certificate not trusted: {who} is not issued by the CA in "
                f"client_tls_ca_file ({rejection.detail}); this server has "
                f"client_tls_sslmode={mode}: connect with a certificate issued by that CA")
    return f"client certificate rejected: {who}: {rejection.detail}"


def _date(rejection: Rejection) -> str:
    when = rejection.when
    return when.strftime("%Y-%m-%d %H:%M UTC") if when is not None else "an unknown date"


def _refuse(message: str) -> Refusal:
    return Refusal(message, sqlstate.INVALID_AUTHORIZATION)
