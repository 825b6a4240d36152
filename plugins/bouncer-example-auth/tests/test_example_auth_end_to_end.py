"""The example plugin in a running bouncer in front of a real PostgreSQL, through the fixtures
bouncer ships for plugin authors (bouncer.testing: ``pg``, ``bouncer_factory``): what a
plugin's own end-to-end tests look like."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import psycopg2
import pytest

from bouncer.testing.ini import common_ini
from bouncer.testing.process import BouncerProcess

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def start(pg, bouncer_factory, tmp_path, monkeypatch):
    """``start(secrets, userlist=None, **settings)``: a bouncer loading the plugin from this
    checkout (``plugins =``), serving *secrets* from the file its section names."""
    def start_bouncer(secrets: Dict[str, str], userlist: Optional[Dict[str, str]] = None,
                      **settings: Any) -> BouncerProcess:
        secrets_file = tmp_path / "secrets"
        secrets_file.write_text("".join(f"{user}:{secret}\n" for user, secret in secrets.items()),
                                encoding="utf-8")
        monkeypatch.setenv("PYTHONPATH", PLUGIN_DIR)  # the bouncer process imports it from here
        ini = common_ini(pg, plugins="bouncer_example_auth", **settings)
        return bouncer_factory(f"{ini}\n[plugin.example_auth]\nsecrets_file = {secrets_file}\n",
                               userlist)
    return start_bouncer


def logs_in(bouncer: BouncerProcess, user: str, password: str) -> bool:
    try:
        conn = bouncer.connect(user=user, password=password)
    except psycopg2.OperationalError as exc:
        assert "password authentication failed" in str(exc)
        return False
    with conn, conn.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == (user,)
    conn.close()
    return True


def test_the_plugin_alone_answers_for_its_users(start) -> None:
    bouncer = start({"md5user": "md5pass"}, userlist={})
    assert logs_in(bouncer, "md5user", "md5pass")
    assert not logs_in(bouncer, "md5user", "nope")


def test_auth_file_answers_first_then_the_plugin(start) -> None:
    # trustuser has no password in PostgreSQL: only the plugin's secret can let it in.
    bouncer = start({"trustuser": "example-pw", "md5user": "not-this-one"})
    assert logs_in(bouncer, "md5user", "md5pass")  # userlist.txt's secret, not the plugin's
    assert not logs_in(bouncer, "md5user", "not-this-one")
    assert logs_in(bouncer, "trustuser", "example-pw")
