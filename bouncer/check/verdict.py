"""One login attempt of ``bouncer --check --connect``, judged and put in plain words.

Sans-IO: :mod:`bouncer.check.connect` makes the attempt with the pooler's own server login code
and fills an :class:`Attempt`; this module says what it means: reachable or not, TLS and the
certificate verdict, the method the server asked for and whether bouncer holds the secret that
method needs.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from bouncer.auth.md5 import is_md5_secret
from bouncer.auth.scram import parse_scram_secret
from bouncer.errors import ClientError
from bouncer.proto.constants import AuthCode

OK, FAIL, WARN, SKIP = "OK", "FAIL", "WARN", "SKIP"

#: auth_type values whose client logins give bouncer the client's SCRAM keys.
SCRAM_PASSTHROUGH_AUTH_TYPES = ("md5", "scram-sha-256", "hba")

# Keyed by AuthCode, looked up with the int a server sent (an IntEnum hashes as its value).
#: The method a server asks for, as the lines name it.
_METHOD_NAMES: Dict[int, str] = {AuthCode.CLEARTEXT_PASSWORD: "a cleartext password",
                                 AuthCode.MD5_PASSWORD: "md5", AuthCode.SASL: "SCRAM"}
#: Which kinds of stored secret can answer each method.
_ANSWERS: Dict[int, Tuple[str, ...]] = {AuthCode.CLEARTEXT_PASSWORD: ("plain",),
                                         AuthCode.MD5_PASSWORD: ("plain", "md5"),
                                         AuthCode.SASL: ("plain", "scram")}
_SECRET_NAMES = {"plain": "plain password", "md5": "md5 secret", "scram": "SCRAM secret"}
_ARTICLES = {"plain": "a", "md5": "an", "scram": "a"}

# OpenSSL's X509_V_ERR_* codes, by what they mean to an operator.
_HOST_MISMATCH = (62, 64)          # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
_EXPIRED, _NOT_YET_VALID = 10, 9
_SELF_SIGNED, _SELF_SIGNED_IN_CHAIN = 18, 19
_UNKNOWN_CA = (2, 20, 21)          # no issuer found, locally or at all; leaf not verifiable


@dataclass(frozen=True)
class Target:
    """What the pooler would log in with, for one database.

    :param database: the ``[databases]`` name.
    :param user: the server login user (the forced user, auth_user or an auth_file user).
    :param secret: the secret bouncer would send (``None``: none known).
    :param forced: the user is the database's ``user=`` (its secret is the line's password=).
    """

    database: str
    user: str
    secret: Optional[str]
    forced: bool


@dataclass(frozen=True)
class Settings:
    """The settings that decide how a login goes: server_tls_sslmode and its CA file,
    auth_type (can a client's SCRAM login hand bouncer its keys?)."""

    sslmode: str
    ca_file: str
    auth_type: str


@dataclass(frozen=True)
class Attempt:
    """What the attempt saw.

    :param where: the host (or socket directory) and port tried.
    :param connected: the socket opened (the login started).
    :param unix: over a unix socket (where bouncer never asks for TLS).
    :param tls: the negotiated ``protocol/cipher...``, empty without TLS.
    :param auth_request: the server's first authentication request (an AuthCode).
    :param error: why it failed, as the pooler's code raised it (``None``: logged in).
    :param seconds: how long it took.
    :param server_version: what the server reported, once logged in.
    """

    where: str
    connected: bool
    unix: bool
    tls: str
    auth_request: Optional[int]
    error: Optional[ClientError]
    seconds: float
    server_version: str = ""


@dataclass(frozen=True)
class Verdict:
    status: str
    line: str


def skipped(database: str, reason: str) -> Verdict:
    return Verdict(SKIP, f"{SKIP} database {database}: not checked: {reason}")


def judge(target: Target, settings: Settings, attempt: Attempt) -> Verdict:
    """The attempt's status and its line: ``STATUS database db (user u) at host:port: ...``."""
    status, parts = OK, []
    for stage in (_reach, _tls, _login):
        stage_status, words = stage(target, settings, attempt)
        parts.append(words)
        status = _worse(status, stage_status)
        if stage_status == FAIL:
            break
    parts.append(f"{attempt.seconds * 1000:.0f} ms")
    return Verdict(status, f"{status} database {target.database} (user {target.user}) at "
                           f"{attempt.where}: " + "; ".join(parts))


def _worse(first: str, second: str) -> str:
    order = (OK, WARN, FAIL)
    return max(first, second, key=order.index)


def _reach(target: Target, settings: Settings, attempt: Attempt):
    if not attempt.connected:
        return FAIL, f"unreachable: {_error_text(attempt.error)}"
    version = f" (PostgreSQL {attempt.server_version})" if attempt.server_version else ""
    return OK, "reachable" + version


def _tls(target: Target, settings: Settings, attempt: Attempt):
    mode = settings.sslmode
    if attempt.unix:
        return OK, "no TLS (unix socket)"
    if mode == "disable":
        return OK, "no TLS (server_tls_sslmode = disable)"
    rejection = _certificate_rejection(attempt.error)
    if rejection is not None:
        return FAIL, f"TLS certificate rejected: {rejection}"
    if attempt.tls:
        return OK, f"TLS {attempt.tls}, {_certificate_accepted(settings)}"
    if attempt.auth_request is not None or attempt.error is None:
        return OK, f"no TLS: the server does not offer it (server_tls_sslmode = {mode} allows that)"
    return FAIL, f"TLS failed: {_error_text(attempt.error)}"


def _certificate_accepted(settings: Settings) -> str:
    ca = settings.ca_file or "a CA the system trusts"
    if settings.sslmode == "verify-full":
        return f"certificate verified: signed by {ca} and valid for the host name"
    if settings.sslmode == "verify-ca":
        return f"certificate signed by {ca} (the host name is not checked: verify-ca)"
    return f"certificate not checked (server_tls_sslmode = {settings.sslmode})"


def _certificate_rejection(error: Optional[ClientError]) -> Optional[str]:
    """The reason in plain words when TLS failed on the server's certificate."""
    cause = getattr(error, "__cause__", None)
    if not isinstance(cause, ssl.SSLCertVerificationError):
        return None
    code, message = cause.verify_code, cause.verify_message
    if code in _HOST_MISMATCH:
        return f"host name mismatch ({message})"
    if code == _EXPIRED:
        return "expired: the server's certificate is past its end date"
    if code == _NOT_YET_VALID:
        return "not yet valid: check the server's certificate or the clocks"
    if code in (_SELF_SIGNED, _SELF_SIGNED_IN_CHAIN):
        return "self-signed, and not in server_tls_ca_file"
    if code in _UNKNOWN_CA:
        return "unknown CA: not signed by a CA in server_tls_ca_file (or the system's)"
    return message


def _login(target: Target, settings: Settings, attempt: Attempt):
    asked, error, user = attempt.auth_request, attempt.error, target.user
    if asked is None:
        return FAIL, f"login failed before authentication: {_error_text(error)}"
    if asked == AuthCode.OK:
        if error is not None:
            return FAIL, f"server asks no password for user {user} but refused: {error.message}"
        return OK, f"server asks no password for user {user} (trust): logged in"
    if asked not in _ANSWERS:
        return FAIL, f"server asks for authentication method {asked}: {_error_text(error)}"
    method, kind = _METHOD_NAMES[asked], secret_kind(target.secret)
    asks = f"server asks {method} for user {user}"
    if kind not in _ANSWERS[asked]:
        return FAIL, f"{asks} but {_missing(target, kind)}"
    if kind == "scram" and asked == AuthCode.SASL:
        return _scram_passthrough(target, settings, asks)
    if error is not None:
        if error.sqlstate.startswith("28"):
            return FAIL, f"{asks} and refused bouncer's {_SECRET_NAMES[kind]} ({error.message})"
        return FAIL, f"{asks}; the login then failed: {error.message}"
    return OK, f"{asks}, bouncer has {_a(kind)}: logged in"


def _missing(target: Target, kind: str) -> str:
    if kind == "none":
        where = ("password= on its [databases] line or an auth_file entry for the user"
                 if target.forced else "an auth_file entry for the user")
        return f"no secret is known (give it {where})"
    return f"only {_a(kind)} is known"


def _scram_passthrough(target: Target, settings: Settings, asks: str):
    """A SCRAM secret cannot produce a password: only a client's SCRAM login gives the keys."""
    known = f"{asks} and only a SCRAM secret is known"
    if target.forced:
        return FAIL, (f"{known}; a forced user never gets a client's SCRAM keys: put the "
                      "plain password in password=")
    if settings.auth_type in SCRAM_PASSTHROUGH_AUTH_TYPES:
        return WARN, (f"{known}: bouncer logs in with the keys of the client's own SCRAM "
                      "login (passthrough), which this check cannot make")
    return FAIL, (f"{known}, and with auth_type = {settings.auth_type} no client login gives "
                  "bouncer SCRAM keys: put the plain password in auth_file")


def _a(kind: str) -> str:
    return f"{_ARTICLES[kind]} {_SECRET_NAMES[kind]}"


def secret_kind(secret: Optional[str]) -> str:
    """``none``, ``plain``, ``md5`` or ``scram``: what a stored secret can answer."""
    if not secret:
        return "none"
    if parse_scram_secret(secret) is not None:
        return "scram"
    return "md5" if is_md5_secret(secret) else "plain"


def _error_text(error: Optional[ClientError]) -> str:
    return error.message if error is not None else "no error reported"
