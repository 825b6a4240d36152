"""``auth_type = hba`` against a real PostgreSQL: the first matching line picks the method
(seen as the authentication request bouncer sends), PostgreSQL's refusal wording, local, host,
hostssl/hostnossl and IPv6 lines, ``@file`` lists, cert and peer with pg_ident.conf maps,
``clientcert=``, and a RELOAD with a broken file keeping the rules in force.
"""
from __future__ import annotations

import os
import pwd
import time
from typing import Any, Dict, Optional, Union

import psycopg2
import pytest

from tests.functional.pgroles import login_outcome
from tests.support import pgwire
from bouncer.testing.process import BouncerStartError
from bouncer.testing.ini import common_ini
from bouncer.testing.ports import ipv6_loopback_works

HBA_FILE = "hba.conf"
IDENT_FILE = "ident.conf"


@pytest.fixture
def start(pg, bouncer_factory):
    """``start(hba_text, files={name: text}, **settings)``: a bouncer with auth_type = hba."""
    def start_bouncer(hba: str, files: Optional[Dict[str, str]] = None, **settings: Any):
        settings.setdefault("auth_hba_file", f"@DIR@/{HBA_FILE}")
        return bouncer_factory(common_ini(pg, auth_type="hba", **settings),
                               extra_files={HBA_FILE: hba, **(files or {})})
    return start_bouncer


def first_answer(bouncer, user: str, dbname: str = "testdb",
                 host: Optional[str] = None) -> Union[int, str]:
    """The authentication request code bouncer answers a startup with, or its error text."""
    sock = pgwire.connect(host or bouncer.host, bouncer.port)
    try:
        sock.sendall(pgwire.startup({"user": user, "database": dbname}))
        kind, payload = pgwire.read_message(sock)
    finally:
        sock.close()
    if kind == b"R":
        return pgwire.auth_code(payload)
    fields = pgwire.error_fields(payload)
    return f"{fields['C']} {fields['M']}"


def test_first_matching_line_chooses_the_method(start) -> None:
    bouncer = start("# the first line that matches wins\n"
                    "host bench md5user 127.0.0.1/32 trust\n"
                    "host all md5user 127.0.0.1/32 password\n"
                    "host all md5user 127.0.0.1/32 reject\n"
                    "host all scramuser 127.0.0.1/32 scram-sha-256\n"
                    "host all all 127.0.0.1 255.255.255.255 md5\n")
    assert first_answer(bouncer, "md5user", "bench") == pgwire.AUTH_OK
    assert first_answer(bouncer, "md5user") == pgwire.AUTH_CLEARTEXT
    assert first_answer(bouncer, "scramuser") == pgwire.AUTH_SASL
    assert first_answer(bouncer, "h10_anybody") == pgwire.AUTH_MD5
    assert login_outcome(bouncer.connect, dbname="bench", password="") == "md5user"
    assert login_outcome(bouncer.connect) == "md5user"
    assert login_outcome(bouncer.connect, user="scramuser") == "scramuser"


def test_no_matching_line_and_reject_lines_use_postgresql_wording(start) -> None:
    bouncer = start("host all md5user 127.0.0.1/32 reject\n")
    assert first_answer(bouncer, "md5user") == (
        '28000 pg_hba.conf rejects connection for host "127.0.0.1", user "md5user", '
        'database "testdb", no encryption')
    assert first_answer(bouncer, "scramuser", "bench") == (
        '28000 no pg_hba.conf entry for host "127.0.0.1", user "scramuser", '
        'database "bench", no encryption')
    bouncer.wait_for_log("no matching line in auth_hba_file")


def test_at_file_lists_in_database_and_user_columns(start) -> None:
    bouncer = start("host @dbs.txt @users.txt 127.0.0.1/32 trust\n"
                    "host all all 127.0.0.1/32 reject\n",
                    files={"dbs.txt": "bench\n", "users.txt": "md5user\n  scramuser\n"})
    assert first_answer(bouncer, "md5user", "bench") == pgwire.AUTH_OK
    assert first_answer(bouncer, "scramuser", "bench") == pgwire.AUTH_OK
    assert "rejects connection" in first_answer(bouncer, "md5user", "testdb")
    assert "rejects connection" in first_answer(bouncer, "h10_other", "bench")


def test_local_lines_apply_to_the_unix_socket_only(start) -> None:
    bouncer = start("local all md5user trust\n"
                    "host all md5user 127.0.0.1/32 reject\n")
    assert login_outcome(bouncer.connect, host=bouncer.socket_dir, password="") == "md5user"
    assert "rejects connection" in login_outcome(bouncer.connect)
    assert 'no pg_hba.conf entry for host "[local]", user "scramuser"' in login_outcome(
        bouncer.connect, host=bouncer.socket_dir, user="scramuser")


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback")
def test_ipv6_lines_match_ipv6_clients(start) -> None:
    bouncer = start("host all md5user ::1/128 reject\n"
                    "host all md5user 127.0.0.1/32 md5\n",
                    listen_addr="127.0.0.1,::1")
    assert first_answer(bouncer, "md5user", host="::1") == (
        '28000 pg_hba.conf rejects connection for host "::1", user "md5user", '
        'database "testdb", no encryption')
    assert login_outcome(bouncer.connect) == "md5user"


def test_ipv6_lines_let_no_ipv4_client_in(start) -> None:
    # ::/0 holds ::ffff:127.0.0.1, but an IPv4 client fits IPv4 lines only (PgBouncer and
    # PostgreSQL alike), so an IPv6 trust line is no way in from 127.0.0.1.
    bouncer = start("host all all ::/0 trust\n"
                    "host all all ::ffff:0.0.0.0/96 trust\n")
    assert first_answer(bouncer, "md5user") == (
        '28000 no pg_hba.conf entry for host "127.0.0.1", user "md5user", '
        'database "testdb", no encryption')


def tls_settings(certs, **extra: str) -> Dict[str, str]:
    """Clients may use TLS; certificates signed by the test CA are requested and verified."""
    return {"client_tls_sslmode": "allow", "client_tls_cert_file": certs.server_cert,
            "client_tls_key_file": certs.server_key, "client_tls_ca_file": certs.ca_cert,
            **extra}


def with_cert(certs, name: str) -> Dict[str, str]:
    return {"sslmode": "require", "sslcert": getattr(certs, f"{name}_cert"),
            "sslkey": getattr(certs, f"{name}_key")}


def test_hostssl_and_hostnossl_lines_follow_the_transport(start, certs) -> None:
    bouncer = start("hostssl all md5user 127.0.0.1/32 md5\n"
                    "hostnossl all md5user 127.0.0.1/32 reject\n",
                    **tls_settings(certs))
    assert login_outcome(bouncer.connect, sslmode="require") == "md5user"
    assert ('pg_hba.conf rejects connection for host "127.0.0.1", user "md5user", '
            'database "testdb", no encryption') in login_outcome(bouncer.connect,
                                                                 sslmode="disable")


def test_cert_lines_take_the_user_from_the_certificate_or_its_map(start, certs) -> None:
    bouncer = start("hostssl testdb md5user 127.0.0.1/32 cert\n"
                    "hostssl testdb scramuser 127.0.0.1/32 cert map=certmap\n"
                    "hostssl bench md5user 127.0.0.1/32 md5 clientcert=verify-full\n",
                    files={IDENT_FILE: "certmap  someoneelse  scramuser\n"},
                    auth_ident_file=f"@DIR@/{IDENT_FILE}", **tls_settings(certs))
    no_password = {"password": ""}
    assert login_outcome(bouncer.connect, **with_cert(certs, "client"), **no_password) \
        == "md5user"
    assert 'certificate authentication failed for user "md5user"' in login_outcome(
        bouncer.connect, **with_cert(certs, "someoneelse"), **no_password)
    assert "connection requires a valid client certificate" in login_outcome(
        bouncer.connect, sslmode="require", **no_password)
    assert login_outcome(bouncer.connect, user="scramuser", password="",
                         **with_cert(certs, "someoneelse")) == "scramuser"
    assert 'certificate authentication failed for user "scramuser"' in login_outcome(
        bouncer.connect, user="scramuser", password="", **with_cert(certs, "client"))
    # clientcert=verify-full: a password line that also wants the user's own certificate.
    assert login_outcome(bouncer.connect, dbname="bench", **with_cert(certs, "client")) \
        == "md5user"
    assert "CN mismatch" in login_outcome(bouncer.connect, dbname="bench",
                                          **with_cert(certs, "someoneelse"))
    assert "connection requires a valid client certificate" in login_outcome(
        bouncer.connect, dbname="bench", sslmode="require")


def test_peer_lines_take_the_user_from_the_socket_peer_or_its_map(start) -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    bouncer = start("local all md5user peer\n"
                    "local all scramuser peer map=peermap\n",
                    files={IDENT_FILE: f"peermap {me} scramuser\n"},
                    auth_ident_file=f"@DIR@/{IDENT_FILE}")
    local = {"host": bouncer.socket_dir, "password": ""}
    assert login_outcome(bouncer.connect, user="scramuser", **local) == "scramuser"
    if me != "md5user":
        assert 'Peer authentication failed for user "md5user"' in login_outcome(
            bouncer.connect, **local)
    bouncer.wait_for_log(rf'peer user "{me}" is not user "md5user"')


def test_reload_with_a_broken_hba_file_keeps_the_rules_in_force(start) -> None:
    bouncer = start("host all md5user 127.0.0.1/32 md5\n")
    assert login_outcome(bouncer.connect) == "md5user"  # serving: signal handlers are set
    bouncer.write_file(HBA_FILE, "host all md5user 127.0.0.1/32 md5\n"
                                 "host all all 127.0.0.1/32 no-such-method\n")
    since = len(bouncer.log_text())
    bouncer.reload()
    bouncer.wait_for_log(r"reload failed.*hba\.conf:2.*no-such-method", since=since)
    assert login_outcome(bouncer.connect) == "md5user"
    bouncer.write_file(HBA_FILE, "host all md5user 127.0.0.1/32 reject\n")
    bouncer.reload()
    assert "rejects connection" in _eventually_refused(bouncer)


def _eventually_refused(bouncer, attempts: int = 50) -> str:
    """The reload is asynchronous: log in until the new rules refuse (or give up)."""
    outcome = ""
    for _ in range(attempts):
        outcome = login_outcome(bouncer.connect)
        if outcome.startswith("refused"):
            return outcome
        time.sleep(0.1)
    return outcome


def test_broken_hba_file_at_start_names_file_and_line(start) -> None:
    with pytest.raises(BouncerStartError) as failed:
        start("host all all 127.0.0.1/32 md5\n"
              "local all all peer map=nowhere\n")
    assert "hba.conf:2" in failed.value.log
    assert 'map "nowhere"' in failed.value.log



def test_hook_auth_method_applies_hba_to_the_admin_console(pg, bouncer_factory) -> None:
    """PgBouncer applies auth_hba_file to the console too: a reject line keeps an admin out."""
    hba = ("host pgbouncer scramuser 127.0.0.1/32 reject\n"
           "host all all 127.0.0.1/32 md5\n")
    bouncer = bouncer_factory(common_ini(pg, auth_type="hba", auth_hba_file="@DIR@/hba.conf"),
                              extra_files={"hba.conf": hba})
    with pytest.raises(psycopg2.OperationalError, match="rejects connection"):
        bouncer.admin("SHOW VERSION")
    conn = bouncer.connect()  # other databases still follow their own line
    conn.close()
