"""SCRAM-SHA-256: RFC 7677 vector, PostgreSQL secrets, both roles against each other."""
from __future__ import annotations

import base64

import pytest

from bouncer.auth import scram
from bouncer.auth.scram import (
    ScramAuthFailed,
    ScramClient,
    ScramError,
    ScramSecret,
    ScramServer,
    make_scram_secret,
    parse_scram_secret,
)

# Made by PostgreSQL 15 (password_encryption = scram-sha-256) for these passwords.
PG_SECRETS = {
    "pencil": "SCRAM-SHA-256$4096:eBxU7nsEsq/51CDPyTAU1A==$"
              "tLZpryZs/6I6ZEAMfmZwWirqclszwLtr8eX88Y3lSZQ=:CRs9G5dTMn43ptHGvkOwczekLQ1N+lFIxVIu5/FGxxE=",
    "pä$s wörd": "SCRAM-SHA-256$4096:VdLQwDolaN1tNHVk0dY3oQ==$"
                 "utzkHrmq2fp2aPosFSXXWTSz5eDdnSouGCWMebON1RQ=:JZq+2Trl5p3t2xCyE0y22e+pJV4N3lyppn8Kinq7DOA=",
}

# RFC 7677 section 3 (user "user", password "pencil").
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
RFC_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc_server(monkeypatch) -> ScramServer:
    monkeypatch.setattr(scram, "_new_nonce", lambda: RFC_SERVER_NONCE)
    secret = parse_scram_secret(make_scram_secret("pencil", RFC_SALT, 4096))
    return ScramServer(secret)


def exchange(client: ScramClient, server: ScramServer) -> None:
    server_first = server.handle_client_first(client.client_first())
    server_final = server.handle_client_final(client.handle_server_first(server_first))
    client.handle_server_final(server_final)


# --- secrets -------------------------------------------------------------------------

@pytest.mark.parametrize("password, text", PG_SECRETS.items())
def test_make_scram_secret_matches_postgresql(password, text):
    secret = parse_scram_secret(text)
    assert secret.iterations == 4096
    assert make_scram_secret(password, secret.salt, 4096) == text
    assert secret.to_text() == text


def test_make_scram_secret_uses_fresh_salt():
    assert make_scram_secret("pw") != make_scram_secret("pw")
    assert parse_scram_secret(make_scram_secret("pw", iterations=5)).iterations == 5


@pytest.mark.parametrize("text", [
    "md5d41d8cd98f00b204e9800998ecf8427e",
    "plain password",
    "SCRAM-SHA-256$4096:c2FsdA==$short:c2hvcnQ=",
    "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$x:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$٤٠٩٦:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$4096:c2FsdA==",
    "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=$extra",
    "SCRAM-SHA-256$4096:!!!$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$4096:$" + "A" * 43 + "=:" + "A" * 43 + "=",
])
def test_parse_scram_secret_rejects_other_text(text):
    assert parse_scram_secret(text) is None


@pytest.mark.parametrize("password, text", PG_SECRETS.items())
def test_verify_password_against_postgresql_secret(password, text):
    secret = parse_scram_secret(text)
    assert ScramServer.verify_password(secret, password)
    assert not ScramServer.verify_password(secret, password + " ")


# --- server role ---------------------------------------------------------------------

def test_server_reproduces_rfc7677_exchange(monkeypatch):
    server = rfc_server(monkeypatch)
    assert server.handle_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    salted_client_key = scram._keys_from_password("pencil", RFC_SALT, 4096)[0]
    assert server.client_key == salted_client_key


def test_server_rejects_wrong_proof(monkeypatch):
    server = rfc_server(monkeypatch)
    server.handle_client_first(RFC_CLIENT_FIRST)
    bad = RFC_CLIENT_FINAL[:-5] + b"AAAA="
    with pytest.raises(ScramAuthFailed):
        server.handle_client_final(bad)
    assert server.client_key is None


def test_server_refuses_a_second_final_after_failure(monkeypatch):
    server = rfc_server(monkeypatch)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramAuthFailed):
        server.handle_client_final(RFC_CLIENT_FINAL[:-5] + b"AAAA=")
    with pytest.raises(ScramError):
        server.handle_client_final(RFC_CLIENT_FINAL)


@pytest.mark.parametrize("client_first", [
    b"p=tls-server-end-point,,n=,r=abc",   # channel binding requested
    b"n,a=admin,n=,r=abc",                 # authorization identity
    b"x,,n=,r=abc",                        # unknown gs2 flag
    b"n,,m=ext,n=,r=abc",                  # mandatory extension
    b"n,,r=abc",                           # user name attribute missing
    b"n,,n=,r=",                           # empty nonce
    b"n,,n=,r=a\x7fb",                     # non-printable nonce
    b"n,,n=,r=abc,bad",                    # malformed extension
    b"n,n=,r=abc",                         # gs2 header cut short
])
def test_server_refuses_bad_client_first(client_first):
    with pytest.raises(ScramError):
        ScramServer.from_password("pw").handle_client_first(client_first)


def test_server_accepts_y_flag(monkeypatch):
    """'y': the client could bind but believes we cannot; legitimate since we offer no -PLUS."""
    monkeypatch.setattr(scram, "_CLIENT_GS2_HEADER", b"y,,")
    client = ScramClient("pw")
    assert client.client_first().startswith(b"y,,")
    exchange(client, ScramServer.from_password("pw"))


def test_server_checks_binding_data_against_gs2_header():
    server = ScramServer.from_password("pw")
    client = ScramClient("pw")
    first = client.client_first().replace(b"n,,", b"y,,", 1)
    server_first = server.handle_client_first(first)
    final = client.handle_server_first(server_first)  # still claims c=biws ("n,,")
    with pytest.raises(ScramError, match="channel binding"):
        server.handle_client_final(final)


def test_server_refuses_nonce_mismatch(monkeypatch):
    server = rfc_server(monkeypatch)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramError, match="nonce"):
        server.handle_client_final(RFC_CLIENT_FINAL.replace(b"k0,p=", b"k1,p="))


@pytest.mark.parametrize("final", [b"c=biws,r=x", b"r=x,c=biws,p=AAAA", b"c=biws,r=x,p=!!!"])
def test_server_refuses_malformed_client_final(monkeypatch, final):
    server = rfc_server(monkeypatch)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramError):
        server.handle_client_final(final)


def test_server_refuses_messages_out_of_order():
    server = ScramServer.from_password("pw")
    with pytest.raises(ScramError):
        server.handle_client_final(b"c=biws,r=abc,p=AAAA")
    server.handle_client_first(b"n,,n=,r=abc")
    with pytest.raises(ScramError):
        server.handle_client_first(b"n,,n=,r=abc")


def test_mock_server_always_fails_with_a_stable_salt():
    first = ScramServer.mock("ghost").handle_client_first(b"n,,n=,r=abc")
    again = ScramServer.mock("ghost").handle_client_first(b"n,,n=,r=abc")
    other = ScramServer.mock("other").handle_client_first(b"n,,n=,r=abc")
    salts = [message.split(b",")[1] for message in (first, again, other)]
    assert salts[0] == salts[1] != salts[2]
    assert first.endswith(b",i=4096")
    client, server = ScramClient("anything"), ScramServer.mock("ghost")
    with pytest.raises(ScramAuthFailed):
        exchange(client, server)


# --- client role ---------------------------------------------------------------------

def test_client_and_server_agree_with_password():
    server = ScramServer.from_password("s3cret", iterations=4096)
    exchange(ScramClient("s3cret"), server)
    assert server.client_key is not None


def test_a_server_login_derives_its_keys_once_per_salt(monkeypatch):
    # A pool opening many servers in a connection storm must not run PBKDF2 for each.
    derived = []
    real = scram._keys_from_password
    monkeypatch.setattr(scram, "_keys_from_password",
                        lambda *args: derived.append(args) or real(*args))
    scram._server_login_keys.cache_clear()
    secret = ScramServer.from_password("storm", iterations=4096).secret
    for _ in range(3):
        exchange(ScramClient("storm"), ScramServer(secret))
    assert len(derived) == 2  # the server's secret, then the client's keys: once
    exchange(ScramClient("storm"), ScramServer.from_password("storm", iterations=4096))
    assert len(derived) == 4  # a new salt (the password changed on the server): derived again
    with pytest.raises(ScramAuthFailed):
        # The cache never stands in for a wrong password.
        exchange(ScramClient("wrong"), ScramServer(secret))


def test_client_with_wrong_password_fails():
    with pytest.raises(ScramAuthFailed):
        exchange(ScramClient("wrong"), ScramServer.from_password("right"))


def test_client_against_postgresql_secret():
    server = ScramServer(parse_scram_secret(PG_SECRETS["pä$s wörd"]))
    exchange(ScramClient("pä$s wörd"), server)


def test_passthrough_logs_in_with_recovered_client_key():
    """The ClientKey recovered from a client's login opens the server without the password."""
    secret = parse_scram_secret(make_scram_secret("hunter2"))
    front = ScramServer(secret)
    exchange(ScramClient("hunter2"), front)
    back = ScramServer(secret)  # the real server holds the same secret
    exchange(ScramClient(client_key=front.client_key, server_key=secret.server_key), back)


def test_passthrough_with_wrong_server_key_detects_the_impostor():
    secret = parse_scram_secret(make_scram_secret("hunter2"))
    front = ScramServer(secret)
    exchange(ScramClient("hunter2"), front)
    impostor = ScramServer(ScramSecret(secret.iterations, secret.salt, secret.stored_key,
                                       b"\1" * 32))
    with pytest.raises(ScramError, match="signature"):
        exchange(ScramClient(client_key=front.client_key, server_key=secret.server_key),
                 impostor)


def test_client_reports_server_error():
    client = ScramClient("pw")
    server = ScramServer.from_password("pw")
    client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(ScramError, match="invalid-proof"):
        client.handle_server_final(b"e=invalid-proof")


@pytest.mark.parametrize("server_first", [
    b"r=otherNonce,s=c2FsdA==,i=4096",   # does not extend our nonce
    b"s=c2FsdA==,r={n}x,i=4096",          # wrong order
    b"r={n}x,s=c2FsdA==,i=0",             # iterations out of range
    b"r={n}x,s=c2FsdA==,i=99999999999",
    b"r={n}x,s=@@,i=4096",                # salt not base64
    b"r={n},s=c2FsdA==,i=4096",           # server added nothing to the nonce
    b"m=x,r={n}x,s=c2FsdA==,i=4096",      # mandatory extension
])
def test_client_refuses_bad_server_first(server_first):
    client = ScramClient("pw")
    nonce = client.client_first().split(b"r=")[1]
    with pytest.raises(ScramError):
        client.handle_server_first(server_first.replace(b"{n}", nonce))


def test_client_refuses_messages_out_of_order():
    client = ScramClient("pw")
    with pytest.raises(ScramError):
        client.handle_server_first(b"r=abc,s=c2FsdA==,i=4096")
    with pytest.raises(ScramError):
        client.handle_server_final(b"v=AAAA")


@pytest.mark.parametrize("kwargs", [
    {}, {"client_key": b"k" * 32}, {"password": "pw", "client_key": b"k" * 32},
    {"password": "pw", "client_key": b"k" * 32, "server_key": b"s" * 32},
])
def test_client_needs_exactly_one_credential_kind(kwargs):
    with pytest.raises(ValueError):
        ScramClient(**kwargs)


def test_only_plain_scram_is_advertised():
    assert ScramServer.mechanisms == ("SCRAM-SHA-256",)
