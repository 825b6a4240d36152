"""Load a ``pgbouncer.ini`` into a :class:`~bouncer.config.model.Config`.

Steps: lex the file by PgBouncer's rules, put the values in a ConfigObj, type each raw value
(an error names file, line and key), build the model, then run the cross-field checks.  A bad
line is recorded and left out and reading goes on, so one pass finds every problem.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set,
                    Tuple, TypeVar)

from configobj import ConfigObj

from bouncer.config.ini import IniLine, last_lines, lex_ini_all, rename_keys, to_configobj
from bouncer.config.kinds import parse_value
from bouncer.config.model import PLUGIN_SECTION_PREFIX, Config
from bouncer.config.plugin_settings import (Declarations, canonical_keys, section_name,
                                            value_parser)
from bouncer.config.sections import parse_database, parse_peer, parse_pool, parse_user
from bouncer.config.settings import SETTINGS, SETTINGS_BY_NAME
from bouncer.config.validate import validate
from bouncer.errors import ConfigError

T = TypeVar("T")

MAIN_SECTION = "pgbouncer"
#: Sections PgBouncer knows, plus cf-pgbouncer's [pools]; any other is an error, except a
#: plugin's ``[plugin.NAME]`` (see :mod:`bouncer.config.plugin_settings`).
SECTIONS = (MAIN_SECTION, "databases", "users", "pools", "peers")
_ALIASES = {alias: setting.name for setting in SETTINGS for alias in setting.aliases}


class ConfigProblems(ConfigError):
    """Every problem found in a configuration, each its own :class:`ConfigError` in
    ``problems`` (file order, then the cross-field checks).  ``filename``, ``lineno`` and
    ``key`` are the first problem's; ``str()`` joins them all with ``"; "``."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.message, filename=first.filename, lineno=first.lineno,
                         key=first.key)
        self.problems: Tuple[ConfigError, ...] = tuple(problems)

    def __str__(self) -> str:
        return "; ".join(str(problem) for problem in self.problems)


def load_config(path: str, declarations: Optional[Declarations] = None) -> Config:
    """Read, type and check ``path``.

    :param declarations: the settings plugins declared, by section name; ``None`` when the
        plugins are not known yet (their sections are then skipped, unchecked).
    :raises ConfigProblems: listing every problem found, each naming file, line and key.
    """
    config, problems = read_config_report(path, declarations)
    problems += [ConfigError(message, filename=path) for message in validate(config)]
    if problems:
        raise ConfigProblems(problems)
    return config


def read_config(path: str, declarations: Optional[Declarations] = None) -> Config:
    """Like :func:`load_config` without the cross-field checks.

    :raises ConfigProblems: for bad lines and values.
    """
    config, problems = read_config_report(path, declarations)
    if problems:
        raise ConfigProblems(problems)
    return config


def read_config_report(path: str, declarations: Optional[Declarations] = None
                       ) -> Tuple[Config, List[ConfigError]]:
    """The configuration as far as it can be read, and every problem met on the way.

    A bad line or value is a problem naming its file and line, and is left out: the setting
    keeps its default, the database or user is missing.  ``--check`` lists the problems and
    runs the cross-field and plugin checks on what is left.

    :param declarations: as for :func:`load_config`; a section no plugin declared is then a
        warning (the plugin is not installed, or disabled) and is ignored.
    :raises ConfigError: only when ``path`` itself cannot be read.
    """
    lexed, problems = lex_ini_all(path)
    lines = rename_keys(lexed, MAIN_SECTION, _ALIASES)
    problems += _section_problems(lines, path)
    lines = canonical_keys(lines, declarations or {})
    plugin_lines = [line for line in lines if section_name(line.section)]
    lines = [line for line in lines if line.section in SECTIONS]
    document = to_configobj(lines)
    where = last_lines(lines)
    main = _section(document, where, MAIN_SECTION, _setting_value, problems)
    settings = {setting.name: setting.default for setting in SETTINGS}
    settings.update(main)
    explicit = frozenset(main)
    if "conffile" not in explicit:
        settings["conffile"] = path
    databases = _section(document, where, "databases", parse_database, problems)
    users = _section(document, where, "users", parse_user, problems)
    pools = _section(document, where, "pools", parse_pool, problems)
    peers = _section(document, where, "peers", parse_peer, problems)
    plugin_values, plugin_explicit, plugin_warnings = _plugin_sections(
        plugin_lines, declarations, problems)
    config = Config(
        path=path,
        settings=MappingProxyType(settings),
        databases=MappingProxyType(databases),
        users=MappingProxyType(users),
        pools=MappingProxyType({(pool.user, pool.database): pool for pool in pools.values()}),
        peers=MappingProxyType({peer.peer_id: peer for peer in peers.values()}),
        warnings=plugin_warnings,
        explicit=explicit | plugin_explicit,
        plugin_declarations=MappingProxyType(dict(declarations or {})),
        plugin_settings=MappingProxyType(plugin_values),
    )
    return config, sorted(problems, key=_position_in(lexed, path))


def parse_setting(name: str, raw: str) -> Any:
    """The typed value of ``[pgbouncer]`` setting ``name`` (or an alias) written as ``raw``.

    :raises ValueError: for an unknown name or a bad value, with the reason.
    """
    setting = SETTINGS_BY_NAME.get(name.lower())
    if setting is None:
        raise ValueError(f"unknown setting: {name}")
    return parse_value(setting, raw)


def _section_problems(lines: Iterable[IniLine], path: str) -> List[ConfigError]:
    headers = [line for line in lines if line.is_section_header]
    problems = [ConfigError(f"invalid section [{line.section}]", filename=line.filename,
                            lineno=line.lineno)
                for line in headers if line.section not in SECTIONS
                and not section_name(line.section)]
    if not any(line.section == MAIN_SECTION for line in headers):
        problems.append(ConfigError(f"main section [{MAIN_SECTION}] missing", filename=path))
    return problems


def _position_in(lines: Sequence[IniLine], path: str) -> Callable[[ConfigError], Tuple[int, int]]:
    """Sort key putting problems in file order: files as first met, then line numbers; a
    problem of the whole file (no line) first."""
    files = list(dict.fromkeys([path, *(line.filename for line in lines)]))

    def position(problem: ConfigError) -> Tuple[int, int]:
        rank = files.index(problem.filename) if problem.filename in files else len(files)
        return rank, problem.lineno or 0
    return position


def _section(document: ConfigObj, where: Mapping[Tuple[str, str], IniLine], name: str,
             convert: Callable[[str, str], T], problems: List[ConfigError]) -> Dict[str, T]:
    """``convert(key, value)`` for each line of section ``name``; a line whose value it
    refuses (ValueError) becomes a problem naming the line, and is left out."""
    typed: Dict[str, T] = {}
    for key, raw in document.get(name, {}).items():
        try:
            typed[key] = convert(key, raw)
        except ValueError as exc:
            line = where[(name, key)]
            problems.append(ConfigError(str(exc), filename=line.filename, lineno=line.lineno,
                                        key=line.key))
    return typed


def _plugin_sections(lines: Sequence[IniLine], declarations: Optional[Declarations],
                     problems: List[ConfigError]
                     ) -> Tuple[Dict[str, Mapping[str, Any]], Set[str], Tuple[str, ...]]:
    """Every declared section's typed values (defaults filled in), the ``plugin.NAME`` and
    ``plugin.NAME.key`` names the file sets, and a warning per section no plugin declared."""
    if declarations is None:
        return {}, set(), ()
    document, where = to_configobj(lines), last_lines(lines)
    values: Dict[str, Mapping[str, Any]] = {}
    explicit: Set[str] = set()
    for name, settings in declarations.items():
        title = PLUGIN_SECTION_PREFIX + name
        typed = _section(document, where, title, value_parser(settings), problems)
        values[name] = MappingProxyType({**{s.name: s.default for s in settings}, **typed})
        if title in document:
            explicit |= {title, *(f"{title}.{key}" for key in typed)}
    undeclared = sorted({line.section for line in lines} - {PLUGIN_SECTION_PREFIX + name
                                                           for name in declarations})
    warnings = tuple(f"section [{title}] is ignored: no loaded plugin declares it (is the "
                     "plugin installed, or named in disable_plugins?)" for title in undeclared)
    return values, explicit, warnings


def _setting_value(key: str, raw: str) -> Any:
    if key not in SETTINGS_BY_NAME:
        raise ValueError("unknown parameter")  # PgBouncer's word for it in a file
    return parse_setting(key, raw)
