"""The supervisor's journal of runtime changes (bouncer.admin.journal), without processes."""
from __future__ import annotations

import pytest

from bouncer.admin.journal import KEPT, RELOAD, UNTIL_RELOAD, Change, Journal


def change(kind: str, command: str, user: str = "admin") -> Change:
    return Change(kind, command, user, True)


def commands(journal: Journal):
    return [entry.command for entry in journal.changes()]


def test_the_last_of_equal_commands_is_kept_at_its_place() -> None:
    journal = Journal()
    for kind, command in [(KEPT, "PAUSE"), (UNTIL_RELOAD, "SET a = 1"), (KEPT, "RESUME"),
                          (UNTIL_RELOAD, "SET a = 2"), (KEPT, "PAUSE")]:
        journal.record(change(kind, command))
    assert commands(journal) == ["SET a = 1", "RESUME", "SET a = 2", "PAUSE"]


def test_a_reload_drops_the_sets_and_keeps_the_rest() -> None:
    journal = Journal()
    journal.record(change(UNTIL_RELOAD, "SET a = 1"))
    journal.record(change(KEPT, "DISABLE db"))
    journal.record(change(UNTIL_RELOAD, "SET USER u = 'max_user_connections=4'"))
    journal.record(change(RELOAD, "RELOAD"))
    assert commands(journal) == ["DISABLE db"]
    journal.record(change(UNTIL_RELOAD, "SET a = 3"))
    journal.reloaded()  # SIGHUP
    assert commands(journal) == ["DISABLE db"]


def test_the_same_command_from_two_users_is_two_changes() -> None:
    journal = Journal()
    journal.record(change(KEPT, "PAUSE", "one"))
    journal.record(change(KEPT, "PAUSE", "two"))
    assert [entry.user for entry in journal.changes()] == ["one", "two"]


def test_a_change_survives_its_encoding() -> None:
    original = Change(UNTIL_RELOAD, "SET x = 'it''s'", "ops", False)
    assert Change.decode(original.encode()) == original


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b'{"kind": "never", "command": "x", '
                                  b'"user": "u", "admin": true}', b"\xff"])
def test_garbage_is_not_a_change(data: bytes) -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        Change.decode(data)
