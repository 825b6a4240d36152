"""SASLprep (RFC 4013) for SCRAM passwords, as libpq and PostgreSQL apply it.

PostgreSQL's rule (src/common/saslprep.c) is followed: a password that is not valid UTF-8, or
that SASLprep refuses (prohibited or unassigned characters, a bidi violation), is used as it
is, so such passwords still work as long as both sides agree.
"""
from __future__ import annotations

import stringprep
import unicodedata
from typing import Optional

_PROHIBITED = (stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22,
               stringprep.in_table_c3, stringprep.in_table_c4, stringprep.in_table_c5,
               stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
               stringprep.in_table_c9, stringprep.in_table_a1)


def saslprep(password: str) -> str:
    """The password SCRAM hashes: SASLprep'd when possible, else unchanged."""
    if password.isascii():
        return password  # SASLprep changes no printable ASCII; PostgreSQL short-cuts too
    prepared = _prepare(password)
    return password if prepared is None else prepared


def _prepare(text: str) -> Optional[str]:
    if any(0xD800 <= ord(char) <= 0xDFFF for char in text):
        return None  # bytes that were not UTF-8 (kept as surrogates): no SASLprep
    mapped = "".join(" " if stringprep.in_table_c12(char) else char
                     for char in text if not stringprep.in_table_b1(char))
    normalized = unicodedata.normalize("NFKC", mapped)
    if any(check(char) for char in normalized for check in _PROHIBITED):
        return None
    if not _bidi_ok(normalized):
        return None
    return normalized


def _bidi_ok(text: str) -> bool:
    """RFC 3454 section 6: right-to-left text must be all right-to-left at both ends."""
    if not any(stringprep.in_table_d1(char) for char in text):
        return True
    if any(stringprep.in_table_d2(char) for char in text):
        return False
    return stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])
