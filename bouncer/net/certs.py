"""Certificates and keys as files and as peers present them: loading PEM, matching a key to its
certificate, expiry, verifying a presented chain against a CA store, and naming a certificate.

pyOpenSSL loads and verifies (so the verdict is OpenSSL's own); cryptography reads names and
keys.  Messages are worded to follow ``<setting> <path>`` and end with what to do.
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

#: A cryptography private key (its type union is spelled differently across cryptography
#: versions, 38 on Debian bookworm included).
PrivateKey = Any

#: A certificate that expires sooner than this gets a warning at start and RELOAD.
EXPIRY_WARNING = datetime.timedelta(days=30)

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.S)

# OpenSSL's X509_V_ERR_* codes that get their own client-facing wording.
_EXPIRED = 10            # X509_V_ERR_CERT_HAS_EXPIRED
_NOT_YET_VALID = 9       # X509_V_ERR_CERT_NOT_YET_VALID
_UNTRUSTED = frozenset({
    2,   # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    7,   # X509_V_ERR_CERT_SIGNATURE_FAILURE
    18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
})


class CertificateFileError(ValueError):
    """A certificate or key file cannot be used; the message continues ``<setting> <path> ``."""


@dataclass(frozen=True)
class Finding:
    """One thing a file check found: an error refuses the configuration, a warning is logged."""

    message: str
    warning: bool = False


@dataclass(frozen=True)
class Rejection:
    """Why a presented certificate was refused.

    ``reason`` is ``untrusted``, ``expired``, ``not-yet-valid`` or ``invalid``; ``detail`` is
    OpenSSL's own words; ``subject`` names the certificate that failed (maybe an intermediate);
    ``when`` is the date that matters for ``expired`` / ``not-yet-valid``.
    """

    reason: str
    detail: str
    subject: str
    when: Optional[datetime.datetime] = None


# -- files ---------------------------------------------------------------------------------------

def read_file(path: str) -> bytes:
    """The file's bytes, or :class:`CertificateFileError` saying why it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise CertificateFileError(f"does not exist ({exc.strerror}): fix the path") from None
    except PermissionError:
        raise CertificateFileError(
            f"cannot be read by uid {os.geteuid()}: make it readable by the user bouncer "
            "runs as") from None
    except IsADirectoryError:
        raise CertificateFileError("is a directory: name the PEM file itself") from None
    except OSError as exc:
        raise CertificateFileError(f"cannot be read ({exc.strerror})") from None


def load_certificates(path: str) -> List[crypto.X509]:
    """Every PEM certificate in *path*, in file order (a chain starts with its leaf)."""
    return parse_certificates(read_file(path))


def parse_certificates(data: bytes) -> List[crypto.X509]:
    """Every PEM certificate in *data*; :class:`CertificateFileError` if there is none."""
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise CertificateFileError(
            "holds no PEM certificate (no -----BEGIN CERTIFICATE----- block): "
            "point it at a PEM certificate file")
    try:
        return [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error as exc:
        raise CertificateFileError(
            f"holds a damaged certificate ({openssl_reason(exc)}): replace the file") from None


def load_private_key(path: str) -> PrivateKey:
    """The unencrypted PEM private key in *path*."""
    data = read_file(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        raise CertificateFileError(
            "is encrypted with a passphrase, which bouncer cannot ask for: store it "
            "unencrypted (openssl pkey -in OLD -out NEW) with mode 0600") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateFileError(
            "holds no PEM private key bouncer can read: point it at the key file") from None


def key_matches(certificate: crypto.X509, key: PrivateKey) -> bool:
    """Whether *key* is the private half of *certificate*'s public key."""
    return _public_key_info(certificate.to_cryptography().public_key()) == _public_key_info(
        key.public_key())


def _public_key_info(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def validity_findings(certificates: Sequence[crypto.X509],
                      now: datetime.datetime) -> Iterator[Finding]:
    """Expired (error), expiring within :data:`EXPIRY_WARNING` or not yet valid (warnings)."""
    for certificate in certificates:
        who = subject(certificate)
        end, start = not_after(certificate), not_before(certificate)
        if end <= now:
            yield Finding(f"holds certificate {who}, which expired on {_date(end)}: "
                          "install a renewed certificate")
        elif end - now < EXPIRY_WARNING:
            yield Finding(f"holds certificate {who}, which expires on {_date(end)} (in "
                          f"{(end - now).days} days): renew it before then", warning=True)
        if start > now:
            yield Finding(f"holds certificate {who}, which is not valid before {_date(start)}: "
                          "check the clock or the certificate", warning=True)


# -- certificates ----------------------------------------------------------------------------------

def subject(certificate: crypto.X509) -> str:
    """The subject as RFC 4514 text, e.g. ``CN=md5user``."""
    return certificate.to_cryptography().subject.rfc4514_string() or "(empty subject)"


def common_name(der: bytes) -> Optional[str]:
    """The subject CN of a DER certificate (``client.peer_cert``), or ``None`` without one."""
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def to_der(certificate: crypto.X509) -> bytes:
    return certificate.to_cryptography().public_bytes(serialization.Encoding.DER)


def not_after(certificate: crypto.X509) -> datetime.datetime:
    return _asn1_time(certificate.get_notAfter())


def not_before(certificate: crypto.X509) -> datetime.datetime:
    return _asn1_time(certificate.get_notBefore())


def build_store(certificates: Sequence[crypto.X509]) -> crypto.X509Store:
    """A trust store holding *certificates* (the CA file's)."""
    store = crypto.X509Store()
    for certificate in certificates:
        store.add_cert(certificate)
    return store


def verify_chain(store: crypto.X509Store, leaf: crypto.X509,
                 intermediates: Sequence[crypto.X509] = ()) -> Optional[Rejection]:
    """Verify *leaf* (with the *intermediates* its peer sent) against *store*, now.

    :return: ``None`` when the chain is valid, else the :class:`Rejection`.
    """
    try:
        crypto.X509StoreContext(store, leaf, chain=list(intermediates) or None
                                ).verify_certificate()
    except crypto.X509StoreContextError as exc:
        code, message = exc.errors[0], str(exc.errors[2])
        failed = exc.certificate
        if code == _EXPIRED:
            return Rejection("expired", message, subject(failed), not_after(failed))
        if code == _NOT_YET_VALID:
            return Rejection("not-yet-valid", message, subject(failed), not_before(failed))
        reason = "untrusted" if code in _UNTRUSTED else "invalid"
        return Rejection(reason, message, subject(failed))
    return None


def openssl_reason(exc: Exception) -> str:
    """The readable part of a pyOpenSSL error (its list of (library, function, reason))."""
    details = exc.args[0] if exc.args else None
    if isinstance(details, list) and details:
        # ", " not "; ": config problems are joined and split on "; ".
        return ", ".join(str(entry[-1]) for entry in details if entry)
    return str(exc) or type(exc).__name__


def _asn1_time(value: Optional[bytes]) -> datetime.datetime:
    # pyOpenSSL gives GeneralizedTime, "YYYYMMDDhhmmssZ".
    text = (value or b"").decode("ascii")
    return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc)


def _date(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
