"""Generating the test PKI: two CAs, a server certificate and client certificates.

Uses ``cryptography`` (a test dependency); the daemon itself loads certificates with pyOpenSSL.
EC P-256 keys keep generation fast; every certificate carries subject/authority key identifiers
so that strict verifiers (Python 3.13's default context) accept them.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import List, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ONE_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, both in memory."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertPaths:
    """PEM files written by :func:`write_test_pki` (keys are 0600, as libpq demands)."""

    dir: str
    ca_cert: str
    ca_key: str
    other_ca_cert: str          # an unrelated CA: nothing below is signed by it but one cert
    other_ca_key: str
    server_cert: str            # CN=localhost, SAN localhost, 127.0.0.1, ::1
    server_key: str
    client_cert: str            # CN=md5user
    client_key: str
    someoneelse_cert: str       # CN=someoneelse
    someoneelse_key: str
    expired_client_cert: str    # CN=md5user, expired yesterday
    expired_client_key: str
    untrusted_client_cert: str  # CN=md5user, signed by the other CA
    untrusted_client_key: str


def make_ca(common_name: str) -> Issued:
    """A self-signed CA certificate valid for ten years."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    builder = _builder(name, name, key, _now() - ONE_DAY, _now() + 3650 * ONE_DAY)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                    critical=True)
    builder = builder.add_extension(_key_usage(cert_sign=True), critical=True)
    return Issued(builder.sign(key, hashes.SHA256()), key)


def issue(ca: Issued, common_name: str, *, server: bool = False,
          not_after: Optional[datetime.datetime] = None) -> Issued:
    """A leaf certificate signed by ``ca``: a TLS server cert or (default) a client cert."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = not_after or _now() + 365 * ONE_DAY
    not_before = min(_now() - ONE_DAY, not_after - 30 * ONE_DAY)
    builder = _builder(_name(common_name), ca.cert.subject, key, not_before, not_after)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                    critical=True)
    builder = builder.add_extension(_key_usage(cert_sign=False), critical=True)
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
        ca.key.public_key()), critical=False)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(_loopback_names()),
                                        critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write_test_pki(directory: str) -> CertPaths:
    """Generate the whole test PKI into ``directory`` and return the file paths."""
    os.makedirs(directory, exist_ok=True)
    ca, other_ca = make_ca("bouncer test CA"), make_ca("unrelated test CA")
    issued = {
        "ca": ca,
        "other_ca": other_ca,
        "server": issue(ca, "localhost", server=True),
        "client": issue(ca, "md5user"),
        "someoneelse": issue(ca, "someoneelse"),
        "expired_client": issue(ca, "md5user", not_after=_now() - ONE_DAY),
        "untrusted_client": issue(other_ca, "md5user"),
    }
    paths = {}
    for label, pair in issued.items():
        paths[f"{label}_cert"] = write_pem(directory, f"{label}.crt", _cert_pem(pair.cert))
        paths[f"{label}_key"] = write_pem(directory, f"{label}.key", _key_pem(pair.key), 0o600)
    return CertPaths(dir=directory, **paths)


def write_pem(directory: str, name: str, data: bytes, mode: int = 0o644) -> str:
    """Write ``data`` to ``directory/name`` with permissions ``mode``; returns the path."""
    path = os.path.join(directory, name)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as out:
        out.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is ignored when the file already existed
    return path


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             not_before: datetime.datetime,
             not_after: datetime.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False))


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False,
                         key_encipherment=False, data_encipherment=False,
                         key_agreement=not cert_sign, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _loopback_names() -> List[x509.GeneralName]:
    return [x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
