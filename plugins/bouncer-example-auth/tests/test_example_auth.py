"""The example plugin on its own, and chained behind bouncer's auth_file through the real
plugin manager, configured by its own ini section (no PostgreSQL needed; the end-to-end tests
are in test_example_auth_end_to_end.py)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import pytest

import bouncer_example_auth as example
from bouncer.auth.store import UserStore
from bouncer.check.problems import check_config
from bouncer.config import Config, load_config
from bouncer.plugin.hooks import PluginHooks
from bouncer.plugin.manager import DISABLE_AUTOLOAD_ENV, make_plugin_manager

SCRAM = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
MODULE = "bouncer_example_auth"


@pytest.fixture(autouse=True)
def no_installed_copy(monkeypatch) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")  # an installed copy must not load twice


@pytest.fixture
def hooks() -> PluginHooks:
    return PluginHooks(make_plugin_manager([MODULE]))


@pytest.fixture
def write_ini(tmp_path):
    """``write(section_text)``: a bouncer ini loading the plugin, with *section_text* after it."""
    def write(section: str = "") -> str:
        path = tmp_path / "bouncer.ini"
        path.write_text(f"[databases]\n[pgbouncer]\nplugins = {MODULE}\n{section}",
                        encoding="utf-8")
        return str(path)
    return write


@pytest.fixture
def configured(hooks, write_ini, tmp_path):
    """``load(secrets_file or None) -> Config`` read with the plugin's declared settings."""
    def load(path: Optional[str]) -> Config:
        section = f"[plugin.example_auth]\nsecrets_file = {path}\n" if path else ""
        return load_config(write_ini(section), hooks.declared_settings())
    return load


@pytest.fixture
def secrets_file(tmp_path):
    path = tmp_path / "secrets"
    path.write_text(f"# comment\n\nalice:wonder:land\nbob:{SCRAM}\ncarol:\n", encoding="utf-8")
    return path


def lookup(config: Config, user: str):
    return example.bouncer_get_credentials(context=SimpleNamespace(config=config), user=user,
                                           database="db")


def test_the_first_colon_separates_and_comments_are_skipped() -> None:
    assert example.parse_secrets("# x:y\n  eve:pw  \nnocolon\n:orphan\n") == {"eve": "pw"}


def test_unconfigured_plugin_answers_nothing(configured) -> None:
    config = configured(None)
    assert lookup(config, "alice") is None
    assert example.bouncer_validate_config(config=config) == []


def test_known_users_get_their_secret_and_others_are_not_mine(configured, secrets_file) -> None:
    config = configured(str(secrets_file))
    alice = lookup(config, "alice")
    assert (alice.user, alice.secret, alice.source) == ("alice", "wonder:land", "example_auth")
    assert lookup(config, "bob").secret == SCRAM
    assert lookup(config, "carol").secret is None
    assert lookup(config, "mallory") is None


def test_an_edited_file_counts_at_the_next_lookup(configured, secrets_file) -> None:
    config = configured(str(secrets_file))
    secrets_file.write_text("alice:changed\n", encoding="utf-8")
    assert lookup(config, "alice").secret == "changed"


def test_an_unreadable_file_refuses_the_configuration(configured, tmp_path) -> None:
    missing = tmp_path / "missing"
    problems = example.bouncer_validate_config(config=configured(str(missing)))
    assert len(problems) == 1 and str(missing) in problems[0]
    assert "plugin.example_auth.secrets_file" in problems[0]


def test_check_refuses_a_misspelt_key_in_the_plugin_section(write_ini) -> None:
    result = check_config(write_ini("[plugin.example_auth]\nsecret_file = /x\n"))
    assert any(error.endswith(":5: secret_file: unknown parameter") for error in result.errors)


def test_chained_behind_auth_file_by_the_plugin_manager(hooks, configured, secrets_file) -> None:
    store = UserStore()
    store.load_userlist({"alice": "from-auth-file"})
    config = configured(str(secrets_file))
    app = SimpleNamespace(user_store=store, config=config,
                          plugin_context=SimpleNamespace(config=config))
    assert hooks.get_credentials(app, "alice", "db").secret == "from-auth-file"
    assert hooks.get_credentials(app, "bob", "db").source == "example_auth"
    assert hooks.get_credentials(app, "mallory", "db") is None
