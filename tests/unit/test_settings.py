"""The settings table: PgBouncer's names and defaults, and typed parsing/formatting per kind."""
from __future__ import annotations

import pytest

from bouncer.config import (SETTINGS, SETTINGS_BY_NAME, Config, attributes, format_value,
                            parse_setting)

#: A sample of PgBouncer 1.25 defaults, as SHOW CONFIG prints them.
PGBOUNCER_DEFAULTS = {
    "listen_port": "6432",
    "pool_mode": "session",
    "max_client_conn": "100",
    "default_pool_size": "20",
    "auth_type": "md5",
    "server_reset_query": "DISCARD ALL",
    "server_check_query": "<empty>",
    "server_lifetime": "3600",
    "server_idle_timeout": "600",
    "server_connect_timeout": "15",
    "server_login_retry": "15",
    "client_login_timeout": "60",
    "query_wait_timeout": "120",
    "reserve_pool_timeout": "5",
    "unix_socket_dir": "/tmp",
    "unix_socket_mode": "0777",
    "client_tls_sslmode": "disable",
    "server_tls_sslmode": "prefer",
    "stats_period": "60",
    "log_connections": "1",
    "track_extra_parameters": "IntervalStyle",
    "ignore_startup_parameters": "",
    "max_prepared_statements": "200",
    "listen_backlog": "128",
    "max_packet_size": "2147483647",
    "scram_iterations": "4096",
    "peer_id": "0",
}

#: Settings PgBouncer can only change with a restart (CF_NO_RELOAD), plus bouncer's plugins.
NOT_RELOADABLE = {
    "pidfile", "listen_addr", "listen_port", "unix_socket_dir", "unix_socket_mode",
    "unix_socket_group", "user", "track_extra_parameters", "disable_pqexec", "service_name",
    "resolv_conf", "pkt_buf", "listen_backlog", "so_reuseport", "plugins", "disable_plugins",
    "workers",
}


@pytest.mark.parametrize("name, shown", sorted(PGBOUNCER_DEFAULTS.items()))
def test_defaults_match_pgbouncer(name: str, shown: str) -> None:
    assert SETTINGS_BY_NAME[name].shown_default == shown


def test_auth_query_default_is_schema_qualified_and_checks_expiry() -> None:
    query = SETTINGS_BY_NAME["auth_query"].default
    assert "FROM pg_catalog.pg_authid" in query
    assert "rolvaliduntil < now()" in query and "rolcanlogin" in query


def test_reloadability_follows_pgbouncer() -> None:
    assert {s.name for s in SETTINGS if not s.reloadable} == NOT_RELOADABLE


def test_table_is_sorted_like_show_config_and_names_are_unique() -> None:
    names = [setting.name for setting in SETTINGS]
    assert names == sorted(set(names))


def test_every_setting_has_a_one_line_doc() -> None:
    for setting in SETTINGS:
        assert setting.doc and "\n" not in setting.doc, setting.name


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.name)
def test_default_round_trips_through_its_own_kind(setting) -> None:
    assert parse_setting(setting.name, format_value(setting, setting.default)) == setting.default


@pytest.mark.parametrize("alias, target, raw, value", [
    ("reserve_pool", "reserve_pool_size", "7", 7),
    ("job_name", "service_name", "svc", "svc"),
])
def test_aliases_resolve_to_their_target(alias: str, target: str, raw: str, value) -> None:
    assert SETTINGS_BY_NAME[alias] is SETTINGS_BY_NAME[target]
    assert parse_setting(alias, raw) == value


def test_bouncer_own_settings_exist() -> None:
    shrink = SETTINGS_BY_NAME["limit_shrink_timeout"]
    assert (shrink.kind, shrink.default, shrink.reloadable) == ("time", 10.0, True)
    assert SETTINGS_BY_NAME["plugins"].default == ()
    assert not SETTINGS_BY_NAME["disable_plugins"].reloadable


def test_only_the_c_ares_resolver_settings_cannot_be_honoured() -> None:
    assert {s.name for s in SETTINGS if s.unsupported} == {"dns_zone_check_period",
                                                          "resolv_conf"}


@pytest.mark.parametrize("raw, seconds", [
    ("30", 30.0), ("1.5", 1.5), ("500ms", 0.5), ("250 us", 0.00025), ("2s", 2.0),
    ("1min", 60.0), ("2h", 7200.0), ("1d", 86400.0), ("0", 0.0), (" 15 ", 15.0),
])
def test_time_accepts_seconds_and_postgresql_units(raw: str, seconds: float) -> None:
    assert parse_setting("query_timeout", raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["-1", "1 m", "10S", "abc", "", "1e999", "nan", "inf"])
def test_time_rejects_garbage(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_setting("query_timeout", raw)


@pytest.mark.parametrize("value, shown", [(3600.0, "3600"), (0.5, "0.5"), (0.0, "0"),
                                          (1.25, "1.25")])
def test_time_prints_whole_numbers_without_fraction(value: float, shown: str) -> None:
    assert format_value(SETTINGS_BY_NAME["server_lifetime"], value) == shown


@pytest.mark.parametrize("raw", ["0d", "0x10", "1_000", "12.0", "", "six"])
def test_int_is_strict_decimal(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_setting("max_client_conn", raw)


@pytest.mark.parametrize("raw", ["0", "65536", "-5"])
def test_listen_port_range_is_enforced(raw: str) -> None:
    with pytest.raises(ValueError, match="minimum|maximum"):
        parse_setting("listen_port", raw)


@pytest.mark.parametrize("raw, value", [("1", True), ("0", False), ("on", True), ("OFF", False),
                                        ("yes", True), ("false", False), ("2", True)])
def test_bool_accepts_pgbouncer_integers_and_words(raw: str, value: bool) -> None:
    assert parse_setting("log_connections", raw) is value


def test_bool_rejects_other_words_and_prints_as_digit() -> None:
    with pytest.raises(ValueError):
        parse_setting("so_reuseport", "maybe")
    assert format_value(SETTINGS_BY_NAME["so_reuseport"], True) == "1"


@pytest.mark.parametrize("raw", ["Transaction", " statement ", "SESSION"])
def test_enum_is_case_insensitive_and_canonical(raw: str) -> None:
    assert parse_setting("pool_mode", raw) == raw.strip().lower()


def test_enum_rejects_unknown_word_listing_choices() -> None:
    with pytest.raises(ValueError, match="session, transaction, statement"):
        parse_setting("pool_mode", "sometimes")


@pytest.mark.parametrize("raw, mode", [("0777", 0o777), ("600", 0o600), ("0o750", 0o750)])
def test_octal_mode(raw: str, mode: int) -> None:
    assert parse_setting("unix_socket_mode", raw) == mode


@pytest.mark.parametrize("raw", ["0778", "99", "", "0o", "077777"])
def test_octal_rejects_non_octal(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_setting("unix_socket_mode", raw)


def test_list_splits_on_commas_and_trims() -> None:
    assert parse_setting("admin_users", " alice, bob ,,carol ") == ("alice", "bob", "carol")
    assert format_value(SETTINGS_BY_NAME["admin_users"], ("alice", "bob")) == "alice,bob"


def test_str_is_kept_verbatim() -> None:
    assert parse_setting("server_reset_query", "  DEALLOCATE ALL; -- #x ") == \
        "  DEALLOCATE ALL; -- #x "


def test_setting_names_are_case_insensitive_but_unknown_names_fail() -> None:
    assert parse_setting("Listen_Port", "7000") == 7000
    with pytest.raises(ValueError, match="unknown setting"):
        parse_setting("listen_prot", "7000")


def test_every_setting_is_a_typed_attribute_of_a_configuration() -> None:
    """SettingAttributes (what mypy reads) and SETTINGS (what the loader reads) agree: same
    names, and each annotation is its kind's type, so a misspelt setting fails the type check
    and a new setting cannot be left out of it."""
    annotations = attributes.SettingAttributes.__annotations__
    assert set(annotations) == {setting.name for setting in SETTINGS}
    wrong = {setting.name: (setting.kind, annotations[setting.name]) for setting in SETTINGS
             if annotations[setting.name] != attributes.KIND_TYPES[setting.kind]}
    assert not wrong


def test_a_configuration_has_every_setting_as_an_attribute_and_nothing_else() -> None:
    config = Config(path="x.ini", settings={setting.name: setting.default for setting in SETTINGS})
    assert all(getattr(config, setting.name) == setting.default for setting in SETTINGS)
    with pytest.raises(AttributeError):
        config.max_client_connn  # type: ignore[attr-defined]  # the misspelling mypy reports
