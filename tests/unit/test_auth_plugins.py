"""The HBA and cert/peer built-ins called directly, with stand-in apps and clients: method
names, refusals in PostgreSQL's words, which rules stay in force across reloads, and how the
certificate or unix account maps to the database user."""
from __future__ import annotations

import os
import pwd
from typing import Any, Optional

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from bouncer.builtin import auth_cert, auth_hba
from bouncer.config.model import Config
from bouncer.errors import AuthFailed
from tests.support.certgen import issue, make_ca


class FakeApp:
    def __init__(self, hba_path: str, ident_path: str = "", auth_type: str = "hba") -> None:
        self.config = make_config(hba_path, ident_path, auth_type)


def make_config(hba_path: str, ident_path: str = "", auth_type: str = "hba") -> Config:
    return Config(path="test.ini", settings={"auth_type": auth_type, "auth_hba_file": hba_path,
                                             "auth_ident_file": ident_path})


class FakeClient:
    def __init__(self, user: str = "alice", database: str = "app", addr: str = "127.0.0.1",
                 unix: bool = False, tls: str = "", peer_cert: Optional[bytes] = None,
                 peer_uid: Optional[int] = None) -> None:
        self.user, self.database, self.addr, self.unix = user, database, addr, unix
        self.tls, self.peer_cert, self.peer_uid = tls, peer_cert, peer_uid
        self.replication = "no"
        self.sock = None  # not a TLS socket: nothing for the cert plugin to judge again


@pytest.fixture
def write(tmp_path):
    def write_file(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)
    return write_file


def method(app: Any, client: FakeClient) -> Any:
    # The fake stands for both the ClientInfo and the session the hook is given.
    return auth_hba.bouncer_auth_method(app=app, client=client, session=client)


# -- auth_hba ----------------------------------------------------------------------------------
def test_methods_are_named_as_the_core_names_them(write) -> None:
    app = FakeApp(write("hba", "host all alice 127.0.0.1/32 password\n"
                               "host all all ::1/128 scram-sha-256\n"))
    assert method(app, FakeClient()) == "plain"
    assert method(app, FakeClient(user="bob", addr="::1")) == "scram-sha-256"


def test_no_match_and_reject_refuse_with_postgresql_words(write) -> None:
    app = FakeApp(write("hba", "hostssl all all 127.0.0.1/32 md5\n"
                               "local all all reject\n"))
    with pytest.raises(AuthFailed) as no_entry:
        method(app, FakeClient())
    assert (no_entry.value.sqlstate, no_entry.value.message) == (
        "28000", 'no pg_hba.conf entry for host "127.0.0.1", user "alice", database "app", '
                 "no encryption")
    with pytest.raises(AuthFailed, match=r'rejects connection for host "\[local\]"'):
        method(app, FakeClient(unix=True, addr="unix"))


def test_other_auth_types_are_not_the_hba_plugins_business(write) -> None:
    app = FakeApp(write("hba", "local all all reject\n"), auth_type="md5")
    assert method(app, FakeClient(unix=True)) is None
    assert auth_hba.bouncer_validate_config(config=make_config("/nonexistent", auth_type="md5")) \
        == []


def test_a_map_without_an_ident_file_is_refused_naming_file_and_line(write) -> None:
    path = write("hba", "local all all trust\nlocal all all peer map=staff\n")
    problems = auth_hba.bouncer_validate_config(config=make_config(path))
    assert len(problems) == 1 and f"{path}:2" in problems[0] and 'map "staff"' in problems[0]


def test_rules_change_only_when_a_reload_loads_cleanly(write) -> None:
    path = write("hba", "host all all 127.0.0.1/32 md5\n")
    app = FakeApp(path)
    auth_hba.bouncer_startup(app=app)
    write("hba", "host all all 127.0.0.1/32 trust\n")
    assert method(app, FakeClient()) == "md5", "an edit without RELOAD changes nothing"
    write("hba", "host all all 127.0.0.1/32 bogus\n")  # broken after validation
    auth_hba.bouncer_reload(app=app, old_config=app.config, new_config=app.config)
    assert method(app, FakeClient()) == "md5"
    write("hba", "host all all 127.0.0.1/32 trust\n")
    auth_hba.bouncer_reload(app=app, old_config=app.config, new_config=app.config)
    assert method(app, FakeClient()) == "trust"


def test_clientcert_on_a_password_line_demands_the_users_certificate(write) -> None:
    app = FakeApp(write("hba", "hostssl all all 127.0.0.1/32 md5 clientcert=verify-full\n"))
    with pytest.raises(AuthFailed, match="requires a valid client certificate"):
        method(app, FakeClient(tls="TLSv1.3"))
    with pytest.raises(AuthFailed, match="CN mismatch"):
        method(app, FakeClient(tls="TLSv1.3", peer_cert=certificate("bob")))
    assert method(app, FakeClient(tls="TLSv1.3", peer_cert=certificate("alice"))) == "md5"


# -- auth_cert ----------------------------------------------------------------------------------
_CA = make_ca("unit test CA")


def certificate(common_name: str) -> bytes:
    return issue(_CA, common_name).cert.public_bytes(Encoding.DER)


def verify(client: FakeClient, how: str) -> Optional[bool]:
    return auth_cert.bouncer_verify_client(session=client, method=how)


def test_other_methods_are_not_the_cert_plugins_business() -> None:
    assert verify(FakeClient(), "md5") is None


def test_cert_accepts_the_common_name_that_is_the_user() -> None:
    assert verify(FakeClient(peer_cert=certificate("alice")), "cert") is True
    with pytest.raises(AuthFailed, match='certificate authentication failed for user "alice"'):
        verify(FakeClient(peer_cert=certificate("mallory")), "cert")
    with pytest.raises(AuthFailed, match="connection requires a valid client certificate"):
        verify(FakeClient(), "cert")


def test_cert_map_from_the_hba_line_allows_other_names(write) -> None:
    app = FakeApp(write("hba", "hostssl all all 127.0.0.1/32 cert map=certs\n"),
                  write("ident", "certs  carol.example  alice\n"))
    client = FakeClient(tls="TLSv1.3", peer_cert=certificate("carol.example"))
    assert method(app, client) == "cert"
    assert verify(client, "cert") is True
    stranger = FakeClient(tls="TLSv1.3", peer_cert=certificate("alice"))
    method(app, stranger)
    with pytest.raises(AuthFailed) as refused:
        verify(stranger, "cert")
    assert 'no match in usermap "certs"' in refused.value.log_reason


def test_peer_takes_the_account_name_of_the_socket_peer() -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert verify(FakeClient(user=me, unix=True, peer_uid=os.geteuid()), "peer") is True
    with pytest.raises(AuthFailed, match='Peer authentication failed for user "h10_other"'):
        verify(FakeClient(user="h10_other", unix=True, peer_uid=os.geteuid()), "peer")
    with pytest.raises(AuthFailed, match="Peer authentication failed"):
        verify(FakeClient(user=me, unix=False), "peer")
