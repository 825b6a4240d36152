"""plugins/bouncer-ldap, installed with pip and loaded by its entry point, in a running bouncer
against a real slapd (tests/fixtures/ldap.py): ``auth_type = ldap`` with ``auth_ldap_options``
and ``ldap`` lines of ``auth_hba_file``, in both of PostgreSQL's modes, with PgBouncer's words
for the client and the log; an LDAP server that is down or never answers refuses the login
without holding up other clients; bad options are refused by ``--check`` and at start.

The cases follow PgBouncer's test_auth.py::test_ldap_auth.  After an LDAP login bouncer logs in
to PostgreSQL with the client's password, as PgBouncer does: role ldapuser1 has the same one.
"""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from typing import Any, Dict, List

import pytest

from bouncer.testing.ini import common_ini
from bouncer.testing.ports import free_port, wait_until
from bouncer.testing.process import BOUNCER_PROGRAM, REPO_ROOT, BouncerStartError
from tests.functional.pgroles import login_outcome, roles  # roles: a fixture
from tests.support.plugininstall import install_plugin
from tests.support.slapd import BASE_DN, user_dn

USER, PASSWORD = "ldapuser1", "secret1"
REFUSED = "LDAP authentication failed"


@pytest.fixture(scope="module")
def ldap_plugin(tmp_path_factory, roles) -> str:
    """The plugin's install dir; role ldapuser1 has the directory's password meanwhile."""
    roles.create("", PASSWORD, encryption="scram-sha-256", name=USER)
    return install_plugin("bouncer-ldap", str(tmp_path_factory.mktemp("ldap-plugin")))


@pytest.fixture
def ldap_conf(tmp_path, monkeypatch):
    """The ldap.conf bouncer reads (``$LDAPCONF``, as libldap's): empty unless a test writes
    it, so the machine's own /etc/ldap/ldap.conf plays no part."""
    path = tmp_path / "ldap.conf"
    path.write_text("", encoding="utf-8")
    monkeypatch.setenv("LDAPCONF", str(path))
    return path


@pytest.fixture
def start(pg, slapd, bouncer_factory, ldap_plugin, ldap_conf, monkeypatch):
    """``start(section="", hba=None, **settings) -> bouncer`` with the plugin loaded;
    ``hba`` lines become auth_hba_file (auth_type = hba)."""
    monkeypatch.setenv("PYTHONPATH", ldap_plugin)
    monkeypatch.delenv("BOUNCER_DISABLE_PLUGIN_AUTOLOAD", raising=False)

    def run(section: str = "", hba: Any = None, **settings: Any):
        files: Dict[str, str] = {}
        if hba is not None:
            files["hba.conf"] = "".join(line + "\n" for line in hba)
            settings.update(auth_type="hba", auth_hba_file="@DIR@/hba.conf")
        else:
            settings.setdefault("auth_type", "ldap")
        text = common_ini(pg, **settings)
        if section:
            text += "\n[plugin.ldap]\n" + section + "\n"
        return bouncer_factory(text, extra_files=files)
    return run


def url_options(slapd, rest: str = "?uid?sub", scheme: str = "ldap") -> str:
    port = slapd.ldaps_port if scheme == "ldaps" else slapd.port
    return f'ldapurl="{scheme}://127.0.0.1:{port}/{BASE_DN}{rest}"'


def simple_options(slapd, port: int = 0, extra: str = "") -> str:
    return (f'ldapserver=127.0.0.1 ldapport={port or slapd.port} ldapprefix="uid=" '
            f'ldapsuffix=",{BASE_DN}" {extra}').strip()


# -- auth_type = ldap ---------------------------------------------------------------------------

def test_search_bind_from_an_ldapurl_accepts_the_password_and_refuses_others(
        start, slapd) -> None:
    """PgBouncer's documented example; the user is in no auth_file."""
    bouncer = start(auth_ldap_options=url_options(slapd))
    assert login_outcome(bouncer.connect, user=USER, password=PASSWORD) == USER
    since = len(bouncer.log_text())
    outcome = login_outcome(bouncer.connect, user=USER, password="wrong")
    assert f"FATAL:  {REFUSED}" in outcome, outcome
    bouncer.wait_for_log(f"WARNING C-.* LDAP login failed for user {user_dn(USER)} on server "
                         "127.0.0.1: invalidCredentials", since=since)
    bouncer.wait_for_log(f"closing because: {REFUSED}", since=since)


def test_an_unknown_user_is_refused_in_the_same_words_and_logged_as_unknown(
        start, slapd) -> None:
    bouncer = start(auth_ldap_options=url_options(slapd))
    assert REFUSED in login_outcome(bouncer.connect, user="nobody", password="x")
    bouncer.wait_for_log('LDAP user "nobody" does not exist')
    bouncer.wait_for_log('LDAP search for filter "\\(uid=nobody\\)" on server "127.0.0.1" '
                         "returned no entries.")


def test_simple_bind_with_prefix_and_suffix(start, slapd) -> None:
    bouncer = start(auth_ldap_options=simple_options(slapd))
    assert login_outcome(bouncer.connect, user=USER, password=PASSWORD) == USER
    assert REFUSED in login_outcome(bouncer.connect, user=USER, password="secret2")


def test_search_filters_with_the_username_placeholder(start, slapd) -> None:
    """PgBouncer's cases 6 and 7: a bare filter (libldap takes one), and one in the URL."""
    bare = (f'ldapserver=127.0.0.1 ldapport={slapd.port} ldapbasedn="{BASE_DN}" '
            'ldapsearchfilter="uid=$username"')
    in_url = url_options(slapd, "??sub?(|(uid=$username)(mail=$username))")
    for options in (bare, in_url):
        bouncer = start(auth_ldap_options=options)
        assert login_outcome(bouncer.connect, user=USER, password=PASSWORD) == USER, options
        bouncer.stop()


def test_search_bind_finds_a_dn_in_cyrillic_and_refuses_a_user_found_twice(
        start, slapd, roles) -> None:
    """PgBouncer's directory has ldapuser2 under a long Cyrillic o=; a filter that finds two
    entries is not a login (PgBouncer: "not unique")."""
    parent = f"o={'йцукенгшщзхъфывапролджэячсмитьбю-' * 3}йцукенгшщзхъфыва,{BASE_DN}"
    slapd.add(parent, ["top", "organization"], {"o": parent[2:].split(",")[0]})
    slapd.add_user("ldapuser2", "secret2", parent=parent)
    roles.create("", "secret2", encryption="scram-sha-256", name="ldapuser2")
    bouncer = start(auth_ldap_options=url_options(slapd))
    assert login_outcome(bouncer.connect, user="ldapuser2", password="secret2") == "ldapuser2"
    bouncer.stop()
    twice = url_options(slapd, "??sub?(|(uid=$username)(uid=ldapuser2))")
    bouncer = start(auth_ldap_options=twice)
    assert REFUSED in login_outcome(bouncer.connect, user=USER, password=PASSWORD)
    bouncer.wait_for_log(f'LDAP user "{USER}" is not unique')


def test_a_user_name_that_would_rewrite_the_search_filter_is_refused(start, slapd) -> None:
    bouncer = start(auth_ldap_options=url_options(slapd))
    assert REFUSED in login_outcome(bouncer.connect, user="*", password=PASSWORD)
    bouncer.wait_for_log("invalid character in user name for LDAP authentication")


def test_the_first_server_that_answers_is_used(start, slapd) -> None:
    """ldapserver lists several hosts: one that refuses connections is skipped."""
    options = (f'ldapserver="127.0.0.2 127.0.0.1" ldapport={slapd.port} '
               f'ldapbasedn="{BASE_DN}"')
    bouncer = start(auth_ldap_options=options)
    assert login_outcome(bouncer.connect, user=USER, password=PASSWORD) == USER


def test_a_reload_puts_new_options_in_force(start, slapd) -> None:
    bouncer = start(auth_ldap_options=simple_options(slapd, port=free_port()))
    assert REFUSED in login_outcome(bouncer.connect, user=USER, password=PASSWORD)
    bouncer.write_ini(with_options(bouncer.ini_text, simple_options(slapd)))
    bouncer.reload()
    assert wait_until(lambda: login_outcome(bouncer.connect, user=USER, password=PASSWORD)
                      == USER, 10), bouncer.log_tail()


def with_options(ini_text: str, options: str) -> str:
    return "".join(f"auth_ldap_options = {options}\n" if line.startswith("auth_ldap_options =")
                   else line for line in ini_text.splitlines(keepends=True))


# -- an LDAP server that is down or does not answer ------------------------------------------

def test_a_server_that_is_down_refuses_the_login_and_says_so_in_the_log(start, slapd) -> None:
    bouncer = start(auth_ldap_options=simple_options(slapd, port=free_port()))
    outcome = login_outcome(bouncer.connect, user=USER, password=PASSWORD)
    assert REFUSED in outcome, outcome
    bouncer.wait_for_log(f"LDAP login failed for user {user_dn(USER)} on server 127.0.0.1: "
                         "Can't contact LDAP server")
    assert bouncer.alive


@pytest.fixture
def black_hole():
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_a_server_that_never_answers_is_given_up_on_without_holding_up_others(
        start, slapd, black_hole) -> None:
    """While one client waits for the silent server, another logs in by md5 at once: the
    bind waits on a gevent socket, not in the hub."""
    bouncer = start(hba=[f"host all {USER} 127.0.0.1/32 ldap ldapserver=127.0.0.1 "
                         f'ldapport={black_hole} ldapprefix="uid=" ldapsuffix=",{BASE_DN}"',
                         "host all all 127.0.0.1/32 md5"],
                    section="timeout = 2")
    outcomes: List[str] = []
    started = time.monotonic()
    waiting = threading.Thread(target=lambda: outcomes.append(
        login_outcome(bouncer.connect, user=USER, password=PASSWORD, connect_timeout=30)))
    waiting.start()
    time.sleep(0.3)
    assert login_outcome(bouncer.connect) == "md5user"
    assert time.monotonic() - started < 1.5, "the md5 login waited for the LDAP one"
    waiting.join(30)
    assert REFUSED in outcomes[0], outcomes
    assert 1.5 < time.monotonic() - started < 10
    bouncer.wait_for_log(f"LDAP login failed for user {user_dn(USER)}|took longer than "
                         "plugin.ldap.timeout")


# -- auth_hba_file's ldap method ----------------------------------------------------------------

def test_hba_ldap_lines_carry_their_own_options_next_to_other_methods(start, slapd) -> None:
    """PgBouncer's first two cases: simple bind, then search+bind, as HBA lines."""
    for line in (f"host all {USER} 0.0.0.0/0 ldap {simple_options(slapd)}",
                 f'host all {USER} 0.0.0.0/0 ldap ldapserver=127.0.0.1 ldapport={slapd.port} '
                 f'ldapbasedn="{BASE_DN}"'):
        bouncer = start(hba=[line, "host all all 0.0.0.0/0 md5"])
        assert login_outcome(bouncer.connect, user=USER, password=PASSWORD) == USER, line
        assert REFUSED in login_outcome(bouncer.connect, user=USER, password="wrong")
        assert login_outcome(bouncer.connect) == "md5user", "md5user's line is md5"
        bouncer.stop()


# -- TLS ----------------------------------------------------------------------------------------

def test_ldaps_and_starttls_check_the_servers_certificate(start, slapd, certs) -> None:
    """Trusted with tls_ca_file; an unknown CA refuses the login (ldap.conf is empty, so
    libldap's default, demand, holds)."""
    for options in (url_options(slapd, scheme="ldaps"), simple_options(slapd, extra="ldaptls=1")):
        trusted = start(auth_ldap_options=options, section=f"tls_ca_file = {certs.ca_cert}")
        assert login_outcome(trusted.connect, user=USER, password=PASSWORD) == USER, options
        trusted.stop()
        untrusted = start(auth_ldap_options=options,
                          section=f"tls_ca_file = {certs.other_ca_cert}")
        assert REFUSED in login_outcome(untrusted.connect, user=USER, password=PASSWORD)
        untrusted.stop()


def test_ldap_conf_decides_the_check_by_default_as_for_pgbouncers_libldap(
        start, slapd, certs, ldap_conf) -> None:
    """PgBouncer's own test set-up: TLS_REQCERT never; then TLS_CACERT names the CA."""
    options = url_options(slapd, scheme="ldaps")
    ldap_conf.write_text("TLS_REQCERT never\n", encoding="utf-8")
    bouncer = start(auth_ldap_options=options)
    assert login_outcome(bouncer.connect, user=USER, password=PASSWORD) == USER
    ldap_conf.write_text(f"TLS_CACERT {certs.other_ca_cert}\n", encoding="utf-8")
    assert REFUSED in login_outcome(bouncer.connect, user=USER, password=PASSWORD)
    ldap_conf.write_text(f"TLS_CACERT {certs.ca_cert}\n", encoding="utf-8")
    assert login_outcome(bouncer.connect, user=USER, password=PASSWORD) == USER
    bouncer.stop()
    ldap_conf.write_text("TLS_REQCERT never\n", encoding="utf-8")
    checking = start(auth_ldap_options=options, section="tls_verify = 1")
    assert REFUSED in login_outcome(checking.connect, user=USER, password=PASSWORD), \
        "tls_verify = 1 checks whatever ldap.conf says"


def test_ldaps_on_the_plain_port_fails_as_in_pgbouncer(start, slapd, certs) -> None:
    """PgBouncer's case 8.6: ldaps:// to the plain LDAP port."""
    options = f'ldapurl="ldaps://127.0.0.1:{slapd.port}/{BASE_DN}?uid?sub"'
    bouncer = start(auth_ldap_options=options, section=f"tls_ca_file = {certs.ca_cert}")
    assert REFUSED in login_outcome(bouncer.connect, user=USER, password=PASSWORD)


# -- configuration ------------------------------------------------------------------------------

def run_check(ini_text: str, workdir, plugin_site: str) -> subprocess.CompletedProcess:
    """``bouncer --check`` on *ini_text*, with the installed plugin on the path."""
    path = workdir / "check.ini"
    path.write_text(ini_text.replace("@DIR@", str(workdir)).replace("@PORT@", str(free_port())),
                    encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, plugin_site]))
    env.pop("BOUNCER_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([*BOUNCER_PROGRAM, "--check", str(path)], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("options, problem", [
    ("", "auth_ldap_options is not set"),
    ("ldapserver=h", 'requires argument "ldapbasedn", "ldapprefix", or "ldapsuffix"'),
    ('ldapserver=h ldapprefix="uid=', "unterminated quoted value"),
    ("ldapserver=h ldapbasedn=x ldapsecret=1", 'invalid LDAP option: "ldapsecret"'),
])
def test_check_and_start_refuse_options_that_cannot_work(start, pg, tmp_path, ldap_plugin,
                                                         options: str, problem: str) -> None:
    checked = run_check(common_ini(pg, auth_type="ldap", auth_file=None,
                                   auth_ldap_options=options or None), tmp_path, ldap_plugin)
    assert checked.returncode == 1 and problem in checked.stderr, checked.stderr
    with pytest.raises(BouncerStartError) as refused:
        start(auth_ldap_options=options or None)
    assert problem in refused.value.log


def test_check_accepts_working_options(pg, slapd, tmp_path, ldap_plugin) -> None:
    ini = common_ini(pg, auth_type="ldap", auth_file=None, auth_ldap_options=url_options(slapd))
    checked = run_check(ini + "\n[plugin.ldap]\ntimeout = 3\ntls_verify = 0\n", tmp_path,
                        ldap_plugin)
    assert checked.returncode == 0, checked.stderr


def test_check_names_the_hba_line_whose_ldap_options_cannot_work(start, slapd) -> None:
    with pytest.raises(BouncerStartError) as refused:
        start(hba=["host all all 0.0.0.0/0 md5",
                   "host all all 0.0.0.0/0 ldap ldapserver=127.0.0.1 ldapbasedn=x ldapprefix=y"])
    assert "hba.conf:2: cannot mix options for simple bind and search+bind modes" \
        in refused.value.log
