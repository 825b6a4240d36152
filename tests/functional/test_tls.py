"""TLS as clients and operators meet it, through real libpq clients and a real bouncer.

* Every libpq ``sslmode`` against every ``client_tls_sslmode``: the whole outcome matrix,
  error texts included, without and with a client certificate.
* Each unacceptable certificate (missing, untrusted, expired, CN not the user) gets its own
  FATAL, in psycopg2, in psql and in the log.
* The ``tls`` column; server-side ``verify-ca``/``verify-full`` against a second PostgreSQL
  cluster with ``ssl=on`` (the session cluster is left alone); ``require`` against a server
  without TLS.
* ``bouncer --check`` on broken TLS configurations; an invalid one refuses to start.
* Certificate rotation by RELOAD while a TLS client stays connected, and a broken rotation
  that is refused while the running certificate stays.
* SET of a key and then its certificate (either side): taken, with PgBouncer's notice and a
  ``TLS setup failed`` line while the pair does not match; the contexts in force stay.
* Server connections recycled, and a cached login failure forgotten, when the server TLS
  settings change; clients waiting while a server certificate is rejected.
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
from typing import Any, Dict, Iterator, List, Tuple

import psycopg2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bouncer.testing.fixtures import STARTED
from bouncer.testing.process import REPO_ROOT, BouncerProcess, BouncerStartError
from tests.support.certgen import CertPaths, Issued, issue, write_pem
from bouncer.testing.ini import common_ini
from bouncer.testing.pgcluster import PgCluster, make_shared_tempdir
from bouncer.testing.ports import wait_until

MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TLS_COLUMN = r"^TLSv1\.[23]/[A-Z0-9_-]+(/(ECDH|DH)=\w+)?$"
PLAIN, TLS = "plain", "tls"
NO_TLS_AT_SERVER = "server does not support SSL, but SSL was required"
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def ssl_required(mode: str) -> str:
    return f"SSL required: this server has client_tls_sslmode={mode}; connect with sslmode=require"


def certificate_required(mode: str) -> str:
    return (f"client certificate required: this server has client_tls_sslmode={mode}; connect "
            "with sslcert=... and sslkey=... (a certificate issued by the CA in "
            "client_tls_ca_file)")


# Outcome for a client WITHOUT a certificate: [client_tls_sslmode][libpq sslmode].
# libpq "allow" retries with TLS after a refusal, "prefer" retries without it; where both
# attempts fail, the expected text is the one the attempt in TLS got.
_TLS_OFFERED = {"disable": PLAIN, "allow": PLAIN, "prefer": TLS, "require": TLS,
                "verify-ca": TLS, "verify-full": TLS}
WITHOUT_CERTIFICATE: Dict[str, Dict[str, str]] = {
    "disable": {"disable": PLAIN, "allow": PLAIN, "prefer": PLAIN, "require": NO_TLS_AT_SERVER,
                "verify-ca": NO_TLS_AT_SERVER, "verify-full": NO_TLS_AT_SERVER},
    "allow": _TLS_OFFERED,
    "prefer": _TLS_OFFERED,
    "require": {**_TLS_OFFERED, "disable": ssl_required("require"), "allow": TLS},
    **{mode: {"disable": ssl_required(mode),
              **{libpq: certificate_required(mode) for libpq in MODES[1:]}}
       for mode in ("verify-ca", "verify-full")},
}
# With the certificate of user md5user (CN=md5user, issued by the CA): what changes.
WITH_CERTIFICATE: Dict[str, Dict[str, str]] = {
    mode: {"disable": ssl_required(mode), **{libpq: TLS for libpq in MODES[1:]}}
    for mode in ("verify-ca", "verify-full")}


# -- helpers ---------------------------------------------------------------------------------------

def tls_settings(certs: CertPaths, mode: str, **extra: Any) -> Dict[str, Any]:
    return {"client_tls_sslmode": mode, "client_tls_key_file": certs.server_key,
            "client_tls_cert_file": certs.server_cert, "client_tls_ca_file": certs.ca_cert,
            **extra}


def outcome(bouncer: BouncerProcess, **params: Any) -> str:
    """``plain``/``tls`` for a working connection, else the error text."""
    try:
        conn = bouncer.connect(**params)
    except psycopg2.OperationalError as exc:
        return str(exc)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        return TLS if conn.info.ssl_in_use else PLAIN
    finally:
        conn.close()


def assert_outcome(actual: str, expected: str) -> None:
    if expected in (PLAIN, TLS):
        assert actual == expected
    else:
        assert expected in actual


def show(bouncer: BouncerProcess, command: str, **params: Any) -> List[Dict[str, Any]]:
    """An admin SHOW command's rows as dicts (column name -> value)."""
    conn = bouncer.connect(dbname="pgbouncer", user="scramuser", **params)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(command)
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        conn.close()


def presented_certificate(bouncer: BouncerProcess) -> bytes:
    """The DER certificate bouncer presents to a new TLS client (read with the stdlib)."""
    with socket.create_connection((bouncer.host, bouncer.port), timeout=5) as raw:
        raw.sendall(SSL_REQUEST)
        assert raw.recv(1) == b"S"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True)


def der(path: str) -> bytes:
    with open(path, "rb") as pem:
        return x509.load_pem_x509_certificate(pem.read()).public_bytes(
            serialization.Encoding.DER)


def load_issued(cert_path: str, key_path: str) -> Issued:
    with open(cert_path, "rb") as cert, open(key_path, "rb") as key:
        return Issued(x509.load_pem_x509_certificate(cert.read()),
                      serialization.load_pem_private_key(key.read(), None))


def pem_pair(issued: Issued) -> Tuple[bytes, bytes]:
    return (issued.cert.public_bytes(serialization.Encoding.PEM),
            issued.key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))


@pytest.fixture(scope="module")
def matrix_bouncers(pg: PgCluster, certs: CertPaths,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """One bouncer per client_tls_sslmode, started on first use, shared by the module."""
    started: Dict[str, BouncerProcess] = {}
    base = tmp_path_factory.mktemp("tls-matrix")

    def get(mode: str) -> BouncerProcess:
        if mode not in started:
            ini = common_ini(pg, **tls_settings(certs, mode))
            started[mode] = BouncerProcess(base / mode, ini)
        return started[mode]

    yield {"get": get}
    for proc in started.values():
        proc.stop()


@pytest.fixture
def bouncer_for(request: pytest.FixtureRequest,
                matrix_bouncers: Dict[str, Any]) -> Any:
    """``bouncer_for(mode)``; a failing test shows that bouncer's output."""
    def get(mode: str) -> BouncerProcess:
        proc = matrix_bouncers["get"](mode)
        request.node.stash.setdefault(STARTED, []).append(proc)
        return proc
    return get


# -- the outcome matrix ---------------------------------------------------------------------------

@pytest.mark.parametrize("libpq_mode", MODES)
@pytest.mark.parametrize("server_mode", MODES)
def test_outcome_without_client_certificate(bouncer_for: Any, certs: CertPaths,
                                            server_mode: str, libpq_mode: str) -> None:
    actual = outcome(bouncer_for(server_mode), sslmode=libpq_mode, sslrootcert=certs.ca_cert)
    assert_outcome(actual, WITHOUT_CERTIFICATE[server_mode][libpq_mode])


@pytest.mark.parametrize("libpq_mode", MODES)
@pytest.mark.parametrize("server_mode", ["verify-ca", "verify-full"])
def test_outcome_with_client_certificate(bouncer_for: Any, certs: CertPaths, server_mode: str,
                                         libpq_mode: str) -> None:
    actual = outcome(bouncer_for(server_mode), sslmode=libpq_mode, sslrootcert=certs.ca_cert,
                     sslcert=certs.client_cert, sslkey=certs.client_key)
    assert_outcome(actual, WITH_CERTIFICATE[server_mode][libpq_mode])


# -- each unacceptable certificate, with its own message ------------------------------------------

@pytest.mark.parametrize("which, expected", [
    ("untrusted_client", "client certificate not trusted: CN=md5user is not issued by the CA in "
                         "client_tls_ca_file (unable to get local issuer certificate); this "
                         "server has client_tls_sslmode=verify-full: connect with a certificate "
                         "issued by that CA"),
    ("expired_client", "client certificate expired: CN=md5user expired on "),
    ("someoneelse", 'client certificate CN "someoneelse" does not match user "md5user": '
                    "client_tls_sslmode=verify-full requires the certificate's common name to "
                    "be the user name"),
])
def test_bad_certificate_gets_its_own_fatal_and_log_line(bouncer_for: Any, certs: CertPaths,
                                                         which: str, expected: str) -> None:
    bouncer = bouncer_for("verify-full")
    since = len(bouncer.log_text())
    message = outcome(bouncer, sslmode="require", sslcert=getattr(certs, f"{which}_cert"),
                      sslkey=getattr(certs, f"{which}_key"))
    assert "FATAL:  " + expected in message
    bouncer.wait_for_log(r"WARNING .*pooler error: " + re.escape(expected), since=since)


def test_a_presented_certificate_is_judged_under_require_too(bouncer_for: Any,
                                                             certs: CertPaths) -> None:
    message = outcome(bouncer_for("require"), sslmode="require",
                      sslcert=certs.untrusted_client_cert, sslkey=certs.untrusted_client_key)
    assert "client certificate not trusted: CN=md5user" in message


def test_psql_shows_the_missing_certificate_fatal(bouncer_for: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bouncer = bouncer_for("verify-full")
    since = len(bouncer.log_text())
    monkeypatch.setenv("PGSSLMODE", "require")
    result = bouncer.psql("SELECT 1")
    assert result.returncode != 0
    assert f"FATAL:  {certificate_required('verify-full')}" in result.stderr
    bouncer.wait_for_log(re.escape(certificate_required("verify-full")), since=since)


# -- the tls column --------------------------------------------------------------------------------

def test_login_log_and_show_clients_name_protocol_cipher_and_key_exchange(
        bouncer_for: Any) -> None:
    bouncer = bouncer_for("require")
    rows = show(bouncer, "SHOW CLIENTS", sslmode="require")
    own = [row for row in rows if row["database"] == "pgbouncer"]
    assert own and re.match(TLS_COLUMN, own[0]["tls"]), own
    bouncer.wait_for_log(r"login attempt: db=pgbouncer user=scramuser tls=TLSv1\.[23]/\S+ ")


# -- server side: a second cluster with ssl=on ----------------------------------------------------

@pytest.fixture(scope="module")
def tls_pg(certs: CertPaths) -> Iterator[PgCluster]:
    basedir = make_shared_tempdir("bouncer-tls-pg-")
    cluster = PgCluster(os.path.join(basedir, "pg"))
    try:
        cluster.start()
        cluster.enable_ssl(certs.server_cert, certs.server_key)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(basedir, ignore_errors=True)


def server_uses_tls(bouncer: BouncerProcess) -> bool:
    """Whether a server connection uses TLS; it stays idle in the pool (session mode)."""
    conn = bouncer.connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return cursor.fetchone()[0]
    finally:
        conn.close()


def test_server_verify_full_checks_chain_and_host_name(tls_pg: PgCluster, certs: CertPaths,
                                                       bouncer_factory: Any) -> None:
    bouncer = bouncer_factory(common_ini(tls_pg, server_tls_sslmode="verify-full",
                                         server_tls_ca_file=certs.ca_cert))
    assert server_uses_tls(bouncer)
    holding = bouncer.connect()  # session mode: its server stays linked, so SHOW SERVERS has it
    try:
        with holding.cursor() as cursor:
            cursor.execute("SELECT 1")
        servers = show(bouncer, "SHOW SERVERS")
    finally:
        holding.close()
    assert servers and all(re.match(TLS_COLUMN, row["tls"]) for row in servers), servers


def rejected_certificate_outcome(bouncer: BouncerProcess) -> str:
    """What clients meet when the server's certificate fails the check: as in PgBouncer, the
    first one waits (until its query_wait_timeout: these bouncers have 1 s) while the log says
    why; the next one gets that reason at once, as the cached login error."""
    since = len(bouncer.log_text())
    assert "query_wait_timeout" in outcome(bouncer)
    bouncer.wait_for_log(r"S-0x[0-9a-f]+: testdb/\S+ TLS handshake error: certificate verify "
                         r"failed: ", since=since)
    return outcome(bouncer)


def test_server_certificate_from_another_ca_is_rejected(tls_pg: PgCluster, certs: CertPaths,
                                                        bouncer_factory: Any) -> None:
    bouncer = bouncer_factory(common_ini(tls_pg, server_tls_sslmode="verify-ca",
                                         server_tls_ca_file=certs.other_ca_cert,
                                         query_wait_timeout=1))
    assert ("server login has been failing, cached error: server certificate rejected (unable "
            "to get local issuer certificate): server_tls_sslmode=verify-ca checks it against "
            "server_tls_ca_file; fix the server's certificate or the setting"
            ) in rejected_certificate_outcome(bouncer)


def test_server_host_name_is_checked_only_by_verify_full(tls_pg: PgCluster, certs: CertPaths,
                                                         bouncer_factory: Any,
                                                         tmp_path: Any) -> None:
    # A certificate from the right CA, for another host (no loopback names at all).
    ca = load_issued(certs.ca_cert, certs.ca_key)
    other = _certificate_for_dns_name(ca, "db.example.com")
    cert, key = (write_pem(str(tmp_path), name, data, 0o600)
                 for name, data in zip(("other.crt", "other.key"), pem_pair(other)))
    tls_pg.enable_ssl(cert, key)
    try:
        full = bouncer_factory(common_ini(tls_pg, server_tls_sslmode="verify-full",
                                          server_tls_ca_file=certs.ca_cert,
                                          query_wait_timeout=1))
        assert ("server certificate rejected (IP address mismatch, certificate is not valid for "
                "'127.0.0.1'.): server_tls_sslmode=verify-full checks it against "
                "server_tls_ca_file and the host name") in rejected_certificate_outcome(full)
        ca_only = bouncer_factory(common_ini(tls_pg, server_tls_sslmode="verify-ca",
                                             server_tls_ca_file=certs.ca_cert))
        assert server_uses_tls(ca_only)
    finally:
        tls_pg.enable_ssl(certs.server_cert, certs.server_key)


def test_fixing_the_server_tls_setting_lets_the_next_client_in_at_once(
        tls_pg: PgCluster, certs: CertPaths, bouncer_factory: Any) -> None:
    bouncer = bouncer_factory(common_ini(tls_pg, server_tls_sslmode="verify-ca",
                                         server_tls_ca_file=certs.other_ca_cert,
                                         query_wait_timeout=1, server_login_retry=60))
    assert "server login has been failing" in rejected_certificate_outcome(bouncer)
    bouncer.admin(f"SET server_tls_ca_file = '{certs.ca_cert}'")
    assert server_uses_tls(bouncer)  # the cached failure was the old setting's


def test_set_of_a_server_tls_setting_recycles_servers(tls_pg: PgCluster, certs: CertPaths,
                                                      bouncer_factory: Any) -> None:
    bouncer = bouncer_factory(common_ini(tls_pg, server_tls_sslmode="require"))
    idle, holding = bouncer.connect(), bouncer.connect()
    for conn in (idle, holding):
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")  # each gets a server (session mode)
    idle.close()  # its server stays, idle
    closed = (r"S-0x[0-9a-f]+: testdb/md5user@127\.0\.0\.1:\d+ closing because: database "
              r"configuration changed")
    try:
        since = len(bouncer.log_text())
        bouncer.admin("SET server_tls_sslmode = 'verify-ca'")
        bouncer.wait_for_log(closed, since=since)  # the idle one, at once
        assert [row["close_needed"] for row in show(bouncer, "SHOW SERVERS")] == [1]
        since = len(bouncer.log_text())
    finally:
        holding.close()  # the linked one, when it is released
    bouncer.wait_for_log(closed, since=since)
    assert not show(bouncer, "SHOW SERVERS")


def test_reload_recycles_servers_only_when_server_tls_changes(pg: PgCluster,
                                                              bouncer_factory: Any) -> None:
    ini = common_ini(pg, server_tls_sslmode="disable", server_tls_protocols="secure")
    bouncer = bouncer_factory(ini)
    assert not server_uses_tls(bouncer)
    bouncer.write_ini(ini.replace("server_tls_protocols = secure", "server_tls_protocols = all"))
    bouncer.admin("RELOAD")  # TLS to servers stays off: nothing to recycle
    assert len(show(bouncer, "SHOW SERVERS")) == 1
    since = len(bouncer.log_text())
    bouncer.write_ini(ini.replace("server_tls_sslmode = disable", "server_tls_sslmode = prefer"))
    bouncer.admin("RELOAD")
    bouncer.wait_for_log(r"testdb/md5user@127\.0\.0\.1:\d+ closing because: database "
                         r"configuration changed", since=since)
    assert not show(bouncer, "SHOW SERVERS")


def test_require_against_a_server_without_tls_says_so(pg: PgCluster,
                                                      bouncer_factory: Any) -> None:
    bouncer = bouncer_factory(common_ini(pg, server_tls_sslmode="require"))
    assert "server refused TLS but server_tls_sslmode=require requires it" in outcome(bouncer)


def test_prefer_against_a_server_without_tls_falls_back(pg: PgCluster,
                                                        bouncer_factory: Any) -> None:
    bouncer = bouncer_factory(common_ini(pg, server_tls_sslmode="prefer"))
    assert outcome(bouncer) == PLAIN
    assert not server_uses_tls(bouncer)


def run_connect_check(tmp_path: Any, ini: str) -> subprocess.CompletedProcess:
    path = tmp_path / "connect.ini"
    path.write_text(ini.replace("@PORT@", "6432").replace("@DIR@", str(tmp_path)))
    (tmp_path / "userlist.txt").write_text("")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "bouncer", "--check", "--connect", str(path)],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)


def test_check_connect_names_the_certificate_verdict(tls_pg: PgCluster, certs: CertPaths,
                                                      tmp_path: Any) -> None:
    # The server's certificate names localhost only (no address), from the test CA.
    ca = load_issued(certs.ca_cert, certs.ca_key)
    cert, key = (write_pem(str(tmp_path), name, data, 0o600) for name, data in
                 zip(("localhost.crt", "localhost.key"), pem_pair(_certificate_for_dns_name(
                     ca, "localhost"))))
    tls_pg.enable_ssl(cert, key)
    login = "dbname=testdb user=md5user password=md5pass"
    databases = {"testdb": None, "bench": None,
                 "byname": f"host=localhost port={tls_pg.port} {login}",
                 "byaddress": f"host=127.0.0.1 port={tls_pg.port} {login}"}
    try:
        trusted = run_connect_check(tmp_path, common_ini(
            tls_pg, databases=databases, server_tls_sslmode="verify-full",
            server_tls_ca_file=certs.ca_cert))
        unknown = run_connect_check(tmp_path, common_ini(
            tls_pg, databases={"byname": databases["byname"], "testdb": None, "bench": None},
            server_tls_sslmode="verify-ca", server_tls_ca_file=certs.other_ca_cert))
    finally:
        tls_pg.enable_ssl(certs.server_cert, certs.server_key)
    assert trusted.returncode == 1
    assert re.search(r"^OK database byname \(user md5user\) at localhost port \d+: reachable "
                     r"\(PostgreSQL [^)]+\)\); TLS TLSv1\.[23]/\S+, certificate verified: signed "
                     f"by {re.escape(certs.ca_cert)} and valid for the host name; server asks "
                     r"md5 for user md5user, bouncer has a plain password: logged in; \d+ ms$",
                     trusted.stdout, re.M), trusted.stdout
    assert re.search(r"^FAIL database byaddress \(user md5user\) at 127\.0\.0\.1 port \d+: "
                     r"reachable; TLS certificate rejected: host name mismatch \(IP address "
                     r"mismatch, certificate is not valid for '127\.0\.0\.1'\.\); \d+ ms$",
                     trusted.stdout, re.M), trusted.stdout
    assert re.search(r"^FAIL database byname .*: reachable; TLS certificate rejected: unknown CA: "
                     r"not signed by a CA in server_tls_ca_file \(or the system's\); \d+ ms$",
                     unknown.stdout, re.M), unknown.stdout


def _certificate_for_dns_name(ca: Issued, name: str) -> Issued:
    """A server certificate from *ca* valid only for *name* (certgen's all name the loopback)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.key.public_key()), critical=False)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False))
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


# -- bouncer --check and refusing to start --------------------------------------------------------

CHECK_BASE = """[databases]
testdb = host=127.0.0.1 port=5432 dbname=testdb
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 6432
auth_type = trust
"""


def run_check(tmp_path: Any, settings: Dict[str, str]) -> subprocess.CompletedProcess:
    path = tmp_path / "check.ini"
    path.write_text(CHECK_BASE + "".join(f"{key} = {value}\n" for key, value in settings.items()))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "bouncer", "--check", str(path)],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)


def _client(certs: CertPaths, **overrides: str) -> Dict[str, str]:
    return {**tls_settings(certs, "verify-full"), **overrides}


BROKEN_CONFIGS = {
    "verify-full without a CA": (
        lambda c: _client(c, client_tls_ca_file=""),
        "client_tls_sslmode = verify-full needs client_tls_ca_file"),
    "missing key file": (
        lambda c: _client(c, client_tls_key_file="/nonexistent/server.key"),
        "client_tls_key_file: /nonexistent/server.key does not exist (No such file or "
        "directory): fix the path"),
    "key of another certificate": (
        lambda c: _client(c, client_tls_key_file=c.client_key),
        "client_tls_key_file: {client_key} does not match client_tls_cert_file {server_cert}"),
    "expired certificate": (
        lambda c: _client(c, client_tls_cert_file=c.expired_client_cert,
                          client_tls_key_file=c.expired_client_key),
        "client_tls_cert_file: {expired_client_cert} holds certificate CN=md5user, which "
        "expired on "),
    "CA file without a certificate": (
        lambda c: _client(c, client_tls_ca_file=c.ca_key),
        "client_tls_ca_file: {ca_key} holds no PEM certificate"),
    "unknown protocol": (
        lambda c: _client(c, client_tls_protocols="tlsv1.4"),
        "client_tls_protocols: 'tlsv1.4': unknown protocol 'tlsv1.4'"),
    "cipher string OpenSSL rejects": (
        lambda c: _client(c, client_tls_ciphers="nonsense"),
        "client_tls_ciphers: 'nonsense': OpenSSL accepts no cipher from it"),
    "unknown curve": (
        lambda c: _client(c, client_tls_ecdhcurve="nocurve"),
        "client_tls_ecdhcurve: 'nocurve' is not a curve OpenSSL knows"),
    "legacy DHE parameters": (
        lambda c: _client(c, client_tls_dheparams="legacy"),
        "client_tls_dheparams: 'legacy' is not supported"),
    "server CA file missing": (
        lambda c: {"server_tls_sslmode": "verify-full",
                   "server_tls_ca_file": "/nonexistent/root.crt"},
        "server_tls_ca_file: /nonexistent/root.crt does not exist (No such file or "
        "directory): fix the path"),
    "server certificate without key": (
        lambda c: {"server_tls_cert_file": c.client_cert},
        "server_tls_cert_file and server_tls_key_file go together"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
def test_check_reports_each_broken_config(tmp_path: Any, certs: CertPaths, case: str) -> None:
    settings, expected = BROKEN_CONFIGS[case]
    result = run_check(tmp_path, settings(certs))
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected.format(**certs.__dict__) in result.stderr


def test_check_prints_every_problem_at_once(tmp_path: Any, certs: CertPaths) -> None:
    result = run_check(tmp_path, _client(certs, client_tls_key_file=certs.client_key,
                                         client_tls_ciphers="nonsense",
                                         server_tls_ca_file="/nonexistent/root.crt",
                                         server_tls_sslmode="verify-ca"))
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR ")]
    assert result.returncode == 1 and len(errors) == 3, result.stderr
    assert [re.search(r"(client|server)_tls_\w+", error).group(0) for error in errors] == [
        "client_tls_key_file", "client_tls_ciphers", "server_tls_ca_file"]


def test_check_warns_about_a_certificate_expiring_soon(tmp_path: Any, certs: CertPaths) -> None:
    ca = load_issued(certs.ca_cert, certs.ca_key)
    soon = issue(ca, "localhost", server=True,
                 not_after=datetime.datetime.now(datetime.timezone.utc)
                 + datetime.timedelta(days=12, hours=1))
    cert, key = (write_pem(str(tmp_path), name, data, 0o600)
                 for name, data in zip(("soon.crt", "soon.key"), pem_pair(soon)))
    result = run_check(tmp_path, _client(certs, client_tls_cert_file=cert,
                                         client_tls_key_file=key))
    assert result.returncode == 0, result.stderr
    assert (f"client_tls_cert_file: {cert} holds certificate CN=localhost, which expires on "
            in result.stderr)
    assert "(in 12 days): renew it before then" in result.stderr


def test_invalid_tls_config_refuses_to_start(pg: PgCluster, certs: CertPaths,
                                             bouncer_factory: Any) -> None:
    ini = common_ini(pg, **_client(certs, client_tls_key_file=certs.client_key))
    with pytest.raises(BouncerStartError) as failure:
        bouncer_factory(ini)
    assert failure.value.returncode not in (0, None)
    assert "client_tls_key_file: " + certs.client_key + " does not match" in failure.value.log


# -- RELOAD --------------------------------------------------------------------------------------

def test_reload_rotates_the_certificate_without_dropping_tls_clients(
        pg: PgCluster, certs: CertPaths, bouncer_factory: Any) -> None:
    with open(certs.server_cert, "rb") as cert, open(certs.server_key, "rb") as key:
        files = {"tls.crt": cert.read(), "tls.key": key.read()}
    bouncer = bouncer_factory(
        common_ini(pg, **tls_settings(certs, "require", client_tls_cert_file="@DIR@/tls.crt",
                                      client_tls_key_file="@DIR@/tls.key")),
        extra_files=files)
    staying = bouncer.connect(sslmode="require")
    staying.autocommit = True
    try:
        assert presented_certificate(bouncer) == der(certs.server_cert)
        rotated = issue(load_issued(certs.ca_cert, certs.ca_key), "localhost", server=True)
        new_cert, new_key = pem_pair(rotated)
        bouncer.write_file("tls.crt", new_cert)
        bouncer.write_file("tls.key", new_key)
        bouncer.reload()
        new_der = rotated.cert.public_bytes(serialization.Encoding.DER)
        assert wait_until(lambda: presented_certificate(bouncer) == new_der, 10)
        assert _still_works(staying)
        assert outcome(bouncer, sslmode="require") == TLS

        since = len(bouncer.log_text())
        bouncer.write_file("tls.key", b"not a key\n")
        bouncer.reload()
        bouncer.wait_for_log(r"ERROR TLS setup failed: client_tls_key_file: ", since=since)
        bouncer.wait_for_log(r"config reload failed, keeping the old configuration: .*"
                             r"client_tls_key_file", since=since)
        assert presented_certificate(bouncer) == new_der
        assert _still_works(staying)
    finally:
        staying.close()


def _still_works(conn: Any) -> bool:
    with conn.cursor() as cursor:
        cursor.execute("SELECT 42")
        return cursor.fetchone() == (42,) and bool(conn.info.ssl_in_use)


def test_reload_with_a_missing_certificate_says_why(pg: PgCluster, certs: CertPaths,
                                                   bouncer_factory: Any) -> None:
    ini = common_ini(pg)
    bouncer = bouncer_factory(ini)
    since = len(bouncer.log_text())
    bouncer.write_ini(common_ini(pg, **tls_settings(certs, "require",
                                                    client_tls_cert_file="/nonexistent.crt")))
    with pytest.raises(psycopg2.Error, match="RELOAD failed"):
        bouncer.admin("RELOAD")
    bouncer.wait_for_log(r"ERROR TLS setup failed: client_tls_cert_file: /nonexistent\.crt does "
                         r"not exist \(No such file or directory\)", since=since)
    assert outcome(bouncer) == PLAIN


# -- SET -----------------------------------------------------------------------------------------

TLS_NOT_APPLIED = "TLS settings could not be applied, still using old configuration"


def set_notices(bouncer: BouncerProcess, command: str) -> List[str]:
    """The notices a SET on the admin console got (it succeeded)."""
    conn = bouncer.connect(dbname="pgbouncer", user="scramuser")
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(command)
            assert cursor.statusmessage == "SET"
        return [notice.strip().split("  ", 1)[-1] for notice in conn.notices]
    finally:
        conn.close()


def test_set_takes_a_key_and_its_certificate_one_after_the_other(
        pg: PgCluster, certs: CertPaths, bouncer_factory: Any) -> None:
    bouncer = bouncer_factory(common_ini(pg, **tls_settings(certs, "require")))
    since = len(bouncer.log_text())
    assert set_notices(bouncer, f"SET client_tls_key_file = '{certs.client_key}'") == [
        TLS_NOT_APPLIED]
    bouncer.wait_for_log(rf"ERROR TLS setup failed: client_tls_key_file: "
                         rf"{re.escape(certs.client_key)} does not match client_tls_cert_file",
                         since=since)
    assert row_value(bouncer, "client_tls_key_file") == certs.client_key  # taken all the same
    assert presented_certificate(bouncer) == der(certs.server_cert)  # the pair in force stays
    assert outcome(bouncer, sslmode="require") == TLS
    assert set_notices(bouncer, f"SET client_tls_cert_file = '{certs.client_cert}'") == []
    assert presented_certificate(bouncer) == der(certs.client_cert)


def test_set_takes_the_server_key_and_certificate_one_after_the_other(
        tls_pg: PgCluster, certs: CertPaths, bouncer_factory: Any) -> None:
    bouncer = bouncer_factory(common_ini(tls_pg, server_tls_sslmode="require"))
    since = len(bouncer.log_text())
    assert set_notices(bouncer, f"SET server_tls_key_file = '{certs.client_key}'") == [
        TLS_NOT_APPLIED]
    bouncer.wait_for_log(r"ERROR TLS setup failed: server_tls_cert_file and server_tls_key_file "
                         r"go together", since=since)
    assert set_notices(bouncer, f"SET server_tls_cert_file = '{certs.client_cert}'") == []
    assert server_uses_tls(bouncer)
    since = len(bouncer.log_text())
    assert set_notices(bouncer, f"SET server_tls_key_file = '{certs.someoneelse_key}'") == [
        TLS_NOT_APPLIED]  # a pair that does not match: reported, and the one in force stays
    bouncer.wait_for_log(r"ERROR TLS setup failed: server_tls_key_file: .* does not match "
                         r"server_tls_cert_file", since=since)
    assert server_uses_tls(bouncer)


def test_set_of_tls13_suites_openssl_rejects_keeps_the_ones_in_force(
        pg: PgCluster, certs: CertPaths, bouncer_factory: Any) -> None:
    bouncer = bouncer_factory(common_ini(pg, **tls_settings(
        certs, "require", client_tls_protocols="tlsv1.3",
        client_tls13_ciphers="TLS_CHACHA20_POLY1305_SHA256")))
    since = len(bouncer.log_text())
    assert set_notices(bouncer, "SET client_tls13_ciphers = 'unknown'") == [TLS_NOT_APPLIED]
    bouncer.wait_for_log(r"ERROR TLS setup failed: client_tls13_ciphers: failed to set the "
                         r"TLSv1\.3 cipher suites to 'unknown'", since=since)
    assert outcome(bouncer, sslmode="require") == TLS
    bouncer.wait_for_log(r"tls=TLSv1\.3/TLS_CHACHA20_POLY1305_SHA256", since=since)


def row_value(bouncer: BouncerProcess, key: str) -> str:
    return next(row["value"] for row in show(bouncer, "SHOW CONFIG") if row["key"] == key)


# -- verify-full with a user map -------------------------------------------------------------------

def test_verify_full_accepts_a_cn_that_the_hba_user_map_maps_to_the_user(
        pg: PgCluster, certs: CertPaths, bouncer_factory: Any) -> None:
    """With a ``cert map=`` HBA line, the map, not CN equality, decides (as in PostgreSQL)."""
    hba = "hostssl all all 127.0.0.1/32 cert map=certmap\n"
    ident = "certmap someoneelse md5user\n"
    bouncer = bouncer_factory(
        common_ini(pg, auth_type="hba", auth_hba_file="@DIR@/hba.conf",
                   auth_ident_file="@DIR@/ident.conf", **tls_settings(certs, "verify-full")),
        extra_files={"hba.conf": hba, "ident.conf": ident})
    params = dict(sslmode="require", sslcert=certs.someoneelse_cert,
                  sslkey=certs.someoneelse_key)
    assert outcome(bouncer, **params) == TLS
    assert 'does not match user "scramuser"' in outcome(bouncer, user="scramuser",
                                                        password="scrampass", **params)
