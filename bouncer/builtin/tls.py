"""Built-in TLS policy: contexts from the ``client_tls_*`` and ``server_tls_*`` settings, and
``client_tls_sslmode`` enforced at login."""
from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Optional

from bouncer.errors import ClientError
from bouncer.plugin import hookimpl
from bouncer.proto import sqlstate

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.app import App
    from bouncer.config import Config
    from bouncer.session.client import ClientSession


@hookimpl(trylast=True)
def bouncer_client_tls_context(app: "App", config: "Config") -> Optional[ssl.SSLContext]:
    if config.client_tls_sslmode == "disable":
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config.client_tls_cert_file, config.client_tls_key_file)
    if config.client_tls_ca_file:
        context.load_verify_locations(config.client_tls_ca_file)
        # Requested, not demanded: a client without a certificate still completes the
        # handshake and is then told in plain words what is missing.
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


@hookimpl(trylast=True)
def bouncer_server_tls_context(app: "App", config: "Config") -> Optional[ssl.SSLContext]:
    mode = config.server_tls_sslmode
    if mode == "disable":
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if mode in ("verify-ca", "verify-full"):
        context.load_verify_locations(config.server_tls_ca_file)
        context.check_hostname = mode == "verify-full"
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.server_tls_cert_file:
        context.load_cert_chain(config.server_tls_cert_file, config.server_tls_key_file)
    return context


@hookimpl(trylast=True)
def bouncer_check_client_tls(app: "App", client: "ClientSession") -> Optional[ClientError]:
    mode = app.config.client_tls_sslmode
    if client.unix or mode in ("disable", "allow", "prefer"):
        return None
    if not client.tls:
        return ClientError(f"SSL required: this server has client_tls_sslmode={mode}; "
                           "connect with sslmode=require", sqlstate.INVALID_AUTHORIZATION)
    if mode in ("verify-ca", "verify-full") and not client.peer_cert:
        return ClientError(
            f"client certificate required: this server has client_tls_sslmode={mode}; "
            "connect with sslcert=... and sslkey=...", sqlstate.INVALID_AUTHORIZATION)
    return None
