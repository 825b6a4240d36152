"""Plugins in a running bouncer: every hook called where its contract says (through the
recording plugin tests/plugins/recorder.py, loaded with ``plugins =``), decision hooks failing
closed, and the example auth plugin installed from ``plugins/`` and loaded by its entry point,
alone and chained with auth_file and auth_query.

Test names ``test_hook_<hook>_...`` are how tests/test_meta.py knows each hook is exercised.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, NamedTuple, Optional

import psycopg2
import pytest

from tests.functional.pgroles import login_outcome, roles  # roles: a fixture
from tests.plugins import recorder
from bouncer.testing.process import BouncerProcess, BouncerStartError
from bouncer.testing.ini import common_ini
from tests.support import pgwire
from tests.support.plugininstall import install_plugin
from bouncer.testing.ports import wait_until

RECORDER = "tests.plugins.recorder"


class Recording(NamedTuple):
    bouncer: BouncerProcess
    path: str

    def records(self, hook: str) -> List[Dict[str, Any]]:
        return [record for record in recorder.recorded(self.path) if record["hook"] == hook]


def recorder_ini(pg, **settings: Any) -> str:
    databases = {recorder.LIMITED_DATABASE: f"host=127.0.0.1 port={pg.port} dbname=testdb"}
    return common_ini(pg, databases=databases, plugins=RECORDER, query_wait_timeout=1,
                      **settings)


@pytest.fixture(scope="module")
def recording(pg, tmp_path_factory) -> Iterator[Recording]:
    """One bouncer with the recorder, shared by the tests that only log in."""
    workdir = tmp_path_factory.mktemp("recorder")
    path = str(workdir / "hooks.jsonl")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(recorder.RECORD_ENV, path)
        bouncer = BouncerProcess(workdir / "bouncer", recorder_ini(pg))
    try:
        yield Recording(bouncer, path)
    finally:
        bouncer.stop()


@pytest.fixture
def start_recording(pg, bouncer_factory, tmp_path, monkeypatch):
    """``start(**settings) -> Recording``: a bouncer of its own, for lifecycle tests."""
    path = str(tmp_path / "hooks.jsonl")
    monkeypatch.setenv(recorder.RECORD_ENV, path)

    def start(**settings: Any) -> Recording:
        return Recording(bouncer_factory(recorder_ini(pg, **settings)), path)
    return start


def serving(bouncer: BouncerProcess) -> BouncerProcess:
    """Wait until *bouncer* serves a client: its signal handlers are installed after the
    listeners, so a signal sent any earlier could end the process."""
    assert login_outcome(bouncer.connect) == "md5user"
    return bouncer


def replaced_ini(bouncer: BouncerProcess, old: str, new: str) -> str:
    assert old in bouncer.ini_text
    return bouncer.ini_text.replace(old, new)


# -- process and configuration -------------------------------------------------------------------
def test_hook_validate_config_problem_refuses_start(start_recording, tmp_path) -> None:
    (tmp_path / "hooks.jsonl.refuse").write_text("recorder says no", encoding="utf-8")
    with pytest.raises(BouncerStartError) as failed:
        start_recording()
    assert "recorder says no" in failed.value.log


def test_hook_validate_config_problem_refuses_reload(start_recording, tmp_path) -> None:
    recording = start_recording(default_pool_size=20)
    bouncer = serving(recording.bouncer)
    bouncer.write_ini(replaced_ini(bouncer, "default_pool_size = 20", "default_pool_size = 7"))
    (tmp_path / "hooks.jsonl.refuse").write_text("recorder says no", encoding="utf-8")
    bouncer.reload()
    bouncer.wait_for_log("reload failed.*recorder says no")
    assert not recording.records("reload")


def test_hook_startup_is_called_once_after_validation(recording) -> None:
    hooks = [record["hook"] for record in recorder.recorded(recording.path)]
    assert hooks.count("startup") == 1
    assert hooks.index("validate_config") < hooks.index("startup")
    assert recording.records("startup")[0]["listen_port"] == recording.bouncer.port


def test_hook_reload_sees_the_old_and_the_new_configuration(start_recording) -> None:
    recording = start_recording(default_pool_size=20)
    bouncer = serving(recording.bouncer)
    bouncer.write_ini(replaced_ini(bouncer, "default_pool_size = 20", "default_pool_size = 7"))
    bouncer.reload()
    assert wait_until(lambda: recording.records("reload"), 10)
    assert recording.records("reload") == [
        {"hook": "reload", "in_force": True, "old_pool_size": 20, "new_pool_size": 7}]


def test_hook_shutdown_is_called_before_exit(start_recording) -> None:
    recording = start_recording()
    assert serving(recording.bouncer).stop() == 0
    assert recording.records("shutdown") == [{"hook": "shutdown"}]


# -- TLS --------------------------------------------------------------------------------------
def test_hook_client_tls_context_is_asked_at_start_and_reload(start_recording) -> None:
    recording = start_recording()
    assert recording.records("client_tls_context") == [
        {"hook": "client_tls_context", "sslmode": "disable"}]
    serving(recording.bouncer).reload()
    assert wait_until(lambda: len(recording.records("client_tls_context")) == 2, 10)


def test_hook_server_tls_context_is_asked_at_start(recording) -> None:
    assert recording.records("server_tls_context") == [
        {"hook": "server_tls_context", "sslmode": "prefer"}]


def refusal_fields(bouncer: BouncerProcess, **params: str) -> Dict[str, str]:
    """The ErrorResponse fields a raw client logging in with startup *params* is refused
    with (md5user's password answers any password request)."""
    sock = pgwire.connect(bouncer.host, bouncer.port)
    try:
        sock.sendall(pgwire.startup({"user": "md5user", "database": "testdb", **params}))
        error = pgwire.first_error(pgwire.login(sock, params.get("user", "md5user"),
                                                "md5pass"))
    finally:
        sock.close()
    assert error is not None, "logged in"
    return error


def test_hook_check_client_tls_refusal_reaches_the_client(recording) -> None:
    """A Refusal's message, SQLSTATE, detail and hint reach the client as its FATAL."""
    error = refusal_fields(recording.bouncer, user="rec_tls_only")
    assert (error["S"], error["C"], error["M"], error["D"], error["H"]) == (
        "FATAL", "28000", "recorder: this user must use TLS", recorder.TLS_DETAIL,
        recorder.TLS_HINT)
    assert {"hook": "check_client_tls", "user": "rec_tls_only", "database": "testdb",
            "tls": False} in recording.records("check_client_tls")


# -- login ----------------------------------------------------------------------------------
def test_hook_client_admit_refusal_reaches_the_client(recording) -> None:
    error = refusal_fields(recording.bouncer, user="rec_not_admitted")
    assert (error["C"], error["M"]) == ("53300", "recorder: not admitted")
    assert not [record for record in recording.records("auth_method")
                if record["user"] == "rec_not_admitted"], "refused before authentication"


def test_hook_auth_method_that_raises_fails_closed(recording) -> None:
    bouncer = recording.bouncer
    since = len(bouncer.log_text())
    outcome = login_outcome(bouncer.connect, user="rec_raises", password="x")
    assert "authentication failed (plugin error)" in outcome
    bouncer.wait_for_log("plugin hook bouncer_auth_method failed", since=since)
    assert bouncer.alive
    assert login_outcome(bouncer.connect) == "md5user"


def test_hook_verify_client_decides_a_method_a_plugin_added(recording) -> None:
    connect = recording.bouncer.connect
    assert login_outcome(connect, application_name=recorder.GOOD_TOKEN, password="") \
        == "md5user"
    assert 'authentication failed for user "md5user"' in login_outcome(
        connect, application_name="token:guess", password="")
    expired = refusal_fields(recording.bouncer, application_name=recorder.EXPIRED_TOKEN)
    assert (expired["M"], expired["H"]) == ("recorder: token expired", "ask for a new token")
    methods = {record["method"] for record in recording.records("verify_client")}
    assert methods == {recorder.TOKEN_METHOD}


def test_hook_password_checkers_check_a_cleartext_password_then_log_in_with_it(
        recording) -> None:
    """The checker's password is what the server login uses: md5user's, so testdb opens."""
    bouncer = recording.bouncer
    connect = bouncer.connect
    assert login_outcome(connect, application_name=recorder.PASSWORD_METHOD) == "md5user"
    assert "RECPW authentication failed" in login_outcome(
        connect, application_name=recorder.PASSWORD_METHOD, password="wrong")
    since = len(bouncer.log_text())
    assert "authentication failed (plugin error)" in login_outcome(
        connect, application_name=recorder.PASSWORD_METHOD, password=recorder.PASSWORD_RAISES)
    bouncer.wait_for_log("the checker failed", since=since)
    # libpq never sends an empty password: the raw client does.
    sock = pgwire.connect(bouncer.host, bouncer.port)
    try:
        sock.sendall(pgwire.startup({"user": "md5user", "database": "testdb",
                                     "application_name": recorder.PASSWORD_METHOD}))
        error = pgwire.first_error(pgwire.login(sock, "md5user", ""))
    finally:
        sock.close()
    assert error is not None and error["M"] == "empty password returned by client", error
    assert len(recording.records("password_check")) == 3, "an empty password is never checked"


def test_hook_get_credentials_plugin_answers_after_auth_file(recording) -> None:
    connect = recording.bouncer.connect
    assert login_outcome(connect, user=recorder.ROBOT_USER,
                         password=recorder.ROBOT_PASSWORD) == recorder.ROBOT_USER
    assert "password authentication failed" in login_outcome(
        connect, user=recorder.ROBOT_USER, password="wrong")
    assert login_outcome(connect) == "md5user"
    asked_for = {record["user"] for record in recording.records("get_credentials")}
    assert recorder.ROBOT_USER in asked_for
    assert "md5user" not in asked_for, "auth_file answers md5user before any plugin"


def test_hook_client_login_reports_each_outcome_without_secrets(recording) -> None:
    connect = recording.bouncer.connect
    assert login_outcome(connect, user="scramuser") == "scramuser"
    assert "password authentication failed" in login_outcome(connect, user="scramuser",
                                                             password="Guess-7731")
    outcomes = [(record["ok"], record["reason"]) for record in recording.records("client_login")
                if record["user"] == "scramuser"]
    assert (True, "") in outcomes
    failures = [reason for ok, reason in outcomes if not ok]
    assert failures and all("Guess-7731" not in reason and "scrampass" not in reason
                            for reason in failures)


# -- limits and admin ---------------------------------------------------------------------------
def test_hook_server_connect_limit_holds_clients_back(recording) -> None:
    outcome = login_outcome(recording.bouncer.connect, dbname=recorder.LIMITED_DATABASE)
    assert "query_wait_timeout" in outcome
    assert {"hook": "server_connect_limit", "database": recorder.LIMITED_DATABASE,
            "user": "md5user"} in recording.records("server_connect_limit")


def test_hook_admin_commands_adds_a_console_command(recording) -> None:
    rows = recording.bouncer.admin("SHOW RECORDER")
    assert ("startup",) in rows and ("admin_commands",) in rows


# -- the example plugin, installed from plugins/ ------------------------------------------------
@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory) -> str:
    """The example distribution, ``pip install``-ed into a directory of its own."""
    return install_plugin("bouncer-example-auth", str(tmp_path_factory.mktemp("example-plugin")))


@pytest.fixture
def start_with_example(pg, bouncer_factory, example_plugin, tmp_path, monkeypatch):
    """``start(secrets, userlist=None, **settings)``: the example plugin found on the path,
    serving *secrets* from the file its ``[plugin.example_auth]`` section names."""
    def start(secrets: Dict[str, str], userlist: Optional[Dict[str, str]] = None,
              **settings: Any) -> BouncerProcess:
        secrets_file = tmp_path / "example-secrets"
        secrets_file.write_text("".join(f"{user}:{secret}\n" for user, secret in secrets.items()),
                                encoding="utf-8")
        monkeypatch.setenv("PYTHONPATH", example_plugin)
        monkeypatch.delenv("BOUNCER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
        section = f"\n[plugin.example_auth]\nsecrets_file = {secrets_file}\n"
        return bouncer_factory(common_ini(pg, **settings) + section, userlist)
    return start


def test_example_plugin_installed_from_plugins_answers_alone(start_with_example) -> None:
    bouncer = start_with_example({"md5user": "md5pass"}, userlist={})
    assert login_outcome(bouncer.connect) == "md5user"
    assert "password authentication failed" in login_outcome(bouncer.connect, password="nope")


def test_example_plugin_can_be_disabled_by_its_entry_point_name(start_with_example) -> None:
    bouncer = start_with_example({"trustuser": "example-pw"}, disable_plugins="example_auth")
    assert "password authentication failed" in login_outcome(
        bouncer.connect, user="trustuser", password="example-pw")


def test_hook_declare_settings_section_is_typed_reloaded_and_shown(start_with_example,
                                                                   tmp_path) -> None:
    """The example plugin's [plugin.example_auth] setting: in SHOW CONFIG as bouncer's own
    settings are, changed by RELOAD, and a misspelt key refuses the reload."""
    bouncer = start_with_example({"trustuser": "first-pw"})
    assert login_outcome(bouncer.connect, user="trustuser", password="first-pw") == "trustuser"
    other = tmp_path / "other-secrets"
    other.write_text("trustuser:second-pw\n", encoding="utf-8")
    first = str(tmp_path / "example-secrets")
    rows = {row[0]: row[1:] for row in bouncer.admin("SHOW CONFIG")}
    assert rows["plugin.example_auth.secrets_file"] == (first, "", "yes")

    original = bouncer.ini_text
    bouncer.write_ini(replaced_ini(bouncer, first, f"{other}\nsecret_fle = typo"))
    since = len(bouncer.log_text())
    bouncer.reload()
    bouncer.wait_for_log(r"reload failed.*secret_fle: unknown parameter", since=since)
    assert login_outcome(bouncer.connect, user="trustuser", password="first-pw") == "trustuser"

    bouncer.write_ini(original.replace(first, str(other)))
    bouncer.reload()
    assert wait_until(lambda: dict((row[0], row[1]) for row in bouncer.admin("SHOW CONFIG"))
                      ["plugin.example_auth.secrets_file"] == str(other), 10)
    assert login_outcome(bouncer.connect, user="trustuser", password="second-pw") == "trustuser"



def test_example_plugin_chained_between_auth_file_and_auth_query(start_with_example,
                                                                  roles) -> None:
    # trustuser has no password in PostgreSQL: had auth_query answered before the plugin,
    # the plugin's password could not have let it in.
    looked_up = roles.create("h10_chained", "chained-pw")
    bouncer = start_with_example({"trustuser": "example-pw", "md5user": "not-this-one"},
                                 auth_user="scramuser")
    assert login_outcome(bouncer.connect) == "md5user"  # auth_file first
    assert login_outcome(bouncer.connect, user="trustuser", password="example-pw") \
        == "trustuser"
    assert login_outcome(bouncer.connect, user=looked_up, password="chained-pw") == looked_up


def test_a_plugin_that_returns_its_refusal_refuses_the_client(pg, bouncer_factory) -> None:
    """A plugin written for a contract where bouncer_client_admit returned its refusal: its
    answer is not taken for "admitted", the client is refused (fail closed), the log says
    how the plugin must refuse."""
    bouncer = bouncer_factory(common_ini(pg, plugins="tests.plugins.returns_refusal"))
    assert "authentication failed (plugin error)" in login_outcome(bouncer.connect)
    bouncer.wait_for_log("raise bouncer.plugin.Refusal to refuse")
    assert login_outcome(bouncer.connect, user="scramuser", password="scrampass") \
        == "scramuser"


def test_a_bug_in_a_client_session_fails_that_client_only(pg, bouncer_factory) -> None:
    """An unexpected exception ends the client's session with an error it can read, is logged
    with its traceback, and leaves the daemon serving everyone else."""
    bouncer = bouncer_factory(common_ini(pg, plugins="tests.plugins.broken_method"))
    with pytest.raises(psycopg2.OperationalError, match="bouncer internal error"):
        bouncer.connect(user="md5user")
    bouncer.wait_for_log(r"ERROR C-0x[0-9a-f]+: testdb/md5user@127\.0\.0\.1:\d+ internal error")
    conn = bouncer.connect(user="scramuser", password="scrampass")
    conn.close()
