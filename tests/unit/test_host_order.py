"""Which host a new server connection tries first (load_balance_hosts), and how many
connections a pool opens at once while it does not know yet whether its server works."""
from __future__ import annotations

import time
from pathlib import Path

from bouncer.config import load_config
from bouncer.pool.registry import DatabaseState, Registry

INI = """
[pgbouncer]
[databases]
db = host=a,b,c {extra}
"""


def database(tmp_path: Path, extra: str = "") -> DatabaseState:
    path = tmp_path / "bouncer.ini"
    path.write_text(INI.format(extra=extra))
    config = load_config(str(path))
    registry = Registry(lambda: config, connector=lambda pool: None,
                        cross_pool_limit=lambda pool: None)
    return registry.find_database("db")


def test_round_robin_starts_each_connection_at_the_next_host(tmp_path: Path) -> None:
    db = database(tmp_path)
    assert [db.hosts_in_order() for _ in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_disable_stays_on_a_host_until_it_fails(tmp_path: Path) -> None:
    db = database(tmp_path, "load_balance_hosts=disable")
    assert db.hosts_in_order() == db.hosts_in_order() == ["a", "b", "c"]
    db.host_failed("a")
    assert db.hosts_in_order() == db.hosts_in_order() == ["b", "c", "a"]
    db.host_failed("a")  # a late failure of the host already left behind moves nothing
    assert db.hosts_in_order() == ["b", "c", "a"]


def test_a_new_pool_opens_one_connection_at_a_time_until_one_worked(tmp_path: Path) -> None:
    db = database(tmp_path)
    pool = db.registry.pool(db, "u")
    pool.login.add(object())  # one connect in progress
    assert not pool.may_open_another()
    pool.welcome_params = {}  # a connection worked
    assert pool.may_open_another()
    pool.last_login_failure = (time.monotonic() - 3600, None)  # then one failed
    assert not pool.may_open_another()
