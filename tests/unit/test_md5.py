"""md5 password secrets and salted responses."""
from __future__ import annotations

import hashlib

import pytest

from bouncer.auth.md5 import is_md5_secret, md5_response, md5_secret, verify_md5_response
from bouncer.auth.scram import make_scram_secret

SALT = b"\x01\x02\x03\x04"
# What PostgreSQL 15 stored for role u3 with password 'pencil' (password_encryption = md5).
PG_SECRET_U3 = "md59be8ca6530942872ce7292e98ad64683"


def test_md5_secret_matches_postgresql():
    assert md5_secret("u3", "pencil") == PG_SECRET_U3


def test_md5_response_is_what_libpq_sends():
    inner = hashlib.md5(b"pencilu3").hexdigest()
    expected = "md5" + hashlib.md5(inner.encode() + SALT).hexdigest()
    assert md5_response("pencil", "u3", SALT) == expected


def test_md5_response_same_from_password_or_secret():
    assert md5_response(PG_SECRET_U3, "u3", SALT) == md5_response("pencil", "u3", SALT)


def test_md5_response_depends_on_salt():
    assert md5_response("pencil", "u3", SALT) != md5_response("pencil", "u3", b"\0\0\0\0")


@pytest.mark.parametrize("stored", ["pencil", PG_SECRET_U3])
def test_verify_accepts_right_response(stored):
    assert verify_md5_response(stored, "u3", SALT, md5_response("pencil", "u3", SALT))


@pytest.mark.parametrize("response", [
    "md5" + "0" * 32, "", "pencil", PG_SECRET_U3, "md5\udcff" + "0" * 31, "ñ" * 35,
])
def test_verify_rejects_wrong_response_without_raising(response):
    assert not verify_md5_response(PG_SECRET_U3, "u3", SALT, response)


def test_verify_rejects_response_for_other_user():
    assert not verify_md5_response("pencil", "u3", SALT, md5_response("pencil", "u4", SALT))


def test_scram_secret_never_verifies_md5():
    """Someone who read the SCRAM secret must not log in by using it as a password."""
    secret = make_scram_secret("pencil")
    assert not verify_md5_response(secret, "u3", SALT, md5_response(secret, "u3", SALT))


@pytest.mark.parametrize("text, expected", [
    (PG_SECRET_U3, True),
    ("md5" + "A" * 32, False),      # PostgreSQL writes lowercase hex only
    ("md5" + "0" * 31, False),
    ("md5" + "g" * 32, False),
    ("pencil", False),
    ("SCRAM-SHA-256$4096:abc", False),
])
def test_is_md5_secret(text, expected):
    assert is_md5_secret(text) is expected


def test_non_utf8_password_hashes_its_original_bytes():
    """auth_file bytes that are not UTF-8 arrive surrogate-escaped; hash the real bytes."""
    password = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert md5_secret("u", password) == "md5" + hashlib.md5(b"caf\xe9u").hexdigest()
