"""SCRAM-SHA-256 (RFC 5802, RFC 7677) in both roles, sans-IO, without channel binding.

:class:`ScramServer` authenticates our clients; :class:`ScramClient` logs us in to a
server, either with a password or, in passthrough, with the ClientKey recovered from the
client's own proof plus the ServerKey of the stored secret.  Both exchange opaque byte
strings: the caller wraps them in SASL protocol messages.

We advertise only "SCRAM-SHA-256"; the -PLUS variant (channel binding) is not offered, so
a client asking for it (gs2 flag ``p=``) is refused.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from bouncer.auth.saslprep import saslprep
from bouncer.proto.codec import encode_text

MECHANISM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096
_PREFIX = MECHANISM + "$"
_SALT_LEN = 16  # what PostgreSQL generates
_RAW_NONCE_LEN = 18  # what PostgreSQL and libpq generate
_KEY_LEN = 32  # SHA-256 digest size
_MAX_ITERATIONS = 2**31 - 1  # PostgreSQL stores the count as an int
#: Longest SCRAM message read in either role.  Real ones are under a few hundred bytes; a
#: hostile peer's stop here, before any is parsed or echoed (PgBouncer 1.25.2 fixed a buffer
#: overflow on a long server nonce: ours cannot overflow, but need not carry one either).
MAX_MESSAGE_LEN = 4096
#: Longest nonce, the client's or the combined one (libpq's: 24 characters, the combined 48).
_MAX_NONCE_LEN = 512
_GS2_FLAGS = (b"n", b"y")
#: The gs2 header we send: no channel binding, no authorization identity.
_CLIENT_GS2_HEADER = b"n,,"
#: Keys the fake secrets of unknown users (ScramServer.mock) for this process's life.
_MOCK_KEY = os.urandom(32)


class ScramError(Exception):
    """A SCRAM message was malformed, out of order, or asked for something unsupported."""


class ScramAuthFailed(ScramError):
    """The client's proof did not match the secret: wrong password (SQLSTATE 28P01)."""


@dataclass(frozen=True)
class ScramSecret:
    """What PostgreSQL stores for a SCRAM-SHA-256 password."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def to_text(self) -> str:
        """PostgreSQL's text form ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``."""
        return (f"{_PREFIX}{self.iterations}:{_b64(self.salt).decode()}"
                f"${_b64(self.stored_key).decode()}:{_b64(self.server_key).decode()}")


def parse_scram_secret(text: str) -> Optional[ScramSecret]:
    """Parse PostgreSQL's text form of a SCRAM secret; None if ``text`` is not one."""
    if not text.startswith(_PREFIX):
        return None
    try:
        params, keys = text[len(_PREFIX):].split("$")
        iterations_text, salt_b64 = params.split(":")
        stored_b64, server_b64 = keys.split(":")
        salt = base64.b64decode(salt_b64, validate=True)
        stored_key = base64.b64decode(stored_b64, validate=True)
        server_key = base64.b64decode(server_b64, validate=True)
    except (ValueError, binascii.Error):
        return None
    iterations = _parse_iterations(iterations_text.encode("utf-8", "surrogatepass"))
    if iterations is None or not salt or len(stored_key) != _KEY_LEN or len(server_key) != _KEY_LEN:
        return None
    return ScramSecret(iterations, salt, stored_key, server_key)


def make_scram_secret(password: str, salt: Optional[bytes] = None,
                      iterations: int = DEFAULT_ITERATIONS) -> str:
    """The secret PostgreSQL would store for ``password`` (text form)."""
    return _secret_from_password(password, salt or os.urandom(_SALT_LEN), iterations).to_text()


def _secret_from_password(password: str, salt: bytes, iterations: int) -> ScramSecret:
    client_key, server_key = _keys_from_password(password, salt, iterations)
    return ScramSecret(iterations, salt, _sha256(client_key), server_key)


def _keys_from_password(password: str, salt: bytes, iterations: int) -> Tuple[bytes, bytes]:
    """Return ``(ClientKey, ServerKey)``.

    The password goes through SASLprep first, as RFC 5802 and PostgreSQL do (falling back to
    the raw bytes when SASLprep refuses it).
    """
    salted = hashlib.pbkdf2_hmac("sha256", encode_text(saslprep(password)), salt, iterations)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


@functools.lru_cache(maxsize=256)
def _server_login_keys(password: str, salt: bytes, iterations: int) -> Tuple[bytes, bytes]:
    """:func:`_keys_from_password` for logging in to a server with a configured password.

    PBKDF2 takes milliseconds and blocks every client meanwhile, and a server sends the same
    salt and iteration count at every login, so a pool growing in a connection storm derives
    the keys once (PgBouncer keeps them with the credentials too).  Only for passwords bouncer
    holds anyway; a password a client sends is never a key here.
    """
    return _keys_from_password(password, salt, iterations)


class ScramServer:
    """Server role of one SCRAM-SHA-256 exchange: verify a client's proof.

    Call :meth:`handle_client_first`, then :meth:`handle_client_final`; each instance
    serves one exchange.
    """

    mechanisms = (MECHANISM,)

    def __init__(self, secret: ScramSecret) -> None:
        self.secret = secret
        #: The client's ClientKey, set once its proof verified (for passthrough login).
        self.client_key: Optional[bytes] = None
        #: A mock exchange must fail whatever the client sends.
        self._doomed = False
        self._gs2_header = b""
        self._client_first_bare = b""
        self._nonce = b""
        self._server_first: Optional[bytes] = None
        self._finished = False

    @classmethod
    def from_password(cls, password: str, iterations: int = DEFAULT_ITERATIONS) -> ScramServer:
        """A server for a plain-text password (derives a secret with a fresh salt)."""
        return cls(_secret_from_password(password, os.urandom(_SALT_LEN), iterations))

    @classmethod
    def mock(cls, username: str, iterations: int = DEFAULT_ITERATIONS) -> ScramServer:
        """A server for an unknown user: a full exchange that always fails.

        The salt is derived from the user name and a per-process key, so repeated tries for
        the same name see the same salt, as they would for a real user.
        """
        seed = _hmac(_MOCK_KEY, encode_text(username))
        secret = ScramSecret(iterations, seed[:_SALT_LEN],
                             _hmac(seed, b"StoredKey"), _hmac(seed, b"ServerKey"))
        server = cls(secret)
        server._doomed = True
        return server

    @staticmethod
    def verify_password(secret: ScramSecret, password: str) -> bool:
        """Check a cleartext password (auth_type=plain) against a SCRAM secret."""
        client_key, server_key = _keys_from_password(password, secret.salt, secret.iterations)
        return (hmac.compare_digest(_sha256(client_key), secret.stored_key)
                and hmac.compare_digest(server_key, secret.server_key))

    def handle_client_first(self, data: bytes) -> bytes:
        """Take the client-first-message; return the server-first-message.

        :raises ScramError: malformed, out of order, channel binding or authzid requested.
        """
        _check_size(data, "client-first-message")
        if self._server_first is not None:
            raise ScramError("unexpected client-first-message")
        cbind_flag, authzid, bare = _split_gs2_header(data)
        attrs = _parse_attributes(bare)
        _refuse_mandatory_extension(attrs)
        _expect_keys(attrs, b"nr")  # the user name is ignored: the startup packet has it
        client_nonce = _check_nonce(attrs[1][1])
        self._gs2_header = cbind_flag + b"," + authzid + b","
        self._client_first_bare = bare
        self._nonce = client_nonce + _new_nonce()
        self._server_first = (b"r=" + self._nonce + b",s=" + _b64(self.secret.salt)
                              + b",i=" + str(self.secret.iterations).encode())
        return self._server_first

    def handle_client_final(self, data: bytes) -> bytes:
        """Verify the client-final-message; return the server-final-message ``v=...``.

        :raises ScramAuthFailed: the proof does not match the secret.
        :raises ScramError: malformed or out of order.
        """
        _check_size(data, "client-final-message")
        if self._server_first is None or self._finished:
            raise ScramError("unexpected client-final-message")
        self._finished = True
        attrs = _parse_attributes(data)
        _expect_keys(attrs, b"cr")
        if len(attrs) < 3 or attrs[-1][0] != b"p":
            raise ScramError("client-final-message has no proof")
        if _b64decode(attrs[0][1]) != self._gs2_header:
            raise ScramError("channel binding data does not match the gs2 header")
        if not hmac.compare_digest(attrs[1][1], self._nonce):
            raise ScramError("nonce mismatch")
        proof = _b64decode(attrs[-1][1])
        if len(proof) != _KEY_LEN:
            raise ScramError("malformed client proof")
        without_proof = data[:len(data) - len(attrs[-1][1]) - len(b",p=")]
        auth_message = self._client_first_bare + b"," + self._server_first + b"," + without_proof
        client_key = _xor(proof, _hmac(self.secret.stored_key, auth_message))
        valid = hmac.compare_digest(_sha256(client_key), self.secret.stored_key)
        if self._doomed or not valid:
            raise ScramAuthFailed("SCRAM proof does not match")
        self.client_key = client_key
        return b"v=" + _b64(_hmac(self.secret.server_key, auth_message))


class ScramClient:
    """Client role of one SCRAM-SHA-256 exchange: log in to a server.

    Give either ``password``, or ``client_key`` and ``server_key`` (passthrough: the keys
    of a secret identical to the server's, so the server's salt and iteration count are
    not needed).
    """

    def __init__(self, password: Optional[str] = None, *, client_key: Optional[bytes] = None,
                 server_key: Optional[bytes] = None) -> None:
        if password is None:
            if client_key is None or server_key is None:
                raise ValueError("give either a password or both client_key and server_key")
        elif client_key is not None or server_key is not None:
            raise ValueError("give either a password or keys, not both")
        self._password = password
        self._client_key = client_key
        self._server_key = server_key
        self._client_first_bare = b""
        self._expected_signature: Optional[bytes] = None
        self._finished = False

    def client_first(self) -> bytes:
        """The client-first-message (empty user name: the server uses the startup user)."""
        self._client_first_bare = b"n=,r=" + _new_nonce()
        return _CLIENT_GS2_HEADER + self._client_first_bare

    def handle_server_first(self, data: bytes) -> bytes:
        """Take the server-first-message; return the client-final-message.

        :raises ScramError: malformed, out of order, or a nonce not extending ours.
        """
        _check_size(data, "server-first-message")
        if not self._client_first_bare or self._expected_signature is not None:
            raise ScramError("unexpected server-first-message")
        attrs = _parse_attributes(data)
        _refuse_mandatory_extension(attrs)
        _expect_keys(attrs, b"rsi")
        nonce = _check_nonce(attrs[0][1])
        client_nonce = self._client_first_bare[len(b"n=,r="):]
        if not nonce.startswith(client_nonce) or nonce == client_nonce:
            raise ScramError("server nonce does not extend the client nonce")
        client_key, server_key = self._keys(_b64decode(attrs[1][1]), attrs[2][1])
        without_proof = b"c=" + _b64(_CLIENT_GS2_HEADER) + b",r=" + nonce
        auth_message = self._client_first_bare + b"," + data + b"," + without_proof
        proof = _xor(client_key, _hmac(_sha256(client_key), auth_message))
        self._expected_signature = _hmac(server_key, auth_message)
        return without_proof + b",p=" + _b64(proof)

    def _keys(self, salt: bytes, iterations_text: bytes) -> Tuple[bytes, bytes]:
        if self._password is None:
            assert self._client_key is not None and self._server_key is not None
            return self._client_key, self._server_key
        iterations = _parse_iterations(iterations_text)
        if iterations is None:
            raise ScramError("invalid iteration count")
        return _server_login_keys(self._password, salt, iterations)

    def handle_server_final(self, data: bytes) -> None:
        """Check the server-final-message.

        :raises ScramError: the server reported an error (``e=``) or its signature is wrong.
        """
        _check_size(data, "server-final-message")
        if self._expected_signature is None or self._finished:
            raise ScramError("unexpected server-final-message")
        self._finished = True
        attrs = _parse_attributes(data)
        if attrs[0][0] == b"e":
            raise ScramError(f"server rejected SCRAM: {attrs[0][1].decode('ascii', 'replace')}")
        _expect_keys(attrs, b"v")
        if not hmac.compare_digest(_b64decode(attrs[0][1]), self._expected_signature):
            raise ScramError("server signature does not match: not the server we know")


# --- message syntax ------------------------------------------------------------------

Attribute = Tuple[bytes, bytes]


def _split_gs2_header(data: bytes) -> Tuple[bytes, bytes, bytes]:
    """Split a client-first-message into (cbind flag, authzid, client-first-message-bare)."""
    parts = data.split(b",", 2)
    if len(parts) != 3:
        raise ScramError("malformed client-first-message")
    cbind_flag, authzid, bare = parts
    if cbind_flag.startswith(b"p="):
        raise ScramError("channel binding is not supported")
    if cbind_flag not in _GS2_FLAGS:
        raise ScramError("malformed gs2 header")
    if authzid:
        raise ScramError("authorization identity is not supported")
    return cbind_flag, authzid, bare


def _parse_attributes(message: bytes) -> List[Attribute]:
    """Split ``a=value,b=value`` into ``[(b"a", b"value"), ...]``."""
    attrs = []
    for part in message.split(b","):
        key = part[:1]
        if part[1:2] != b"=" or not key.isalpha():
            raise ScramError("malformed SCRAM attribute")
        attrs.append((key, part[2:]))
    return attrs


def _expect_keys(attrs: List[Attribute], keys: bytes) -> None:
    """Require the first attributes to be ``keys`` in order; later ones are extensions."""
    found = b"".join(key for key, _ in attrs[:len(keys)])
    if found != keys:
        raise ScramError(f"expected attributes {keys.decode()!r}, got {found.decode()!r}")


def _refuse_mandatory_extension(attrs: List[Attribute]) -> None:
    if attrs[0][0] == b"m":
        raise ScramError("mandatory SCRAM extensions are not supported")


def _check_size(message: bytes, what: str) -> None:
    if len(message) > MAX_MESSAGE_LEN:
        raise ScramError(f"{what} too long ({len(message)} bytes, at most {MAX_MESSAGE_LEN})")


def _check_nonce(nonce: bytes) -> bytes:
    """A nonce is non-empty printable ASCII without ',' (the split already removed commas)."""
    if len(nonce) > _MAX_NONCE_LEN:
        raise ScramError(f"nonce too long ({len(nonce)} bytes, at most {_MAX_NONCE_LEN})")
    if not nonce or any(byte < 0x21 or byte > 0x7E for byte in nonce):
        raise ScramError("malformed nonce")
    return nonce


def _parse_iterations(text: bytes) -> Optional[int]:
    if not text.isdigit() or len(text) > 10:
        return None
    iterations = int(text)
    return iterations if 0 < iterations <= _MAX_ITERATIONS else None


# --- primitives ----------------------------------------------------------------------

def _new_nonce() -> bytes:
    return _b64(os.urandom(_RAW_NONCE_LEN))


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _b64decode(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise ScramError("malformed base64 in SCRAM message") from None


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(left: bytes, right: bytes) -> bytes:
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(len(left), "big")
