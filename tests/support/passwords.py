"""Password secrets in PostgreSQL's stored forms, for auth_file entries written by tests.

Computed here from the RFCs, not with bouncer's own code, so a bug there cannot hide itself.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Optional


def md5_secret(user: str, password: str) -> str:
    """``md5`` + md5(password + user), as PostgreSQL stores md5 passwords."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def scram_secret(password: str, salt: Optional[bytes] = None, iterations: int = 4096) -> str:
    """``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`` (RFC 5802 / RFC 7677)."""
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    return (f"SCRAM-SHA-256${iterations}:{_b64(salt)}"
            f"${_b64(stored_key)}:{_b64(server_key)}")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
