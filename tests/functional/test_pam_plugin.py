"""plugins/bouncer-pam, installed with pip and loaded by its entry point, in a running bouncer
that checks passwords with the real libpam: a throwaway service in /etc/pam.d whose auth step
is pam_exec with a script that knows one user's password (no system account is touched), its
account step pam_permit.  Writing /etc/pam.d needs root: elsewhere these tests skip.
"""
from __future__ import annotations

import os
import stat
import threading
import time
import uuid
from typing import Iterator, List

import pytest

from bouncer.testing.ini import common_ini
from bouncer.testing.process import BouncerStartError
from tests.functional.pgroles import login_outcome, roles  # roles: a fixture
from tests.support.plugininstall import install_plugin

USER, PASSWORD = "pamuser1", "pam-secret1"
SLOW_USER, SLOW_SECONDS = "pamslow", 2
REFUSED = "PAM authentication failed"
PAM_DIR = "/etc/pam.d"
MODULES = ("pam_exec.so", "pam_permit.so")
#: pam_exec's expose_authtok writes the password and a NUL to the script's standard input.
CHECKER = f"""#!/bin/bash
IFS= read -r -d '' password
[ "$PAM_USER" = "{SLOW_USER}" ] && sleep {SLOW_SECONDS}
[ "$PAM_USER" = "{USER}" ] && [ "$password" = "{PASSWORD}" ]
"""


def pam_module_dir() -> str:
    for directory in ("/lib/x86_64-linux-gnu/security", "/usr/lib/x86_64-linux-gnu/security",
                      "/lib/security", "/usr/lib/security", "/lib64/security"):
        if all(os.path.exists(os.path.join(directory, name)) for name in MODULES):
            return directory
    return ""


@pytest.fixture(scope="module")
def pam_service(tmp_path_factory) -> Iterator[str]:
    """The name of a PAM service that accepts pamuser1's password only; removed afterwards."""
    if os.geteuid() != 0 or not os.access(PAM_DIR, os.W_OK):
        pytest.skip(f"writing a PAM service into {PAM_DIR} needs root")
    if not pam_module_dir():
        pytest.skip(f"PAM modules {', '.join(MODULES)} not found")
    script = tmp_path_factory.mktemp("pam") / "check-password"
    script.write_text(CHECKER, encoding="utf-8")
    script.chmod(stat.S_IRWXU)
    name = f"bouncer-test-{uuid.uuid4().hex[:8]}"
    path = os.path.join(PAM_DIR, name)
    with open(path, "w", encoding="utf-8") as service:
        service.write(f"auth required pam_exec.so expose_authtok quiet {script}\n"
                      "account required pam_permit.so\n")
    try:
        yield name
    finally:
        os.unlink(path)


@pytest.fixture(scope="module")
def pam_plugin(tmp_path_factory, roles) -> str:
    """The plugin's install dir; role pamuser1 has the PAM password meanwhile."""
    roles.create("", PASSWORD, encryption="scram-sha-256", name=USER)
    return install_plugin("bouncer-pam", str(tmp_path_factory.mktemp("pam-plugin")))


@pytest.fixture
def start(pg, pam_service, pam_plugin, bouncer_factory, monkeypatch):
    """``start(**settings) -> bouncer``: auth_type = pam with the test service."""
    monkeypatch.setenv("PYTHONPATH", pam_plugin)
    monkeypatch.delenv("BOUNCER_DISABLE_PLUGIN_AUTOLOAD", raising=False)

    def run(**settings):
        text = common_ini(pg, auth_type="pam", **settings)
        return bouncer_factory(text + f"\n[plugin.pam]\nservice = {pam_service}\n")
    return run


def test_pam_accepts_the_password_and_refuses_others_in_pgbouncers_words(
        start, pam_service) -> None:
    """The user is in no auth_file: PAM alone decides, and its password logs in to
    PostgreSQL."""
    bouncer = start()
    assert login_outcome(bouncer.connect, user=USER, password=PASSWORD) == USER
    since = len(bouncer.log_text())
    outcome = login_outcome(bouncer.connect, user=USER, password="wrong")
    assert f"FATAL:  {REFUSED}" in outcome, outcome
    bouncer.wait_for_log(f'WARNING C-.* PAM service "{pam_service}" refused user {USER}: ',
                         since=since)
    bouncer.wait_for_log(f"closing because: {REFUSED}", since=since)
    assert REFUSED in login_outcome(bouncer.connect, user="nobody", password=PASSWORD)


def test_a_slow_pam_check_runs_in_a_thread_and_holds_up_no_one(start) -> None:
    bouncer = start()
    outcomes: List[str] = []
    slow = threading.Thread(target=lambda: outcomes.append(
        login_outcome(bouncer.connect, user=SLOW_USER, password="x", connect_timeout=20)))
    started = time.monotonic()
    slow.start()
    time.sleep(0.3)
    assert login_outcome(bouncer.connect, user=USER, password=PASSWORD) == USER
    assert time.monotonic() - started < SLOW_SECONDS, "the fast login waited for the slow one"
    slow.join(20)
    assert REFUSED in outcomes[0], outcomes


def test_without_the_plugin_auth_type_pam_is_refused_at_start(pg, bouncer_factory,
                                                              monkeypatch) -> None:
    """The refusal that stays when no plugin checks pam (disable_plugins takes it away)."""
    monkeypatch.delenv("BOUNCER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    with pytest.raises(BouncerStartError) as refused:
        bouncer_factory(common_ini(pg, auth_type="pam", disable_plugins="pam"))
    assert "auth_type = pam: no loaded plugin verifies pam logins" in refused.value.log
