"""Settings that plugins declare for their own ``[plugin.NAME]`` sections.

A plugin declares them (hook ``bouncer_declare_settings``) with the same
:class:`~bouncer.config.settings.Setting` rows as bouncer's own table, so they are typed,
range-checked, refused by ``--check``, reloaded and shown by SHOW CONFIG (as
``plugin.NAME.key``) exactly as ``[pgbouncer]``'s are: one system, not two.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from bouncer.config.ini import IniLine
from bouncer.config.kinds import parse_value
from bouncer.config.model import PLUGIN_SECTION_PREFIX, Config
from bouncer.config.settings import SETTINGS, Setting

#: Section name -> the settings declared for it.
Declarations = Mapping[str, Tuple[Setting, ...]]

#: Section names are lower-cased by the lexer; keys are compared lower-cased too.
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def merge_declarations(answers: Iterable[Optional[Mapping[str, Sequence[Setting]]]]
                       ) -> Dict[str, Tuple[Setting, ...]]:
    """One table from every plugin's answer to ``bouncer_declare_settings``.

    :raises ValueError: a section or setting name that is not a lower-case identifier, a
        section declared by two plugins, or a setting (or alias) declared twice in a section.
    """
    merged: Dict[str, Tuple[Setting, ...]] = {}
    for answer in answers:
        for section, settings in (answer or {}).items():
            if not _NAME.fullmatch(section):
                raise ValueError(f"plugin section name {section!r} must be a lower-case "
                                 "identifier")
            if section in merged:
                raise ValueError(f"section [{PLUGIN_SECTION_PREFIX}{section}] is declared by "
                                 "more than one plugin")
            merged[section] = _checked(section, tuple(settings))
    return merged


def _checked(section: str, settings: Tuple[Setting, ...]) -> Tuple[Setting, ...]:
    seen: set = set()
    for setting in settings:
        if not isinstance(setting, Setting):
            raise ValueError(f"[{PLUGIN_SECTION_PREFIX}{section}]: {setting!r} is not a "
                             "bouncer.config.Setting")
        for name in (setting.name, *setting.aliases):
            if not _NAME.fullmatch(name) or name in seen:
                raise ValueError(f"[{PLUGIN_SECTION_PREFIX}{section}]: setting name {name!r} "
                                 "is not a lower-case identifier or is declared twice")
            seen.add(name)
    return settings


def section_name(title: str) -> Optional[str]:
    """``"prometheus"`` for the section title ``"plugin.prometheus"``; None for other sections."""
    if title.startswith(PLUGIN_SECTION_PREFIX):
        return title[len(PLUGIN_SECTION_PREFIX):]
    return None


def canonical_keys(lines: Iterable[IniLine], declarations: Declarations) -> List[IniLine]:
    """Lines of declared plugin sections with keys lower-cased and aliases renamed to their
    setting, so the last line for a setting wins whatever spelling it used."""
    result = []
    for line in lines:
        name = section_name(line.section)
        if name is not None and name in declarations and not line.is_section_header:
            key = line.key.lower()
            key = next((s.name for s in declarations[name] if key in s.aliases), key)
            line = replace(line, key=key)
        result.append(line)
    return result


def value_parser(settings: Tuple[Setting, ...]) -> Callable[[str, str], Any]:
    """``convert(key, raw)`` for the loader: the typed value, or ValueError with the reason."""
    by_name = {setting.name: setting for setting in settings}

    def convert(key: str, raw: str) -> Any:
        setting = by_name.get(key)
        if setting is None:
            raise ValueError("unknown parameter")  # the words of [pgbouncer]'s unknown keys
        return parse_value(setting, raw)
    return convert


def shown_name(section: str, setting: Setting) -> str:
    """The key SHOW CONFIG and messages use: ``plugin.NAME.key``."""
    return f"{PLUGIN_SECTION_PREFIX}{section}.{setting.name}"


def all_settings(config: Config) -> Iterator[Tuple[str, Setting, Any]]:
    """``(shown name, setting, value)`` for bouncer's own settings, then every declared plugin
    setting: what SHOW CONFIG, the value checks and RELOAD's restart warnings go through."""
    for setting in SETTINGS:
        yield setting.name, setting, config.settings.get(setting.name)
    for section, settings in config.plugin_declarations.items():
        values = config.plugin_settings.get(section, {})
        for setting in settings:
            yield shown_name(section, setting), setting, values.get(setting.name)


def unreloadable_changes(old: Config, new: Config) -> List[str]:
    """The settings that differ between *old* and *new* but need a restart to apply."""
    before = {name: value for name, _, value in all_settings(old)}
    return [name for name, setting, value in all_settings(new)
            if not setting.reloadable and name in before and before[name] != value]
