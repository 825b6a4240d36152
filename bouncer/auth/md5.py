"""PostgreSQL's md5 password scheme: stored secrets, salted client responses, verification.

A stored md5 secret is ``"md5" + hex(md5(password + user))``; what a client sends for a
4-byte salt is ``"md5" + hex(md5(hex_of_secret + salt))``.  Knowing the secret is enough
to log in, which is why bouncer can log in to servers with an md5 secret from auth_file.
"""
from __future__ import annotations

import hashlib
import hmac

from bouncer.auth.scram import parse_scram_secret
from bouncer.proto.codec import encode_text

_PREFIX = "md5"
_HEX_DIGITS = frozenset("0123456789abcdef")
_SECRET_LEN = len(_PREFIX) + 32


def is_md5_secret(s: str) -> bool:
    """True when ``s`` looks like a stored md5 secret (PostgreSQL's test: prefix, 32 hex)."""
    return (len(s) == _SECRET_LEN and s.startswith(_PREFIX)
            and _HEX_DIGITS.issuperset(s[len(_PREFIX):]))


def md5_secret(user: str, password: str) -> str:
    """The secret PostgreSQL stores for ``password_encryption = md5``."""
    return _PREFIX + _md5_hex(encode_text(password + user))


def md5_response(secret_or_password: str, user: str, salt: bytes) -> str:
    """What a client sends after AuthenticationMD5Password with ``salt``.

    :param secret_or_password: a plain password or an ``md5...`` secret.
    """
    secret = (secret_or_password if is_md5_secret(secret_or_password)
              else md5_secret(user, secret_or_password))
    return _PREFIX + _md5_hex(secret[len(_PREFIX):].encode("ascii") + salt)


def verify_md5_response(stored: str, user: str, salt: bytes, response: str) -> bool:
    """Check a client's md5 ``response`` against ``stored`` (plain password or md5 secret).

    A SCRAM secret cannot verify an md5 response (PostgreSQL refuses too): treating its
    text as a password would let anyone who read the secret log in with it.
    """
    if parse_scram_secret(stored) is not None:
        return False
    expected = md5_response(stored, user, salt).encode("ascii")
    # surrogatepass: the response is client-supplied text and must never raise here.
    return hmac.compare_digest(expected, response.encode("utf-8", "surrogatepass"))


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
