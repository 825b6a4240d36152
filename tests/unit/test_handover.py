"""A handed-over client's SHOW FDS row: what the old process writes, the new one reads back."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from bouncer.admin.console import _texts
from bouncer.admin.sockets import FDS_COLUMNS
from bouncer.auth.store import Credentials
from bouncer.session.handover import client_row, parse_client_row


def fake_client(**overrides: object) -> SimpleNamespace:
    client = SimpleNamespace(
        sock=SimpleNamespace(fileno=lambda: 17), user="scramuser", database="testdb",
        addr="127.0.0.1", port=54321, cancel_key=(0x7FFFFFFF, 0xFFFFFFFF),
        vars={"TimeZone": "Asia/Tokyo", "client_encoding": "UTF8", "search_path": "a, b"},
        params={"application_name": "app"}, application_name="app",
        credentials=Credentials("scramuser", "SCRAM-SHA-256$4096:c2FsdA==$a:b", "auth_file"),
        scram_keys=(b"\x01" * 32, b"\x02" * 32), connect_time=1700000000.5)
    client.__dict__.update(overrides)
    return client


def as_received(row: list) -> dict:
    """The row as the new process reads it: the console's text forms, by column name."""
    return dict(zip([name for name, _ in FDS_COLUMNS], _texts(row)))


def test_a_client_row_carries_the_whole_session_state() -> None:
    client = fake_client()
    state = parse_client_row(as_received(client_row(client)))
    assert (state.user, state.database, state.addr, state.port) == (
        "scramuser", "testdb", "127.0.0.1", 54321)
    assert state.cancel_key == client.cancel_key
    assert state.vars == client.vars and state.params == client.params
    assert state.application_name == "app" and state.connect_time == client.connect_time
    assert state.credentials == client.credentials
    assert state.scram_keys == client.scram_keys


def test_pgbouncer_columns_hold_the_tracked_parameters_they_name() -> None:
    received = as_received(client_row(fake_client()))
    assert (received["task"], received["timezone"], received["client_encoding"]) == (
        "client", "Asia/Tokyo", "UTF8")
    assert received["datestyle"] is None


def test_a_client_without_credentials_or_keys_moves_as_it_is() -> None:
    client = fake_client(credentials=None, scram_keys=None)
    state = parse_client_row(as_received(client_row(client)))
    assert state.credentials is None and state.scram_keys is None


def test_a_row_without_bouncer_state_is_refused() -> None:
    received = as_received(client_row(fake_client()))
    received["bouncer_state"] = None
    with pytest.raises(ValueError, match="bouncer_state"):
        parse_client_row(received)
