"""TLS contexts built from the ``client_tls_*`` / ``server_tls_*`` settings, and the ``tls``
column text of an established connection (the checks are in :mod:`bouncer.net.tls_check`).

Clients are served through pyOpenSSL (:mod:`bouncer.net.tls_socket` says why); servers are
reached with the stdlib ``ssl`` module, whose host-name check ``verify-full`` relies on.
Protocol and cipher shortcuts mean what they mean in PgBouncer (its libusual TLS layer).
"""
from __future__ import annotations

import os
import re
import ssl
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

import OpenSSL
from OpenSSL import SSL, crypto

from bouncer.errors import ConfigError
from bouncer.net.certs import (CertificateFileError, Rejection, build_store, load_certificates,
                               load_private_key, openssl_reason, verify_chain)
from bouncer.net.tls_socket import TlsSocket

VERIFYING_MODES = ("verify-ca", "verify-full")

#: TLS versions as PgBouncer names them, oldest first.
PROTOCOLS = ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3")
_PROTOCOL_SHORTCUTS = {"all": PROTOCOLS, "legacy": PROTOCOLS,
                       "secure": PROTOCOLS[2:], "default": PROTOCOLS[2:]}
_OPENSSL_VERSIONS = dict(zip(PROTOCOLS, (SSL.TLS1_VERSION, SSL.TLS1_1_VERSION,
                                         SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION)))
_STDLIB_VERSIONS = dict(zip(PROTOCOLS, (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1,
                                        ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)))

# PgBouncer's cipher shortcuts (TLS 1.2 and older), as libusual defines them.
_CIPHERS_SECURE = "HIGH+EECDH:HIGH+EDH:!SSLv3:!SHA384:!SHA256:!DSS:!aNULL"
_CIPHERS_COMPAT = "HIGH:+3DES:!aNULL"
_CIPHERS_ALL = "ALL:!aNULL:!eNULL"
_CIPHERS_NORMAL = ("HIGH+EECDH:HIGH+EDH:HIGH+RSA:+SHA384:+SHA256:+SSLv3:+EDH:+RSA:-3DES:"
                   "3DES+RSA:!CAMELLIA:!DSS:!aNULL")
_CIPHERS_FAST = ("HIGH+EECDH:HIGH+EDH:HIGH+RSA:+AES256:+SHA256:+SHA384:+SSLv3:+EDH:+RSA:-3DES:"
                 "3DES+RSA:!CAMELLIA:!DSS:!aNULL")
CIPHER_SHORTCUTS = {"": _CIPHERS_SECURE, "default": _CIPHERS_SECURE, "secure": _CIPHERS_SECURE,
                    "compat": _CIPHERS_COMPAT, "legacy": _CIPHERS_COMPAT,
                    "all": _CIPHERS_ALL, "insecure": _CIPHERS_ALL,
                    "normal": _CIPHERS_NORMAL, "fast": _CIPHERS_FAST}

# TLS group names as OpenSSL reports them -> the short names PgBouncer's tls column shows.
_GROUP_NAMES = {"x25519": "X25519", "x448": "X448", "secp256r1": "prime256v1"}

_CLIENT_OPTIONS = ("ecdhcurve", "dheparams")


@dataclass(frozen=True)
class TlsSettings:
    """One side's TLS settings; :meth:`name` gives a field's ini name (``client_tls_ca_file``)."""

    side: str  # "client" or "server"
    sslmode: str
    key_file: str
    cert_file: str
    ca_file: str
    protocols: str
    ciphers: str
    tls13_ciphers: str
    ecdhcurve: str = "auto"  # client side only
    dheparams: str = "auto"  # client side only

    @classmethod
    def from_config(cls, config: Any, side: str) -> "TlsSettings":
        fields = ["sslmode", "key_file", "cert_file", "ca_file", "protocols", "ciphers",
                  "tls13_ciphers"] + (list(_CLIENT_OPTIONS) if side == "client" else [])
        return cls(side, **{field: str(config.settings[setting_name(side, field)])
                            for field in fields})

    def name(self, field: str) -> str:
        return setting_name(self.side, field)


def setting_name(side: str, field: str) -> str:
    return f"{side}_tls13_ciphers" if field == "tls13_ciphers" else f"{side}_tls_{field}"


def is_tls_setting(name: str) -> bool:
    """Whether setting *name* is one the TLS contexts are built from (PgBouncer's test)."""
    return "_tls_" in name or "_tls13_" in name


def servers_need_reconnect(old: TlsSettings, new: TlsSettings) -> bool:
    """Whether server connections opened under *old* must be replaced to honour *new*: any
    change does, unless TLS to servers was off and stays off (PgBouncer's rule)."""
    return old != new and not old.sslmode == new.sslmode == "disable"


# -- protocol and cipher settings ---------------------------------------------------------------

def protocol_range(text: str) -> Tuple[str, str]:
    """The lowest and highest TLS version *text* allows.

    PgBouncer's syntax: names and shortcuts (``secure``, ``all``, ``legacy``) separated by
    commas or colons; ``!name`` removes (starting from all when it comes first).

    :raises ValueError: an unknown name, nothing left, or a gap (OpenSSL takes one range).
    """
    allowed: set = set()
    for token in (part.strip().lower() for part in re.split(r"[,:]", text or "secure")):
        if not token:
            continue
        name = token.lstrip("!").strip()
        versions = _PROTOCOL_SHORTCUTS.get(name) or ((name,) if name in PROTOCOLS else None)
        if versions is None:
            raise ValueError(f"unknown protocol {name!r}: use {', '.join(PROTOCOLS)}, "
                             "secure, all or legacy")
        if token.startswith("!"):
            allowed = (allowed or set(PROTOCOLS)) - set(versions)
        else:
            allowed |= set(versions)
    positions = sorted(PROTOCOLS.index(name) for name in allowed)
    if not positions:
        raise ValueError("no protocol left: allow at least one of " + ", ".join(PROTOCOLS))
    if positions != list(range(positions[0], positions[-1] + 1)):
        raise ValueError("the versions must be consecutive (OpenSSL takes a lowest and a "
                         "highest version)")
    return PROTOCOLS[positions[0]], PROTOCOLS[positions[-1]]


def cipher_string(text: str) -> str:
    """The OpenSSL cipher string for a ``*_tls_ciphers`` value (shortcuts expanded)."""
    return CIPHER_SHORTCUTS.get(text.strip().lower(), text.strip())


def _protocols(settings: TlsSettings) -> Tuple[str, str]:
    try:
        return protocol_range(settings.protocols)
    except ValueError as exc:
        raise ConfigError(f"{settings.protocols!r}: {exc}",
                          key=settings.name("protocols")) from None


def _bad_ciphers(settings: TlsSettings, reason: str) -> ConfigError:
    return ConfigError(
        f"{settings.ciphers!r}: OpenSSL accepts no cipher from it ({reason}): use default, "
        "secure, compat, legacy, normal, fast, all or an OpenSSL cipher string",
        key=settings.name("ciphers"))


# -- clients: pyOpenSSL ------------------------------------------------------------------------

class ClientTlsContext:
    """What bouncer offers clients: an OpenSSL context, and the CA store that client
    certificates are judged against after the handshake (``None``: none are requested).

    Like ``ssl.SSLContext`` it has :meth:`wrap_socket`, which is all the core calls.
    """

    def __init__(self, ssl_context: SSL.Context, ca_store: Optional[crypto.X509Store]) -> None:
        self.ssl_context = ssl_context
        self.ca_store = ca_store

    def wrap_socket(self, sock: Any, server_side: bool = True) -> TlsSocket:
        """Run the handshake on *sock*; *server_side* is there for ``ssl.SSLContext``'s
        signature: this context only accepts connections."""
        return TlsSocket.accept(sock, self.ssl_context, self)


def build_client_context(settings: TlsSettings) -> ClientTlsContext:
    """The context for client connections.

    :raises ConfigError: naming the setting (and file) that cannot be used.
    """
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET
                        | SSL.OP_CIPHER_SERVER_PREFERENCE
                        # a client closing without close_notify is plain end of stream
                        | getattr(SSL, "OP_IGNORE_UNEXPECTED_EOF", 0))
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)  # idle TLS clients keep no buffers
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    for step in CLIENT_OPTION_STEPS:
        step(context, settings)
    _use_keypair(context, settings)
    if not settings.ca_file:
        return ClientTlsContext(context, None)
    store = build_store(load_setting_file(settings, "ca_file", load_certificates))
    try:
        context.load_client_ca(os.fsencode(settings.ca_file))  # names the CAs in the request
    except SSL.Error as exc:
        raise ConfigError(f"{settings.ca_file} cannot be used ({openssl_reason(exc)})",
                          key=settings.name("ca_file")) from None
    context.set_session_id(b"bouncer")  # OpenSSL demands one when it asks for certificates
    # Requested, not demanded, and not judged here: a client without a certificate, or with
    # a bad one, completes the handshake and is told in a FATAL (bouncer_check_client_tls).
    context.set_verify(SSL.VERIFY_PEER, _accept_any_certificate)
    return ClientTlsContext(context, store)


def _accept_any_certificate(connection: Any, certificate: Any, error: int, depth: int,
                            ok: int) -> bool:
    return True


def _use_keypair(context: SSL.Context, settings: TlsSettings) -> None:
    # load_private_key first: its complaints are precise, and an encrypted key never gets to
    # OpenSSL (which would prompt for the passphrase on a terminal).
    load_setting_file(settings, "key_file", load_private_key)
    try:
        context.use_certificate_chain_file(settings.cert_file)
        context.use_privatekey_file(settings.key_file)
        context.check_privatekey()
    except SSL.Error as exc:
        raise ConfigError(f"{settings.cert_file} cannot be used with {settings.name('key_file')} "
                          f"{settings.key_file} ({openssl_reason(exc)}): use the key the "
                          "certificate was issued for", key=settings.name("cert_file")) from None


def _openssl_protocols(context: SSL.Context, settings: TlsSettings) -> None:
    low, high = _protocols(settings)
    context.set_min_proto_version(_OPENSSL_VERSIONS[low])
    context.set_max_proto_version(_OPENSSL_VERSIONS[high])


def _openssl_ciphers(context: SSL.Context, settings: TlsSettings) -> None:
    try:
        context.set_cipher_list(cipher_string(settings.ciphers).encode())
    except SSL.Error as exc:
        raise _bad_ciphers(settings, openssl_reason(exc)) from None


def _openssl_tls13_ciphers(context: SSL.Context, settings: TlsSettings) -> None:
    if not settings.tls13_ciphers.strip():
        return  # OpenSSL's default suites
    setter = getattr(context, "set_tls13_ciphersuites", None)
    key = settings.name("tls13_ciphers")
    if setter is None:
        raise ConfigError(f"this pyOpenSSL ({OpenSSL.__version__}) cannot choose TLS 1.3 cipher "
                          "suites: leave it empty", key=key)
    try:
        setter(settings.tls13_ciphers.strip().encode())
    except SSL.Error as exc:
        raise ConfigError(f"failed to set the TLSv1.3 cipher suites to "
                          f"{settings.tls13_ciphers!r} ({openssl_reason(exc)}): use names such "
                          "as TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
                          key=key) from None


def _openssl_ecdh_curve(context: SSL.Context, settings: TlsSettings) -> None:
    name = settings.ecdhcurve.strip()
    if name.lower() in ("", "auto"):
        return  # OpenSSL negotiates the group itself
    try:
        with warnings.catch_warnings():
            # Newer pyOpenSSL prefers cryptography's curve objects, which 23.0 cannot take.
            warnings.simplefilter("ignore", DeprecationWarning)
            context.set_tmp_ecdh(crypto.get_elliptic_curve(name))
    except ValueError:
        raise ConfigError(f"{name!r} is not a curve OpenSSL knows: use auto or a name such as "
                          "prime256v1 or secp384r1", key=settings.name("ecdhcurve")) from None


def _dhe_params(context: SSL.Context, settings: TlsSettings) -> None:
    # bouncer offers no finite-field DHE groups: key exchange is ECDHE (TLS 1.2) or a TLS 1.3
    # group, so "auto" and "none" both stand; "legacy" (1024 bits) is refused by OpenSSL 3.
    if settings.dheparams.strip().lower() not in ("", "auto", "none"):
        raise ConfigError(f"{settings.dheparams!r} is not supported: use auto or none",
                          key=settings.name("dheparams"))


CLIENT_OPTION_STEPS: Sequence[Callable[[SSL.Context, TlsSettings], None]] = (
    _openssl_protocols, _openssl_ciphers, _openssl_tls13_ciphers, _openssl_ecdh_curve,
    _dhe_params)


# -- servers: stdlib ssl -----------------------------------------------------------------------

def build_server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The context for connections to PostgreSQL servers.

    Without ``server_tls_ca_file``, verify-ca/verify-full trust the system's CAs, as PgBouncer
    does.  :raises ConfigError: naming the setting (and file) that cannot be used.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for step in SERVER_OPTION_STEPS:
        step(context, settings)
    if settings.sslmode in VERIFYING_MODES:
        _trust(context, settings)
        context.check_hostname = settings.sslmode == "verify-full"
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.cert_file:
        _present_certificate(context, settings)
    return context


def _trust(context: ssl.SSLContext, settings: TlsSettings) -> None:
    if not settings.ca_file:
        context.load_default_certs()
        return
    load_setting_file(settings, "ca_file", load_certificates)  # its own, precise, complaints
    try:
        context.load_verify_locations(cafile=settings.ca_file)
    except ssl.SSLError as exc:
        raise ConfigError(f"{settings.ca_file} cannot be used ({exc.reason or exc})",
                          key=settings.name("ca_file")) from None


def _present_certificate(context: ssl.SSLContext, settings: TlsSettings) -> None:
    load_setting_file(settings, "key_file", load_private_key)  # its own, precise, complaints
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file, password=_no_passphrase)
    except ssl.SSLError as exc:
        raise ConfigError(f"{settings.cert_file} cannot be used with {settings.name('key_file')} "
                          f"{settings.key_file} ({exc.reason or exc}): use the key the "
                          "certificate was issued for", key=settings.name("cert_file")) from None


def _no_passphrase() -> bytes:
    # Never let OpenSSL prompt on a terminal for an encrypted key (load_private_key has
    # already refused one): an empty passphrase just fails.
    return b""


def _stdlib_protocols(context: ssl.SSLContext, settings: TlsSettings) -> None:
    low, high = _protocols(settings)
    with warnings.catch_warnings():
        # ssl deprecates TLS 1.0/1.1; allowing them is the operator's explicit choice.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = _STDLIB_VERSIONS[low]
        context.maximum_version = _STDLIB_VERSIONS[high]


def _stdlib_ciphers(context: ssl.SSLContext, settings: TlsSettings) -> None:
    try:
        context.set_ciphers(cipher_string(settings.ciphers))
    except ssl.SSLError as exc:
        raise _bad_ciphers(settings, exc.reason or str(exc)) from None


def _stdlib_tls13_ciphers(context: ssl.SSLContext, settings: TlsSettings) -> None:
    if settings.tls13_ciphers.strip():
        raise ConfigError("Python's ssl module cannot choose TLS 1.3 cipher suites for server "
                          "connections: leave it empty (OpenSSL's defaults are used)",
                          key=settings.name("tls13_ciphers"))


SERVER_OPTION_STEPS: Sequence[Callable[[ssl.SSLContext, TlsSettings], None]] = (
    _stdlib_protocols, _stdlib_ciphers, _stdlib_tls13_ciphers)


def load_setting_file(settings: TlsSettings, field: str, loader: Callable[[str], Any]) -> Any:
    path = getattr(settings, field)
    try:
        return loader(path)
    except CertificateFileError as exc:
        raise ConfigError(f"{path} {exc}", key=settings.name(field)) from None


# -- established connections --------------------------------------------------------------------

def describe_connection(sock: Any) -> str:
    """The ``tls`` column, shaped as PgBouncer's: ``TLSv1.3/TLS_AES_256_GCM_SHA384/ECDH=X25519``.

    Works for :class:`TlsSocket` and ``ssl.SSLSocket``; the key exchange is shown only where
    the TLS library can name it.
    """
    cipher = sock.cipher()
    parts = [sock.version() or "-", cipher[0] if cipher else "-"]
    group = getattr(sock, "group", None)
    exchange = _key_exchange(group() if group is not None else None)
    return "/".join(parts + ([exchange] if exchange else []))


def _key_exchange(group: Optional[str]) -> Optional[str]:
    if not group:
        return None
    if group.startswith("ffdhe"):
        return "DH=" + group[len("ffdhe"):]
    return "ECDH=" + _GROUP_NAMES.get(group, group)


def peer_certificate_problem(sock: Any) -> Optional[Rejection]:
    """Why the certificate the client on *sock* presented is unacceptable, or ``None``.

    Only :class:`TlsSocket` connections defer the verdict to here (against the CA of the
    context that accepted them); ``ssl.SSLSocket`` ones were verified during the handshake.
    """
    if not isinstance(sock, TlsSocket):
        return None
    store = getattr(sock.context, "ca_store", None)
    leaf = sock.peer_certificate()
    if store is None or leaf is None:
        return None
    return verify_chain(store, leaf, sock.peer_intermediates())
