"""bouncer --check's sans-IO parts: every problem of a file collected in one pass, a good file
summarised, and a login attempt judged in plain words."""
from __future__ import annotations

import ssl
from pathlib import Path
from typing import Optional

import pytest

from bouncer.auth.md5 import md5_secret
from bouncer.auth.scram import make_scram_secret
from bouncer.check.problems import check_config
from bouncer.check.summary import Facts, describe
from bouncer.check.verdict import (FAIL, OK, WARN, Attempt, Settings, Target, judge,
                                   secret_kind)
from bouncer.config import load_config
from bouncer.errors import ClientError
from bouncer.proto.constants import AuthCode
from bouncer.session.server_login import ServerLoginError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bouncer.ini"
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- collecting problems ----------------------------------------------------------------------

def test_the_issues_three_problems_are_three_lines(tmp_path: Path) -> None:
    """A misspelt pool_mode, verify-full without a CA and an auth_query without $1: one run."""
    path = write(tmp_path, "[databases]\napp = host=db.example\n"
                           "[pgbouncer]\npool_mode = transactoin\n"
                           "client_tls_sslmode = verify-full\nclient_tls_key_file = k\n"
                           "client_tls_cert_file = c\nauth_user = bob\n"
                           "auth_query = SELECT usename, passwd FROM pg_shadow\n")
    result = check_config(path)
    assert len(result.errors) == 5, result.errors  # + the two missing TLS files
    assert result.errors[0].startswith(f"{path}:4: pool_mode: invalid value 'transactoin'")
    assert result.errors[1].startswith(f"{path}: client_tls_sslmode = verify-full needs "
                                       "client_tls_ca_file")
    assert f"{path}: auth_query must use $1 where the user name goes" in result.errors
    assert not result.ok


def test_an_unloadable_plugin_is_a_problem_and_the_built_in_checks_still_run(
        tmp_path: Path) -> None:
    path = write(tmp_path, "[databases]\napp = host=db.example\n[pgbouncer]\n"
                           "plugins = no_such_module_here\nauth_user = bob\n"
                           "auth_query = SELECT 1\n")
    errors = check_config(path).errors
    assert [error.split(": ")[1] for error in errors] == [
        "plugins", "auth_query must use $1 where the user name goes"]


def test_a_setting_bouncer_cannot_honour_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = write(tmp_path, "[databases]\napp = host=db.example\n[pgbouncer]\n"
                           "resolv_conf = /etc/bouncer/resolv.conf\n"
                           "dns_zone_check_period = 60\n")
    errors = check_config(path).errors
    assert [error.split(": ")[1] for error in errors] == ["dns_zone_check_period",
                                                          "resolv_conf"]
    assert "list the name servers in /etc/resolv.conf" in errors[1]


def test_the_resolver_settings_switched_off_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "[databases]\napp = host=db.example\n[pgbouncer]\n"
                           "resolv_conf =\ndns_zone_check_period = 0\n")
    assert check_config(path).ok


def test_an_unreadable_file_is_one_problem(tmp_path: Path) -> None:
    result = check_config(str(tmp_path / "absent.ini"))
    assert (result.config, len(result.errors)) == (None, 1)
    assert "could not load file" in result.errors[0]


def test_auth_file_lines_it_skips_are_warnings(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text('"bob" "pw"\nbroken\n')
    result = check_config(write(tmp_path, f"[pgbouncer]\nauth_file = {tmp_path}/users.txt\n"))
    assert result.ok and result.userlist == {"bob": "pw"}
    assert result.warnings == [f"{tmp_path}/users.txt:2: broken auth file line skipped "
                               '(expected "user" "password")']


# -- the summary ------------------------------------------------------------------------------

def test_summary_says_what_each_tls_side_must_present(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, (
        "[pgbouncer]\nlisten_addr = *\nunix_socket_dir =\nauth_type = cert\n"
        "client_tls_sslmode = verify-ca\nclient_tls_ca_file = /etc/bouncer/ca.crt\n"
        "client_tls_cert_file = /etc/bouncer/server.crt\nclient_tls_key_file = /k\n"
        "server_tls_sslmode = verify-full\nserver_tls_ca_file = /etc/bouncer/pg-ca.crt\n"
        "[databases]\napp = host=db1,db2 dbname=prod pool_mode=transaction user=app\n")))
    lines = describe(config, Facts(certificate_names=("pooler.example.com", "10.0.0.5")))
    assert lines[0] == "listen: every address port 6432"
    assert lines[1] == ("database app: db1,db2 port 5432, dbname prod, transaction pooling, "
                        "pool_size 20, every login as user app")
    assert lines[2] == ("auth: auth_type = cert: clients present a TLS certificate whose common "
                        "name is the user name; no password; secrets from nowhere (no "
                        "auth_file, no auth_user)")
    assert lines[-2] == (
        "clients: must connect with sslmode=require or stronger and present a certificate "
        "signed by /etc/bouncer/ca.crt; to verify this pooler they need sslrootcert = the CA "
        "that signed /etc/bouncer/server.crt and connect by one of its names "
        "(pooler.example.com, 10.0.0.5) (sslmode=verify-full)")
    assert lines[-1] == (
        "servers: each must offer TLS and present a certificate signed by "
        "/etc/bouncer/pg-ca.crt and valid for the host= name of its [databases] line")


def test_summary_names_the_credentials_chain_in_the_order_it_is_asked(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, (
        "[pgbouncer]\nauth_type = hba\nauth_hba_file = /etc/bouncer/hba.conf\n"
        "auth_file = /etc/bouncer/users.txt\nauth_user = lookup\nauth_dbname = postgres\n"
        "[databases]\npostgres = host=db\nother = host=db auth_user=other_lookup\n")))
    line = describe(config, Facts(auth_file_users=1, credential_plugins=("vault",)))[3]
    assert line == ("auth: auth_type = hba: the first matching line of auth_hba_file "
                    "/etc/bouncer/hba.conf decides; secrets from auth_file "
                    "/etc/bouncer/users.txt (1 user), then plugin vault, then auth_query as "
                    "lookup in postgres, then for database other, auth_query as other_lookup "
                    "in postgres")


# -- judging a login attempt ------------------------------------------------------------------

PREFER = Settings("prefer", "", "md5")
#: Fixed salt: parametrized test ids must be the same in every test process.
SCRAM_SECRET = make_scram_secret("pw", salt=b"0123456789abcdef", iterations=16)


def attempt(auth_request: Optional[int] = None, error: Optional[ClientError] = None,
            connected: bool = True, tls: str = "") -> Attempt:
    return Attempt(where="db port 5432", connected=connected, unix=False, tls=tls,
                   auth_request=auth_request, error=error, seconds=0.012)


def forced(secret: Optional[str]) -> Target:
    return Target("app", "bob", secret, forced=True)


def from_auth_file(secret: Optional[str]) -> Target:
    return Target("app", "bob", secret, forced=False)


@pytest.mark.parametrize("secret, kind", [
    (None, "none"), ("", "none"), ("pw", "plain"), (md5_secret("bob", "pw"), "md5"),
    (SCRAM_SECRET, "scram")])
def test_secret_kinds(secret: Optional[str], kind: str) -> None:
    assert secret_kind(secret) == kind


def test_a_good_login_is_one_ok_line() -> None:
    verdict = judge(forced("pw"), Settings("verify-full", "/ca.crt", "md5"),
                    attempt(AuthCode.SASL, tls="TLSv1.3/TLS_AES_256_GCM_SHA384"))
    assert (verdict.status, verdict.line) == (OK, (
        "OK database app (user bob) at db port 5432: reachable; TLS "
        "TLSv1.3/TLS_AES_256_GCM_SHA384, certificate verified: signed by /ca.crt and valid for "
        "the host name; server asks SCRAM for user bob, bouncer has a plain password: logged "
        "in; 12 ms"))


@pytest.mark.parametrize("asked, secret, words", [
    (AuthCode.SASL, md5_secret("bob", "pw"),
     "server asks SCRAM for user bob but only an md5 secret is known"),
    (AuthCode.SASL, None, "server asks SCRAM for user bob but no secret is known (give it "
                          "password= on its [databases] line or an auth_file entry for the "
                          "user)"),
    (AuthCode.MD5_PASSWORD, SCRAM_SECRET,
     "server asks md5 for user bob but only a SCRAM secret is known"),
    (AuthCode.CLEARTEXT_PASSWORD, md5_secret("bob", "pw"),
     "server asks a cleartext password for user bob but only an md5 secret is known"),
])
def test_a_secret_the_method_cannot_use_is_named(asked: int, secret: Optional[str],
                                                  words: str) -> None:
    refused = ServerLoginError("what the login code says", "28P01")
    verdict = judge(forced(secret), PREFER, attempt(asked, refused))
    assert verdict.status == FAIL and f"; {words}; 12 ms" in verdict.line


def test_a_password_the_server_refuses() -> None:
    refused = ServerLoginError('password authentication failed for user "bob"', "28P01")
    line = judge(forced("wrong"), PREFER, attempt(AuthCode.MD5_PASSWORD, refused)).line
    assert ('server asks md5 for user bob and refused bouncer\'s plain password (password '
            'authentication failed for user "bob")') in line


def test_other_login_errors_are_passed_on() -> None:
    missing = ServerLoginError('database "nope" does not exist', "3D000")
    line = judge(forced("pw"), PREFER, attempt(AuthCode.MD5_PASSWORD, missing)).line
    assert 'the login then failed: database "nope" does not exist' in line


@pytest.mark.parametrize("auth_type, status", [("md5", WARN), ("scram-sha-256", WARN),
                                                ("trust", FAIL)])
def test_a_scram_secret_needs_the_clients_scram_login(auth_type: str, status: str) -> None:
    secret = SCRAM_SECRET
    error = ServerLoginError("only a SCRAM secret is known", "28P01")
    verdict = judge(from_auth_file(secret), Settings("prefer", "", auth_type),
                    attempt(AuthCode.SASL, error))
    assert verdict.status == status


def test_a_forced_user_with_a_scram_secret_can_never_log_in() -> None:
    error = ServerLoginError("only a SCRAM secret is known", "28P01")
    verdict = judge(forced(SCRAM_SECRET), PREFER,
                    attempt(AuthCode.SASL, error))
    assert verdict.status == FAIL and "put the plain password in password=" in verdict.line


def test_trust_asks_for_nothing() -> None:
    verdict = judge(forced(None), PREFER, attempt(AuthCode.OK))
    assert verdict.status == OK and "server asks no password for user bob (trust)" in verdict.line


def test_unreachable_stops_at_the_first_stage() -> None:
    down = ClientError("could not connect to server: Connection refused", "08006")
    assert judge(forced("pw"), PREFER, attempt(error=down, connected=False)).line == (
        "FAIL database app (user bob) at db port 5432: unreachable: could not connect to "
        "server: Connection refused; 12 ms")


def _rejected(code: int, message: str) -> ServerLoginError:
    cause = ssl.SSLCertVerificationError(1, message)
    cause.verify_code, cause.verify_message = code, message
    error = ServerLoginError("server certificate rejected", "08006")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize("code, words", [
    (62, "host name mismatch (Hostname mismatch, certificate is not valid for 'db'.)"),
    (10, "expired: the server's certificate is past its end date"),
    (18, "self-signed, and not in server_tls_ca_file"),
    (20, "unknown CA: not signed by a CA in server_tls_ca_file (or the system's)"),
    (7, "certificate signature failure"),
])
def test_certificate_verdicts_in_plain_words(code: int, words: str) -> None:
    message = ("Hostname mismatch, certificate is not valid for 'db'." if code == 62
               else "certificate signature failure")
    line = judge(forced("pw"), Settings("verify-full", "", "md5"),
                 attempt(error=_rejected(code, message))).line
    assert line.endswith(f"reachable; TLS certificate rejected: {words}; 12 ms")


def test_a_server_without_tls_is_fine_for_prefer_and_fails_require() -> None:
    fine = judge(forced("pw"), PREFER, attempt(AuthCode.MD5_PASSWORD))
    refused = ServerLoginError("server refused TLS but server_tls_sslmode=require requires it",
                               "08006")
    required = judge(forced("pw"), Settings("require", "", "md5"), attempt(error=refused))
    assert fine.status == OK and "no TLS: the server does not offer it" in fine.line
    assert required.status == FAIL and ("TLS failed: server refused TLS but "
                                        "server_tls_sslmode=require requires it") in required.line
