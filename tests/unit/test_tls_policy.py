"""The TLS policy without a pooler process: setting syntax, file checks, contexts, the
cooperative TLS socket (driven in-process over a gevent socketpair) and the login decision."""
from __future__ import annotations

import datetime
import logging
import re
import socket
import ssl
from types import SimpleNamespace
from typing import Any, Dict, Optional, Tuple

import gevent
import gevent.socket
import gevent.ssl
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from bouncer.builtin import tls as policy
from bouncer.config import SETTINGS, ConfigProblems
from bouncer.errors import ConfigError, Refusal
from bouncer.net import certs as certfiles
from bouncer.net.tls import (CIPHER_SHORTCUTS, ClientTlsContext, TlsSettings,
                             build_client_context, build_server_context, cipher_string,
                             describe_connection, is_tls_setting, peer_certificate_problem,
                             protocol_range, servers_need_reconnect)
from bouncer.net.tls_check import check_settings
from bouncer.net.tls_socket import TlsError, TlsSocket
from tests.support.certgen import CertPaths, issue, make_ca, write_pem

NOW = datetime.datetime.now(datetime.timezone.utc)
TLS_COLUMN = r"^TLSv1\.[23]/[A-Z0-9_-]+(/(ECDH|DH)=\w+)?$"


def client_settings(certs: CertPaths, **overrides: str) -> TlsSettings:
    values = dict(side="client", sslmode="verify-full", key_file=certs.server_key,
                  cert_file=certs.server_cert, ca_file=certs.ca_cert, protocols="secure",
                  ciphers="default", tls13_ciphers="", ecdhcurve="auto", dheparams="auto")
    values.update(overrides)
    return TlsSettings(**values)


def server_settings(**overrides: str) -> TlsSettings:
    values = dict(side="server", sslmode="prefer", key_file="", cert_file="", ca_file="",
                  protocols="secure", ciphers="default", tls13_ciphers="")
    values.update(overrides)
    return TlsSettings(**values)


def errors_of(settings: TlsSettings) -> str:
    errors, _warnings = check_settings(settings, NOW)
    return "\n".join(errors)


# -- protocols and ciphers ---------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("secure", ("tlsv1.2", "tlsv1.3")),
    ("", ("tlsv1.2", "tlsv1.3")),
    ("all", ("tlsv1.0", "tlsv1.3")),
    ("legacy", ("tlsv1.0", "tlsv1.3")),
    ("TLSv1.2", ("tlsv1.2", "tlsv1.2")),
    ("tlsv1.2, tlsv1.3", ("tlsv1.2", "tlsv1.3")),
    ("tlsv1.1:tlsv1.2", ("tlsv1.1", "tlsv1.2")),
    ("!tlsv1.0", ("tlsv1.1", "tlsv1.3")),
    ("all,!tlsv1.3", ("tlsv1.0", "tlsv1.2")),
])
def test_protocol_range_follows_pgbouncer_syntax(text: str, expected: Tuple[str, str]) -> None:
    assert protocol_range(text) == expected


@pytest.mark.parametrize("text, complaint", [
    ("tlsv1.4", "unknown protocol 'tlsv1.4'"),
    ("sslv3", "unknown protocol 'sslv3'"),
    ("all,!all", "no protocol left"),
    ("tlsv1.0,tlsv1.2", "consecutive"),
])
def test_protocol_range_refuses_what_openssl_cannot_do(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        protocol_range(text)


@given(st.text(max_size=40))
def test_protocol_range_answers_any_text_with_a_range_or_value_error(text: str) -> None:
    try:
        low, high = protocol_range(text)
    except ValueError:
        return
    assert low <= high  # the names sort in version order


def test_cipher_shortcuts_expand_and_other_strings_pass_through() -> None:
    assert cipher_string("SECURE") == cipher_string("default") == CIPHER_SHORTCUTS["secure"]
    assert cipher_string("legacy") == cipher_string("compat") == "HIGH:+3DES:!aNULL"
    assert cipher_string("all") == "ALL:!aNULL:!eNULL"
    assert "AES256" in cipher_string("fast") and "AES256" not in cipher_string("normal")
    assert cipher_string(" ECDHE-RSA-AES128-GCM-SHA256 ") == "ECDHE-RSA-AES128-GCM-SHA256"


@pytest.mark.parametrize("shortcut", sorted(set(CIPHER_SHORTCUTS) - {""}))
def test_every_cipher_shortcut_is_accepted_by_openssl(certs: CertPaths, shortcut: str) -> None:
    assert errors_of(client_settings(certs, ciphers=shortcut)) == ""
    assert errors_of(server_settings(ciphers=shortcut)) == ""


# -- certificate files -------------------------------------------------------------------------

@given(st.binary(max_size=300))
def test_pem_parsing_of_hostile_bytes_yields_certificates_or_a_file_error(data: bytes) -> None:
    try:
        assert certfiles.parse_certificates(data)
    except certfiles.CertificateFileError:
        pass


@given(st.binary(max_size=200))
def test_a_damaged_certificate_block_is_a_file_error(body: bytes) -> None:
    data = b"-----BEGIN CERTIFICATE-----\n" + body + b"\n-----END CERTIFICATE-----\n"
    try:
        certfiles.parse_certificates(data)
    except certfiles.CertificateFileError as exc:
        assert "certificate" in str(exc)


def test_good_client_and_server_settings_have_no_problems(certs: CertPaths) -> None:
    assert check_settings(client_settings(certs), NOW) == ([], [])
    assert check_settings(server_settings(sslmode="verify-full", ca_file=certs.ca_cert,
                                          cert_file=certs.client_cert,
                                          key_file=certs.client_key), NOW) == ([], [])


def test_disabled_side_is_not_checked(certs: CertPaths) -> None:
    assert check_settings(client_settings(certs, sslmode="disable", key_file="/nope"), NOW) == (
        [], [])


def test_missing_file_names_setting_path_and_fix(certs: CertPaths) -> None:
    assert errors_of(client_settings(certs, key_file="/nonexistent/server.key")) == (
        "client_tls_key_file: /nonexistent/server.key does not exist (No such file or "
        "directory): fix the path")


def test_directory_instead_of_file(certs: CertPaths) -> None:
    assert errors_of(client_settings(certs, ca_file=certs.dir)) == (
        f"client_tls_ca_file: {certs.dir} is a directory: name the PEM file itself")


def test_key_that_does_not_match_its_certificate(certs: CertPaths) -> None:
    message = errors_of(client_settings(certs, key_file=certs.client_key))
    assert message == (f"client_tls_key_file: {certs.client_key} does not match "
                       f"client_tls_cert_file {certs.server_cert}: use the key that certificate "
                       "was issued for")


def test_ca_file_without_a_certificate(certs: CertPaths) -> None:
    message = errors_of(client_settings(certs, ca_file=certs.ca_key))
    assert message.startswith(f"client_tls_ca_file: {certs.ca_key} holds no PEM certificate")


def test_key_file_without_a_key(certs: CertPaths) -> None:
    message = errors_of(client_settings(certs, key_file=certs.server_cert))
    assert message == (f"client_tls_key_file: {certs.server_cert} holds no PEM private key "
                       "bouncer can read: point it at the key file")


def test_encrypted_key_is_refused_instead_of_prompting(certs: CertPaths, tmp_path: Any) -> None:
    key = serialization.load_pem_private_key(open(certs.server_key, "rb").read(), None)
    path = write_pem(str(tmp_path), "locked.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")), 0o600)
    assert "is encrypted with a passphrase" in errors_of(client_settings(certs, key_file=path))


def test_expired_certificate_is_an_error(certs: CertPaths) -> None:
    message = errors_of(client_settings(certs, cert_file=certs.expired_client_cert,
                                        key_file=certs.expired_client_key))
    assert message.startswith(f"client_tls_cert_file: {certs.expired_client_cert} holds "
                              "certificate CN=md5user, which expired on ")
    assert message.endswith(": install a renewed certificate")


def test_certificate_expiring_within_30_days_is_a_warning(tmp_path: Any) -> None:
    ca = make_ca("short-lived test CA")
    leaf = issue(ca, "localhost", server=True, not_after=NOW + datetime.timedelta(days=10))
    cert = write_pem(str(tmp_path), "soon.crt", leaf.cert.public_bytes(serialization.Encoding.PEM))
    key = write_pem(str(tmp_path), "soon.key", leaf.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), 0o600)
    errors, warnings = check_settings(TlsSettings("client", "require", key, cert, "", "secure",
                                                  "default", ""), NOW)
    assert errors == []
    assert len(warnings) == 1
    assert warnings[0].startswith(f"client_tls_cert_file: {cert} holds certificate CN=localhost, "
                                  "which expires on ")
    assert "(in 9 days): renew it before then" in warnings[0]


@pytest.mark.parametrize("field, value, complaint", [
    ("protocols", "tlsv1.4", "client_tls_protocols: 'tlsv1.4': unknown protocol 'tlsv1.4'"),
    ("ciphers", "nonsense", "client_tls_ciphers: 'nonsense': OpenSSL accepts no cipher from it"),
    ("ecdhcurve", "nocurve", "client_tls_ecdhcurve: 'nocurve' is not a curve OpenSSL knows"),
    ("dheparams", "legacy", "client_tls_dheparams: 'legacy' is not supported: use auto or none"),
    # PgBouncer's words, which its tests and operators' log watches look for
    ("tls13_ciphers", "unknown",
     "client_tls13_ciphers: failed to set the TLSv1.3 cipher suites to 'unknown'"),
])
def test_client_options_openssl_rejects(certs: CertPaths, field: str, value: str,
                                        complaint: str) -> None:
    assert errors_of(client_settings(certs, **{field: value})).startswith(complaint)


def test_known_curve_and_tls13_suites_are_accepted(certs: CertPaths) -> None:
    settings = client_settings(certs, ecdhcurve="secp384r1")
    assert errors_of(settings) == ""
    if hasattr(build_client_context(settings).ssl_context, "set_tls13_ciphersuites"):
        assert errors_of(client_settings(certs, tls13_ciphers="TLS_AES_256_GCM_SHA384")) == ""


def test_server_side_checks(certs: CertPaths) -> None:
    assert "server_tls_cert_file and server_tls_key_file go together" in errors_of(
        server_settings(cert_file=certs.client_cert))
    assert errors_of(server_settings(tls13_ciphers="TLS_AES_256_GCM_SHA384")).startswith(
        "server_tls13_ciphers: Python's ssl module cannot choose TLS 1.3 cipher suites")
    assert errors_of(server_settings(ca_file="/nonexistent/root.crt")) == (
        "server_tls_ca_file: /nonexistent/root.crt does not exist (No such file or "
        "directory): fix the path")


@pytest.mark.parametrize("old, new, reconnect", [
    ({}, {}, False),
    ({}, {"protocols": "all"}, False),  # TLS to servers off before and after
    ({}, {"sslmode": "prefer"}, True),
    ({"sslmode": "require"}, {"sslmode": "disable"}, True),
    ({"sslmode": "require"}, {"sslmode": "require", "ca_file": "/ca.crt"}, True),
    ({"sslmode": "require"}, {"sslmode": "require"}, False),
])
def test_servers_reconnect_when_the_server_tls_settings_change(old: Dict[str, str],
                                                               new: Dict[str, str],
                                                               reconnect: bool) -> None:
    defaults = {"sslmode": "disable"}
    assert servers_need_reconnect(server_settings(**{**defaults, **old}),
                                  server_settings(**{**defaults, **new})) is reconnect


@pytest.mark.parametrize("name, tls", [
    ("client_tls_key_file", True), ("server_tls_sslmode", True), ("client_tls13_ciphers", True),
    ("server_tls13_ciphers", True), ("auth_type", False), ("server_login_retry", False),
])
def test_tls_settings_are_told_apart_as_pgbouncer_does(name: str, tls: bool) -> None:
    assert is_tls_setting(name) is tls


def test_every_problem_is_reported_not_just_the_first(certs: CertPaths) -> None:
    errors, _ = check_settings(client_settings(certs, key_file="/nope", ca_file="/nope2",
                                               ciphers="nonsense", protocols="x"), NOW)
    assert [error.split(":")[0] for error in errors] == [
        "client_tls_key_file", "client_tls_ca_file", "client_tls_protocols",
        "client_tls_ciphers"]


def test_no_message_contains_the_separator_check_splits_on(certs: CertPaths) -> None:
    errors, _ = check_settings(client_settings(certs, ciphers="nonsense",
                                               tls13_ciphers="NOPE"), NOW)
    assert errors and all("; " not in error for error in errors)


# -- contexts ----------------------------------------------------------------------------------

def test_client_context_requests_certificates_only_with_a_ca(certs: CertPaths) -> None:
    assert build_client_context(client_settings(certs)).ca_store is not None
    assert build_client_context(client_settings(certs, sslmode="require",
                                                ca_file="")).ca_store is None


def test_client_context_build_errors_name_the_setting(certs: CertPaths) -> None:
    with pytest.raises(ConfigError, match="^client_tls_key_file: /nope does not exist"):
        build_client_context(client_settings(certs, key_file="/nope"))
    with pytest.raises(ConfigError, match="^client_tls_cert_file: .* cannot be used with "
                                          "client_tls_key_file"):
        build_client_context(client_settings(certs, key_file=certs.client_key))


@pytest.mark.parametrize("mode, verify_mode, check_hostname", [
    ("allow", ssl.CERT_NONE, False), ("prefer", ssl.CERT_NONE, False),
    ("require", ssl.CERT_NONE, False), ("verify-ca", ssl.CERT_REQUIRED, False),
    ("verify-full", ssl.CERT_REQUIRED, True),
])
def test_server_context_verifies_as_the_mode_says(certs: CertPaths, mode: str, verify_mode: int,
                                                  check_hostname: bool) -> None:
    context = build_server_context(server_settings(sslmode=mode, ca_file=certs.ca_cert,
                                                   protocols="tlsv1.3"))
    assert (context.verify_mode, context.check_hostname) == (verify_mode, check_hostname)
    assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_3


# -- the cooperative TLS socket, in-process ----------------------------------------------------

def handshake(context: ClientTlsContext, cert: Optional[Tuple[str, str]] = None,
              maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
              ) -> Tuple[TlsSocket, Any]:
    """Accept with *context* on one end of a socketpair; connect with gevent's ssl on the other."""
    ours, theirs = gevent.socket.socketpair()
    client_context = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = gevent.ssl.CERT_NONE
    client_context.maximum_version = maximum
    if cert is not None:
        client_context.load_cert_chain(*cert)
    accepting = gevent.spawn(context.wrap_socket, ours, server_side=True)
    client = client_context.wrap_socket(theirs)
    return accepting.get(timeout=5), client


@pytest.fixture(scope="module")
def verifying_context(certs: CertPaths) -> ClientTlsContext:
    return build_client_context(client_settings(certs))


def test_handshake_exposes_what_was_negotiated(verifying_context: ClientTlsContext,
                                               certs: CertPaths) -> None:
    server, client = handshake(verifying_context, (certs.client_cert, certs.client_key))
    assert server.version() == "TLSv1.3" and server.cipher()[0].startswith("TLS_")
    assert re.match(TLS_COLUMN, describe_connection(server))
    assert describe_connection(client) == f"TLSv1.3/{client.cipher()[0]}"
    with open(certs.client_cert, "rb") as pem:
        expected = certfiles.to_der(certfiles.parse_certificates(pem.read())[0])
    assert server.getpeercert(binary_form=True) == expected
    assert peer_certificate_problem(server) is None
    with pytest.raises(ValueError):
        server.getpeercert()


def test_client_without_certificate_completes_the_handshake(
        verifying_context: ClientTlsContext) -> None:
    server, client = handshake(verifying_context)
    assert server.getpeercert(binary_form=True) is None
    assert peer_certificate_problem(server) is None
    client.sendall(b"startup")
    assert server.recv(100) == b"startup"


@pytest.mark.parametrize("which, reason, detail", [
    ("untrusted_client", "untrusted", "unable to get local issuer certificate"),
    ("expired_client", "expired", "certificate has expired"),
])
def test_bad_certificates_complete_the_handshake_and_are_judged_after(
        verifying_context: ClientTlsContext, certs: CertPaths, which: str, reason: str,
        detail: str) -> None:
    server, _client = handshake(verifying_context, (getattr(certs, f"{which}_cert"),
                                                    getattr(certs, f"{which}_key")))
    rejection = peer_certificate_problem(server)
    assert (rejection.reason, rejection.detail, rejection.subject) == (reason, detail,
                                                                       "CN=md5user")


def test_large_transfers_both_ways(verifying_context: ClientTlsContext) -> None:
    server, client = handshake(verifying_context)
    payload = bytes(range(256)) * 4096  # 1 MiB: many records, and a full socket buffer

    def drain(sock: Any, size: int) -> bytes:
        chunks, got = [], 0
        while got < size:
            chunk = sock.recv(65536)
            assert chunk
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    reader = gevent.spawn(drain, client, len(payload))
    server.sendall(payload)
    assert reader.get(timeout=10) == payload
    writer = gevent.spawn(client.sendall, payload)
    assert drain(server, len(payload)) == payload
    writer.get(timeout=10)


def test_partial_reads_leave_the_rest_pending(verifying_context: ClientTlsContext) -> None:
    server, client = handshake(verifying_context)
    client.sendall(b"hello world")
    assert server.recv(5) == b"hello"
    assert server.pending() == 6  # decrypted already: the fd will not show it as readable
    assert server.recv(100) == b" world"
    assert server.pending() == 0


def test_send_reports_what_it_wrote(verifying_context: ClientTlsContext) -> None:
    server, client = handshake(verifying_context)
    written = server.send(b"x" * 100000)
    assert 0 < written <= 100000
    received = b""
    while len(received) < written:
        received += client.recv(65536)
    assert received == b"x" * written


def test_recv_times_out_as_a_socket_does(verifying_context: ClientTlsContext) -> None:
    server, _client = handshake(verifying_context)
    server.settimeout(0.05)
    assert server.gettimeout() == 0.05
    with pytest.raises(socket.timeout):
        server.recv(10)


def test_shutdown_wakes_a_blocked_reader_with_end_of_stream(
        verifying_context: ClientTlsContext) -> None:
    server, _client = handshake(verifying_context)
    reader = gevent.spawn(server.recv, 10)
    gevent.sleep(0.01)
    server.shutdown(socket.SHUT_RDWR)
    assert reader.get(timeout=5) == b""


def test_close_interrupts_a_blocked_reader(verifying_context: ClientTlsContext) -> None:
    server, _client = handshake(verifying_context)
    reader = gevent.spawn(server.recv, 10)
    gevent.sleep(0.01)
    server.close()
    with pytest.raises(OSError):
        reader.get(timeout=5)


def test_peer_close_notify_reads_as_end_of_stream(verifying_context: ClientTlsContext) -> None:
    server, client = handshake(verifying_context)
    closing = gevent.spawn(client.unwrap)
    assert server.recv(10) == b""
    server.close()
    closing.get(timeout=5)


def test_peer_vanishing_is_end_of_stream_or_a_reset(verifying_context: ClientTlsContext) -> None:
    server, client = handshake(verifying_context)
    client.close()  # unread session tickets make the kernel answer with a reset
    try:
        assert server.recv(10) == b""
    except ConnectionResetError:
        pass


def test_non_tls_bytes_fail_the_handshake(verifying_context: ClientTlsContext) -> None:
    ours, theirs = gevent.socket.socketpair()
    theirs.sendall(b"GET / HTTP/1.0\r\n\r\n")
    with pytest.raises(TlsError):
        verifying_context.wrap_socket(ours)


def test_protocol_floor_is_enforced(certs: CertPaths) -> None:
    context = build_client_context(client_settings(certs, protocols="tlsv1.3"))
    with pytest.raises((OSError, gevent.Timeout)):
        with gevent.Timeout(5):
            handshake(context, maximum=ssl.TLSVersion.TLSv1_2)


@pytest.mark.parametrize("group, shown", [("x25519", "ECDH=X25519"),
                                          ("secp256r1", "ECDH=prime256v1"),
                                          ("ffdhe2048", "DH=2048"), (None, None)])
def test_tls_column_names_the_key_exchange_as_pgbouncer(group: Optional[str],
                                                        shown: Optional[str]) -> None:
    sock = SimpleNamespace(version=lambda: "TLSv1.3",
                           cipher=lambda: ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256),
                           group=lambda: group)
    expected = "TLSv1.3/TLS_AES_256_GCM_SHA384" + (f"/{shown}" if shown else "")
    assert describe_connection(sock) == expected


# -- the login decision (bouncer_check_client_tls) and validate_config --------------------------

def decide(mode: str, tls: str = "", peer_cert: Optional[bytes] = None, sock: Any = None,
           user: str = "md5user", unix: bool = False) -> Optional[str]:
    app = SimpleNamespace(config=SimpleNamespace(client_tls_sslmode=mode, auth_type="md5"))
    client = SimpleNamespace(unix=unix, tls=tls, peer_cert=peer_cert, sock=sock, user=user)
    try:
        policy.bouncer_check_client_tls(app=app, client=client, session=client)
    except Refusal as refusal:
        assert (refusal.severity, refusal.sqlstate) == ("FATAL", "28000")
        return refusal.message
    return None


def der(path: str) -> bytes:
    with open(path, "rb") as pem:
        return certfiles.to_der(certfiles.parse_certificates(pem.read())[0])


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer"])
def test_plaintext_is_fine_below_require(mode: str) -> None:
    assert decide(mode) is None


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_plaintext_is_refused_naming_the_setting(mode: str) -> None:
    assert decide(mode) == (f"SSL required: this server has client_tls_sslmode={mode}; "
                            "connect with sslmode=require")


def test_unix_socket_clients_are_not_asked_for_tls() -> None:
    assert decide("verify-full", unix=True) is None


def test_tls_without_certificate_passes_require_but_not_verify() -> None:
    assert decide("require", tls="TLSv1.3/x") is None
    assert decide("verify-ca", tls="TLSv1.3/x") == (
        "client certificate required: this server has client_tls_sslmode=verify-ca; connect "
        "with sslcert=... and sslkey=... (a certificate issued by the CA in client_tls_ca_file)")


def test_verify_full_wants_the_common_name_to_be_the_user(certs: CertPaths) -> None:
    assert decide("verify-full", tls="t", peer_cert=der(certs.client_cert)) is None
    assert decide("verify-ca", tls="t", peer_cert=der(certs.someoneelse_cert)) is None
    assert decide("verify-full", tls="t", peer_cert=der(certs.someoneelse_cert)) == (
        'client certificate CN "someoneelse" does not match user "md5user": '
        "client_tls_sslmode=verify-full requires the certificate's common name to be the user "
        "name; connect as that user or with that user's certificate")


@pytest.mark.parametrize("mode", ["require", "verify-ca"])
def test_presented_certificate_is_judged_in_every_mode(verifying_context: ClientTlsContext,
                                                       certs: CertPaths, mode: str) -> None:
    server, _client = handshake(verifying_context, (certs.untrusted_client_cert,
                                                    certs.untrusted_client_key))
    message = decide(mode, tls="t", peer_cert=server.getpeercert(True), sock=server)
    assert message == (f"client certificate not trusted: CN=md5user is not issued by the CA in "
                       "client_tls_ca_file (unable to get local issuer certificate); this server "
                       f"has client_tls_sslmode={mode}: connect with a certificate issued by "
                       "that CA")


def test_expired_certificate_gets_its_own_message(verifying_context: ClientTlsContext,
                                                  certs: CertPaths) -> None:
    server, _client = handshake(verifying_context, (certs.expired_client_cert,
                                                    certs.expired_client_key))
    message = decide("verify-ca", tls="t", peer_cert=server.getpeercert(True), sock=server)
    assert message.startswith("client certificate expired: CN=md5user expired on ")
    assert message.endswith("; connect with a renewed certificate")


def config_with(**settings: Any) -> Any:
    values: Dict[str, Any] = {setting.name: setting.default for setting in SETTINGS}
    values.update(settings)
    return SimpleNamespace(settings=values)


def test_context_hooks_raise_every_problem_and_log_warnings(certs: CertPaths, tmp_path: Any,
                                                            caplog: Any) -> None:
    ca = make_ca("short-lived test CA")
    leaf = issue(ca, "localhost", server=True, not_after=NOW + datetime.timedelta(days=5))
    cert = write_pem(str(tmp_path), "soon.crt", leaf.cert.public_bytes(serialization.Encoding.PEM))
    key = write_pem(str(tmp_path), "soon.key", leaf.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), 0o600)
    config = config_with(client_tls_sslmode="require", client_tls_cert_file=cert,
                         client_tls_key_file=key, server_tls_sslmode="verify-ca",
                         server_tls_ca_file="/nonexistent/root.crt")
    with caplog.at_level(logging.WARNING, logger="bouncer.builtin.tls"):
        assert isinstance(policy.bouncer_client_tls_context(app=None, config=config),
                          ClientTlsContext)
        with pytest.raises(ConfigProblems) as refused:
            policy.bouncer_server_tls_context(app=None, config=config)
    assert [str(problem) for problem in refused.value.problems] == [
        "server_tls_ca_file: /nonexistent/root.crt does not exist (No such file or directory): "
        "fix the path"]
    assert [record.getMessage().split(" holds ")[0] for record in caplog.records] == [
        f"client_tls_cert_file: {cert}"]


def test_context_hooks_follow_sslmode(certs: CertPaths) -> None:
    off = config_with(client_tls_sslmode="disable", server_tls_sslmode="disable")
    assert policy.bouncer_client_tls_context(app=None, config=off) is None
    assert policy.bouncer_server_tls_context(app=None, config=off) is None
    on = config_with(client_tls_sslmode="require", client_tls_cert_file=certs.server_cert,
                     client_tls_key_file=certs.server_key)
    assert isinstance(policy.bouncer_client_tls_context(app=None, config=on), ClientTlsContext)
    assert isinstance(policy.bouncer_server_tls_context(app=None, config=on), ssl.SSLContext)
