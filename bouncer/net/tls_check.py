"""Checking one side's TLS settings before they are used: every file problem (missing,
unreadable, not PEM, encrypted key, key not matching, expired or expiring certificates) and every
option OpenSSL rejects, each as a message that names the setting and file and says what to do.
"""
from __future__ import annotations

import datetime
import ssl
from typing import Any, Callable, List, Sequence, Tuple

from OpenSSL import SSL, crypto

from bouncer.errors import ConfigError
from bouncer.net.certs import (
    CertificateFileError,
    Finding,
    key_matches,
    load_certificates,
    load_private_key,
    validity_findings,
)
from bouncer.net.tls import CLIENT_OPTION_STEPS, SERVER_OPTION_STEPS, TlsSettings


def check_settings(settings: TlsSettings, now: datetime.datetime) -> Tuple[List[str], List[str]]:
    """Every problem with one side's settings, as (errors, warnings).

    Each message names the setting and file and says what to do.  Whether the key and
    certificate files are set at all is the core's check (:mod:`bouncer.config.validate`).
    """
    if settings.sslmode == "disable":
        return [], []
    findings = _file_findings(settings, now)
    errors = [finding.message for finding in findings if not finding.warning]
    warned = [finding.message for finding in findings if finding.warning]
    return errors + _option_problems(settings), warned


class _FileChecker:
    """Loads one side's files, recording a :class:`Finding` per problem instead of stopping."""

    def __init__(self, settings: TlsSettings, now: datetime.datetime) -> None:
        self.settings = settings
        self.now = now
        self.findings: List[Finding] = []

    def load(self, field: str, loader: Callable[[str], Any]) -> Any:
        path = getattr(self.settings, field)
        if not path:
            return None
        try:
            return loader(path)
        except CertificateFileError as exc:
            self.add(field, str(exc))
            return None

    def validity(self, field: str, certificates: Sequence[crypto.X509]) -> None:
        for finding in validity_findings(certificates, self.now):
            self.add(field, finding.message, finding.warning)

    def add(self, field: str, text: str, warning: bool = False) -> None:
        path = getattr(self.settings, field)
        self.findings.append(Finding(f"{self.settings.name(field)}: {path} {text}", warning))


def _file_findings(settings: TlsSettings, now: datetime.datetime) -> List[Finding]:
    check = _FileChecker(settings, now)
    certificates = check.load("cert_file", load_certificates) or []
    check.validity("cert_file", certificates)
    key = check.load("key_file", load_private_key)
    if certificates and key is not None and not key_matches(certificates[0], key):
        check.add("key_file", f"does not match {settings.name('cert_file')} "
                              f"{settings.cert_file}: use the key that certificate was issued for")
    check.validity("ca_file", check.load("ca_file", load_certificates) or [])
    if settings.side == "server" and bool(settings.cert_file) != bool(settings.key_file):
        check.findings.append(Finding(
            "server_tls_cert_file and server_tls_key_file go together: set both to present a "
            "certificate to servers, or neither"))
    return check.findings


def _option_problems(settings: TlsSettings) -> List[str]:
    scratch: Any
    steps: Sequence[Callable[[Any, TlsSettings], None]]
    if settings.side == "client":
        scratch, steps = SSL.Context(SSL.TLS_SERVER_METHOD), CLIENT_OPTION_STEPS
    else:
        scratch, steps = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), SERVER_OPTION_STEPS
    problems = []
    for step in steps:
        try:
            step(scratch, settings)
        except ConfigError as err:
            problems.append(str(err))
    return problems


#: What each sslmode means on each side, in words (SHOW CONFIG's *_tls_policy rows).
_CLIENT_POLICY = {
    "disable": "TLS refused: clients connect in plaintext",
    "allow": "TLS offered; plaintext allowed",
    "prefer": "TLS offered; plaintext allowed",
    "require": "TLS required; no client certificate needed",
    "verify-ca": "TLS required; a client certificate signed by {ca} required",
    "verify-full": "TLS required; a client certificate signed by {ca} whose CN is the user "
                   "name required",
}
_SERVER_POLICY = {
    "disable": "plaintext to servers",
    "allow": "TLS when the server offers it; server certificate not checked",
    "prefer": "TLS when the server offers it; server certificate not checked",
    "require": "TLS required; server certificate not checked",
    "verify-ca": "TLS required; server certificate checked against {ca}",
    "verify-full": "TLS required; server certificate checked against {ca} and the host name",
}


def describe_policy(settings: TlsSettings) -> str:
    """The effective policy of one side in one line, e.g. for SHOW CONFIG."""
    table = _CLIENT_POLICY if settings.side == "client" else _SERVER_POLICY
    text = table.get(settings.sslmode, settings.sslmode)
    return f"{settings.sslmode}: " + text.format(ca=settings.ca_file or "(no CA file)")
