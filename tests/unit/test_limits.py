"""Limits without sockets: the fallback chain, runtime overrides, SET USER / SET POOL parsing,
and which servers shrinking picks (on real Pool objects holding stand-in servers)."""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, List, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bouncer.admin.commands import AdminError
from bouncer.admin.grammar import GrammarError
from bouncer.builtin import limits_admin
from bouncer.builtin.limits_admin import USER_KEYS, parse_assignment, parse_user_change
from bouncer.builtin.limits_shrink import apply_limits
from bouncer.pool.eviction import shrink, staying
from bouncer.config import Config, load_config
from bouncer.pool.limits import Overrides, database_cap, smaller_limit, user_cap
from bouncer.pool.pool import Pool
from bouncer.pool.registry import Registry

BASE = """
[pgbouncer]
default_pool_size = 20
max_user_connections = 50
max_db_connections = 40
{settings}
[databases]
db = host=127.0.0.1 {db}
other = host=127.0.0.1
[users]
{users}
[pools]
{pools}
"""


def load(tmp_path: Path, settings: str = "", db: str = "", users: str = "",
         pools: str = "") -> Config:
    path = tmp_path / "bouncer.ini"
    path.write_text(BASE.format(settings=settings, db=db, users=users, pools=pools))
    return load_config(str(path))


def make_registry(config: Config) -> Registry:
    return Registry(lambda: config, connector=lambda pool: None,
                    cross_pool_limit=lambda pool: None)


def pool_of(registry: Registry, user: str, database: str = "db") -> Pool:
    return registry.pool(registry.find_database(database), user)


class FakeServer:
    """Enough of a ServerConnection for Pool.evict and close_server."""

    def __init__(self, request_time: Optional[float] = None) -> None:
        self.link = SimpleNamespace(request_time=request_time) if request_time else None
        self.close_needed = False
        self.close_reason = ""
        self.holds_slot = False
        self.closed_because: Optional[str] = None

    @property
    def closed(self) -> bool:
        return self.closed_because is not None

    def close(self, reason: str) -> None:
        self.closed_because = reason

    def is_usable(self) -> bool:
        return not self.closed


def add_servers(pool: Pool, idle: int = 0, active_times: tuple = ()) -> List[FakeServer]:
    """Idle servers, then active ones linked to clients that made requests at those times."""
    servers = [FakeServer() for _ in range(idle)]
    pool.idle.extend(servers)
    for when in active_times:
        server = FakeServer(request_time=when)
        pool.active.add(server)
        servers.append(server)
    return servers


# -- fallback chain --------------------------------------------------------------------------

@pytest.mark.parametrize("limit, other, expected", [
    (5, None, 5), (5, 3, 3), (3, 5, 3), (0, 5, 5), (5, 0, 5), (0, 0, 0), (0, None, 0)])
def test_smaller_limit_treats_zero_as_unlimited(limit: int, other: Optional[int],
                                                expected: int) -> None:
    assert smaller_limit(limit, other) == expected


@pytest.mark.parametrize("db, users, pools, size", [
    ("", "", "", 20),                                     # default_pool_size
    ("pool_size=5", "", "", 5),                           # the database's
    ("pool_size=5", "alice = pool_size=7", "", 7),        # the user's beats the database's
    ("", "", "alice.db = pool_size=9", 9),                # [pools] alone
    ("pool_size=5", "alice = pool_size=7", "alice.db = pool_size=9", 5),  # min(pool, db)
    ("pool_size=12", "", "alice.db = pool_size=9", 9),
    ("pool_size=5", "", "alice.db = pool_size=0", 5),    # 0 = unlimited, so the db's counts
    ("", "", "alice.db = pool_size=-1", 20),              # -1: no override
])
def test_pool_size_fallback_chain(tmp_path: Path, db: str, users: str, pools: str,
                                  size: int) -> None:
    registry = make_registry(load(tmp_path, db=db, users=users, pools=pools))
    assert pool_of(registry, "alice").limits.pool_size() == size
    assert pool_of(registry, "bob").limits.pool_size() == (5 if "pool_size=5" in db else
                                                           12 if "12" in db else 20)


def test_set_pool_override_beats_ini_and_reset_restores_it(tmp_path: Path) -> None:
    registry = make_registry(load(tmp_path, db="pool_size=8", pools="alice.db = pool_size=6"))
    limits = pool_of(registry, "alice").limits
    registry.overrides.update_pool("alice", "db", {"pool_size": 3})
    assert limits.pool_size() == 3
    registry.overrides.update_pool("alice", "db", {"pool_size": 30})
    assert limits.pool_size() == 8  # still capped by the database's own size
    registry.overrides.update_pool("alice", "db", {"pool_size": None})
    assert limits.pool_size() == 6


def test_set_user_override_reaches_mode_timeouts_and_reserve(tmp_path: Path) -> None:
    registry = make_registry(load(tmp_path, settings="reserve_pool_size = 2",
                                  users="alice = pool_mode=statement query_timeout=30"))
    limits = pool_of(registry, "alice").limits
    registry.overrides.update_user("alice", {"query_timeout": 5.0, "reserve_pool_size": 4})
    assert (limits.pool_mode(), limits.query_timeout(), limits.reserve_size()) == \
        ("statement", 5.0, 4)


def test_overrides_keep_unnamed_keys_and_forget_reset_ones() -> None:
    overrides = Overrides()
    overrides.update_user("bob", {"pool_size": 4, "pool_mode": "transaction"})
    overrides.update_user("bob", {"pool_size": 2})
    assert overrides.users == {"bob": {"pool_size": 2, "pool_mode": "transaction"}}
    overrides.update_user("bob", {"pool_size": None, "pool_mode": None})
    assert overrides.users == {}


@pytest.mark.parametrize("ini, override, expected", [
    ("", None, 50), ("max_user_connections=0", None, 50),  # 0 = use the global one
    ("max_user_connections=3", None, 3), ("max_user_connections=3", 7, 7), ("", 0, 50)])
def test_user_cap_is_the_users_positive_value_else_the_global(
        tmp_path: Path, ini: str, override: Optional[int], expected: int) -> None:
    config = load(tmp_path, users=f"bob = {ini}" if ini else "")
    overrides = Overrides()
    if override is not None:
        overrides.update_user("bob", {"max_user_connections": override})
    assert user_cap(config, overrides, "bob", "max_user_connections") == expected


@pytest.mark.parametrize("db, expected", [("", 40), ("max_db_connections=0", 40),
                                          ("max_db_connections=4", 4)])
def test_database_cap_is_the_databases_positive_value_else_the_global(
        tmp_path: Path, db: str, expected: int) -> None:
    config = load(tmp_path, db=db)
    assert database_cap(config, config.databases["db"], "max_db_connections") == expected


# -- parsing SET USER / SET POOL -------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    ("bob = 'pool_size=3'", ("bob", "pool_size=3")),
    ("bob TO 'pool_size=3'", ("bob", "pool_size=3")),
    ("bob='pool_size=3'", ("bob", "pool_size=3")),
    ("app-user.1 to ''", ("app-user.1", "")),
    ('"my ""odd"" user" = \'pool_mode=session\'', ('my "odd" user', "pool_mode=session")),
])
def test_parse_assignment(args: str, expected: tuple) -> None:
    assert parse_assignment(args) == expected


@pytest.mark.parametrize("args", ["", "bob", "bob =", "bob 'x'", "bob = 'x' 'y'", "= 'x'",
                                  "bob == 'x'", "bob = 'unterminated"])
def test_parse_assignment_refuses_malformed_commands(args: str) -> None:
    with pytest.raises(GrammarError):
        parse_assignment(args)


def test_parse_user_change_names_only_the_given_keys() -> None:
    assert parse_user_change("max_user_connections=40 pool_mode=transaction") == \
        {"max_user_connections": 40, "pool_mode": "transaction"}


def test_parse_user_change_minus_one_resets_any_key() -> None:
    assert parse_user_change("pool_mode=-1 query_timeout=-1 pool_size=2") == \
        {"pool_mode": None, "query_timeout": None, "pool_size": 2}


@pytest.mark.parametrize("text, reason", [
    ("", "no settings"), ("0d", "syntax error"), ("max_user_connections=0d", "invalid integer"),
    ("max_user_connections=", "empty value"), ("nosuchkey=1", "unrecognized user parameter"),
    ("nosuchkey=-1", "unrecognized user parameter"), ("pool_mode=sometimes", "pool_mode"),
    ("pool_size=-2", "negative")])
def test_parse_user_change_gives_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_user_change(text)


@given(st.text(max_size=60))
def test_hostile_set_user_text_is_parsed_or_refused_with_a_reason(text: str) -> None:
    try:
        changes = parse_user_change(text)
    except ValueError as exc:
        assert str(exc)
    else:
        assert changes and set(changes) <= USER_KEYS


@given(st.text(max_size=60))
def test_hostile_assignment_is_parsed_or_refused_as_grammar(args: str) -> None:
    try:
        name, _ = parse_assignment(args)
    except GrammarError:
        return
    assert name


# -- shrinking -------------------------------------------------------------------------------

REASON = "max_user_connections lowered to 1"


def test_shrink_closes_idle_servers_of_every_pool_before_any_active(tmp_path: Path) -> None:
    registry = make_registry(load(tmp_path))
    first, second = pool_of(registry, "bob", "db"), pool_of(registry, "bob", "other")
    now = time.time()
    busy = add_servers(first, idle=1, active_times=(now,))
    idle = add_servers(second, idle=2)
    assert shrink([first, second], 2, REASON, grace=60) == 2
    assert [s.closed_because for s in busy] == [REASON, None]
    assert sorted(map(str, (s.closed_because for s in idle))) == ["None", REASON]
    assert not any(s.close_needed for s in busy)


def test_shrink_marks_the_most_recently_active_across_pools(tmp_path: Path) -> None:
    registry = make_registry(load(tmp_path))
    first, second = pool_of(registry, "bob", "db"), pool_of(registry, "bob", "other")
    now = time.time()
    old, newest = add_servers(first, active_times=(now - 30, now))
    middle, = add_servers(second, active_times=(now - 10,))
    assert shrink([first, second], 1, REASON, grace=60) == 2
    assert (old.close_needed, middle.close_needed, newest.close_needed) == (False, True, True)
    assert newest.close_reason == REASON
    # Marked servers no longer count: asking again closes nothing more.
    assert staying(first) + staying(second) == 1
    assert shrink([first, second], 1, REASON, grace=60) == 0


def test_shrink_with_no_limit_or_room_left_does_nothing(tmp_path: Path) -> None:
    pool = pool_of(make_registry(load(tmp_path)), "bob")
    servers = add_servers(pool, idle=3)
    assert shrink([pool], 0, REASON, grace=60) == 0
    assert shrink([pool], 3, REASON, grace=60) == 0
    assert not any(server.closed for server in servers)


# -- the commands, on a stand-in console -----------------------------------------------------

def console_for(registry: Registry, config: Config) -> Any:
    return SimpleNamespace(app=SimpleNamespace(registry=registry, config=config, slots=None))


def test_set_user_lowering_max_user_connections_closes_servers_at_once(tmp_path: Path) -> None:
    config = load(tmp_path)
    registry = make_registry(config)
    servers = add_servers(pool_of(registry, "bob"), idle=3)
    result = limits_admin.set_user(console_for(registry, config),
                                   "bob = 'max_user_connections=1'")
    assert result.tag == "SET"
    assert [s.closed_because for s in servers].count("max_user_connections lowered to 1") == 2


def test_set_pool_lowering_pool_size_closes_servers_at_once(tmp_path: Path) -> None:
    config = load(tmp_path)
    registry = make_registry(config)
    pool = pool_of(registry, "bob")
    servers = add_servers(pool, idle=4)
    limits_admin.set_pool(console_for(registry, config), "bob.db = 'pool_size=1'")
    assert pool.size == 1
    assert sum(1 for s in servers if s.closed_because == "pool_size lowered to 1") == 3


def test_set_user_for_a_user_not_seen_yet_creates_it(tmp_path: Path) -> None:
    config = load(tmp_path)
    registry = make_registry(config)
    limits_admin.set_user(console_for(registry, config), "newbie = 'pool_size=2'")
    assert "newbie" in registry.users
    assert registry.overrides.user_value("newbie", "pool_size") == 2


@pytest.mark.parametrize("command, args", [
    ("SET USER", "bob = 'max_user_connections=0d'"), ("SET USER", "bob = ''"),
    ("SET USER", "bob = 'pool_size=1 bogus=2'"), ("SET POOL", "bob.db.x = 'pool_size=1'"),
    ("SET POOL", ".db = 'pool_size=1'"), ("SET POOL", "bob. = 'pool_size=1'"),
    ("SET POOL", "bobdb = 'pool_size=1'"), ("SET POOL", "bob.db = ''"),
    ("SET POOL", "bob.db = 'pool_size=0d'"), ("SET POOL", "bob.db = 'pool_mode=session'")])
def test_malformed_set_fails_and_changes_nothing(tmp_path: Path, command: str,
                                                 args: str) -> None:
    config = load(tmp_path)
    registry = make_registry(config)
    registry.overrides.update_user("bob", {"pool_size": 5})
    with pytest.raises(AdminError) as info:
        limits_admin.COMMANDS[command](console_for(registry, config), args)
    assert (info.value.message, bool(info.value.detail)) == ("SET failed", True)
    assert (registry.overrides.users, registry.overrides.pools) == ({"bob": {"pool_size": 5}}, {})


def test_apply_limits_lets_waiters_through_a_raised_limit(tmp_path: Path) -> None:
    config = load(tmp_path, pools="bob.db = pool_size=1")
    registry = make_registry(config)
    app = SimpleNamespace(registry=registry, config=config, slots=None)
    pool = pool_of(registry, "bob")
    add_servers(pool, active_times=(time.time(),))
    pool.waiters.append(SimpleNamespace(since=time.monotonic()))
    launched: List[Pool] = []
    pool.launch = lambda: (launched.append(pool), pool.login.add(object()))  # type: ignore
    apply_limits(app)
    assert launched == []
    registry.overrides.update_pool("bob", "db", {"pool_size": 2})
    apply_limits(app)
    assert launched == [pool]
