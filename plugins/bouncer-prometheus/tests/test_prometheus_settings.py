"""[plugin.prometheus] read through bouncer's loader with the plugin's declarations, and the
example configuration bouncer ships (etc/bouncer.ini) in step with them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bouncer.config import format_value, load_config
from bouncer.plugin.hooks import PluginHooks
from bouncer.plugin.manager import DISABLE_AUTOLOAD_ENV, make_plugin_manager
from bouncer_prometheus import plugin

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_INI = REPO / "etc" / "bouncer.ini"


@pytest.fixture
def hooks(monkeypatch) -> PluginHooks:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    return PluginHooks(make_plugin_manager(["bouncer_prometheus.plugin"]))


def load(hooks: PluginHooks, path: Path, text: str):
    path.write_text("[databases]\n[pgbouncer]\n" + text, encoding="utf-8")
    config = load_config(str(path), hooks.declared_settings())
    return config, hooks.validate_config(config)


def test_the_section_enables_and_types_the_settings(hooks, tmp_path) -> None:
    config, problems = load(hooks, tmp_path / "a.ini",
                            "[plugin.prometheus]\nlisten_port = 9200\nwait_buckets = 0.5, 2\n")
    assert problems == [] and config.has_plugin_section("prometheus")
    assert dict(config.plugin("prometheus")) == {"listen_addr": "127.0.0.1",
                                                 "listen_port": 9200,
                                                 "wait_buckets": ("0.5", "2")}
    config, _ = load(hooks, tmp_path / "b.ini", "")
    assert not config.has_plugin_section("prometheus")


@pytest.mark.parametrize("buckets", ["1, fast", "2, 1", "0, 1", "1, 1", ""])
def test_wait_buckets_must_be_increasing_positive_seconds(hooks, tmp_path, buckets) -> None:
    _, problems = load(hooks, tmp_path / "a.ini",
                       f"[plugin.prometheus]\nwait_buckets = {buckets}\n")
    assert len(problems) == 1 and problems[0].startswith("plugin.prometheus.wait_buckets: ")


def test_the_example_configuration_leaves_it_off(hooks) -> None:
    config = load_config(str(EXAMPLE_INI), hooks.declared_settings())
    assert not config.has_plugin_section("prometheus")


def test_the_example_configurations_commented_section_is_valid_and_the_defaults(
        hooks, tmp_path) -> None:
    text = EXAMPLE_INI.read_text(encoding="utf-8")
    section = text[text.index(";[plugin.prometheus]"):]
    uncommented = re.sub(r"^;(?=[^;\s])", "", section, flags=re.M)
    config, problems = load(hooks, tmp_path / "a.ini", uncommented)
    assert problems == [] and config.has_plugin_section("prometheus")
    for setting in plugin.SETTINGS:
        shown = re.escape(format_value(setting, setting.default))
        assert re.search(rf"^;{setting.name} = {shown}$", section.replace(", ", ","),
                         flags=re.M), setting.name
        assert config.plugin("prometheus")[setting.name] == setting.default
