"""Settings plugins declare for their [plugin.NAME] sections: typed, checked, listed by
--check, re-validated and compared for RELOAD exactly as [pgbouncer]'s own."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

import pytest

from bouncer.check.problems import check_config
from bouncer.config import (ConfigProblems, Setting, all_settings, load_config,
                            merge_declarations, read_config_report, unreloadable_changes,
                            validate)
from bouncer.errors import ConfigError
from bouncer.plugin import hookimpl
from bouncer.plugin.hooks import PluginHooks
from bouncer.plugin.manager import DISABLE_AUTOLOAD_ENV, make_plugin_manager
from tests.plugins.with_settings import SETTINGS

DECLARED = {"demo": SETTINGS}
PLUGIN = "tests.plugins.with_settings"


def write(tmp_path: Path, text: str, name: str = "bouncer.ini") -> str:
    path = tmp_path / name
    path.write_text("[databases]\n[pgbouncer]\n" + text, encoding="utf-8")
    return str(path)


# -- declarations -----------------------------------------------------------------------------

def test_declarations_of_every_plugin_are_merged() -> None:
    other = (Setting("x", "bool", False, True, "x"),)
    assert merge_declarations([DECLARED, None, {"other": other}]) == {"demo": SETTINGS,
                                                                      "other": other}


@pytest.mark.parametrize("answers, words", [
    ([{"demo": SETTINGS}, {"demo": ()}], "declared by more than one plugin"),
    ([{"Demo": SETTINGS}], "lower-case identifier"),
    ([{"demo": (SETTINGS[0], SETTINGS[0])}], "declared twice"),
    ([{"demo": (Setting("Bad-Name", "str", "", True, "x"),)}], "lower-case identifier"),
    ([{"demo": ("greeting",)}], "is not a bouncer.config.Setting"),
])
def test_a_malformed_declaration_is_refused(answers, words) -> None:
    with pytest.raises(ValueError, match=words):
        merge_declarations(answers)


def test_the_hook_facade_turns_a_bad_declaration_into_a_config_error(monkeypatch) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    assert PluginHooks(make_plugin_manager([PLUGIN])).declared_settings() == DECLARED
    twice = make_plugin_manager([PLUGIN])
    twice.register(_Twin(), name="twin")
    with pytest.raises(ConfigError, match="declared by more than one plugin"):
        PluginHooks(twice).declared_settings()


class _Twin:
    """A second plugin declaring the same section."""

    @hookimpl
    def bouncer_declare_settings(self):
        return {"demo": ()}


# -- reading the section ----------------------------------------------------------------------

def test_values_are_typed_and_defaults_filled(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[plugin.demo]\nRetries = 7\n"), DECLARED)
    assert dict(config.plugin("demo")) == {"greeting": "hello", "retries": 7, "mode": "fast"}
    assert config.has_plugin_section("demo")
    assert {"plugin.demo", "plugin.demo.retries"} <= config.explicit
    assert config.warnings == ()


def test_a_declared_section_absent_from_the_file_has_its_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), DECLARED)
    assert config.plugin("demo")["mode"] == "fast" and not config.has_plugin_section("demo")


def test_aliases_count_as_their_setting_and_the_last_line_wins(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[plugin.demo]\ngreeting = a\nsalutation = b\n"),
                         DECLARED)
    assert config.plugin("demo")["greeting"] == "b"


def test_every_bad_line_of_the_section_is_a_problem_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "pool_mode = nope\n[plugin.demo]\nretries = 11\nmode = slow\n"
                           "greting = typo\n")
    _, problems = read_config_report(path, DECLARED)
    assert [str(problem) for problem in problems] == [
        f"{path}:3: pool_mode: invalid value 'nope': expected one of session, transaction, "
        "statement",
        f"{path}:5: retries: 11 is above the maximum 10",
        f"{path}:6: mode: invalid value 'slow': expected one of fast, safe",
        f"{path}:7: greting: unknown parameter",
    ]
    with pytest.raises(ConfigProblems):
        load_config(path, DECLARED)


def test_an_undeclared_section_is_a_warning_not_an_error(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[plugin.absent]\nkey = value\n"), DECLARED)
    assert config.warnings == ("section [plugin.absent] is ignored: no loaded plugin declares "
                               "it (is the plugin installed, or named in disable_plugins?)",)


def test_before_the_plugins_are_known_their_sections_are_skipped(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[plugin.demo]\nanything = at all\n"))
    assert config.plugin_settings == {} and config.warnings == ()


def test_other_unknown_sections_stay_errors(tmp_path: Path) -> None:
    _, problems = read_config_report(write(tmp_path, "[plugins]\n[plugin.]\n"), DECLARED)
    assert [problem.message for problem in problems] == ["invalid section [plugins]",
                                                         "invalid section [plugin.]"]


# -- checks, RELOAD, SHOW CONFIG --------------------------------------------------------------

def test_values_set_by_code_are_held_to_the_declaration(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), DECLARED)
    bad = dataclasses.replace(config, plugin_settings=MappingProxyType(
        {"demo": {**config.plugin("demo"), "retries": -1}}))
    assert validate(bad) == ["plugin.demo.retries: -1 is below the minimum 0"]


def test_all_settings_lists_plugin_settings_under_their_shown_names(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[plugin.demo]\nmode = safe\n"), DECLARED)
    shown = {name: value for name, _, value in all_settings(config)}
    assert shown["plugin.demo.mode"] == "safe" and shown["pool_mode"] == "session"


def test_a_reload_names_the_changed_settings_that_need_a_restart(tmp_path: Path) -> None:
    old = load_config(write(tmp_path, "listen_port = 1\n[plugin.demo]\nretries = 1\n"), DECLARED)
    new = load_config(write(tmp_path, "listen_port = 2\n[plugin.demo]\nretries = 2\n"
                                      "greeting = hi\n", "new.ini"), DECLARED)
    assert unreloadable_changes(old, new) == ["listen_port", "plugin.demo.retries"]


def test_check_lists_the_sections_problems_with_the_rest(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    path = write(tmp_path, f"plugins = {PLUGIN}\npool_mode = nope\n[plugin.demo]\nbogus = 1\n"
                           "[plugin.elsewhere]\n")
    result = check_config(path)
    assert result.errors[0].startswith(f"{path}:4: pool_mode")
    assert result.errors[1] == f"{path}:6: bogus: unknown parameter"
    assert len(result.errors) == 2
    assert any("[plugin.elsewhere] is ignored" in warning for warning in result.warnings)
