"""The example plugin on its own, and chained behind bouncer's auth_file through the real
plugin manager (no PostgreSQL needed; bouncer's suite runs it end to end)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import bouncer_example_auth as example
from bouncer.auth.store import UserStore
from bouncer.plugin.hooks import PluginHooks
from bouncer.plugin.manager import DISABLE_AUTOLOAD_ENV, make_plugin_manager

SCRAM = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"


@pytest.fixture
def secrets_file(tmp_path, monkeypatch):
    path = tmp_path / "secrets"
    path.write_text(f"# comment\n\nalice:wonder:land\nbob:{SCRAM}\ncarol:\n", encoding="utf-8")
    monkeypatch.setenv(example.FILE_ENV, str(path))
    return path


def test_the_first_colon_separates_and_comments_are_skipped() -> None:
    assert example.parse_secrets("# x:y\n  eve:pw  \nnocolon\n:orphan\n") == {"eve": "pw"}


def test_unconfigured_plugin_answers_nothing(monkeypatch) -> None:
    monkeypatch.delenv(example.FILE_ENV, raising=False)
    assert example.bouncer_get_credentials(app=None, user="alice", database="db") is None
    assert example.bouncer_validate_config(config=None) == []


def test_known_users_get_their_secret_and_others_are_not_mine(secrets_file) -> None:
    alice = example.bouncer_get_credentials(app=None, user="alice", database="db")
    assert (alice.user, alice.secret, alice.source) == ("alice", "wonder:land", "example_auth")
    assert example.bouncer_get_credentials(app=None, user="bob", database="db").secret == SCRAM
    assert example.bouncer_get_credentials(app=None, user="carol", database="db").secret is None
    assert example.bouncer_get_credentials(app=None, user="mallory", database="db") is None


def test_an_edited_file_counts_at_the_next_lookup(secrets_file) -> None:
    secrets_file.write_text("alice:changed\n", encoding="utf-8")
    assert example.bouncer_get_credentials(app=None, user="alice", database="db").secret \
        == "changed"


def test_an_unreadable_file_refuses_the_configuration(tmp_path, monkeypatch) -> None:
    missing = tmp_path / "missing"
    monkeypatch.setenv(example.FILE_ENV, str(missing))
    problems = example.bouncer_validate_config(config=None)
    assert len(problems) == 1 and str(missing) in problems[0]


def test_chained_behind_auth_file_by_the_plugin_manager(secrets_file, monkeypatch) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")  # an installed copy must not load twice
    hooks = PluginHooks(make_plugin_manager(["bouncer_example_auth"]))
    store = UserStore()
    store.load_userlist({"alice": "from-auth-file"})
    app = SimpleNamespace(user_store=store, config=SimpleNamespace(databases={}, auth_user=""))
    assert hooks.get_credentials(app, "alice", "db").secret == "from-auth-file"
    assert hooks.get_credentials(app, "bob", "db").source == "example_auth"
    assert hooks.get_credentials(app, "mallory", "db") is None
