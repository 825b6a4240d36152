"""Load a ``pgbouncer.ini`` into a :class:`~bouncer.config.model.Config`.

Steps: lex the file by PgBouncer's rules, put the values in a ConfigObj, replace each raw
value there by its typed form (any error names file, line and key), build the model,
then run the cross-field checks.
"""
from __future__ import annotations

from functools import partial
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Tuple, TypeVar

from configobj import ConfigObj

from bouncer.config.ini import IniLine, last_lines, lex_ini, rename_keys, to_configobj
from bouncer.config.kinds import parse_value
from bouncer.config.model import Config
from bouncer.config.sections import parse_database, parse_peer, parse_pool, parse_user
from bouncer.config.settings import SETTINGS, SETTINGS_BY_NAME
from bouncer.config.validate import validate
from bouncer.errors import ConfigError

T = TypeVar("T")

MAIN_SECTION = "pgbouncer"
#: Sections PgBouncer knows, plus cf-pgbouncer's [pools]; any other is an error.
SECTIONS = (MAIN_SECTION, "databases", "users", "pools", "peers")
_ALIASES = {alias: setting.name for setting in SETTINGS for alias in setting.aliases}


def load_config(path: str) -> Config:
    """Read, type and check ``path``.

    :raises ConfigError: for the first problem found, naming file, line and key.
    """
    config = read_config(path)
    problems = validate(config)
    if problems:
        raise ConfigError(problems[0], filename=path)
    return config


def read_config(path: str) -> Config:
    """Like :func:`load_config` without the cross-field checks, for ``--check`` to list
    every :func:`~bouncer.config.validate.validate` problem instead of the first."""
    lines = rename_keys(lex_ini(path), MAIN_SECTION, _ALIASES)
    _check_sections(lines, path)
    document = to_configobj(lines)
    where = last_lines(lines)
    settings = _settings(document, where)
    explicit = frozenset(document[MAIN_SECTION])
    if "conffile" not in explicit:
        settings["conffile"] = path
    databases = _section(document, where, "databases", parse_database)
    pools = _section(document, where, "pools", parse_pool)
    peers = _section(document, where, "peers", parse_peer)
    return Config(
        path=path,
        settings=MappingProxyType(settings),
        databases=MappingProxyType(databases),
        users=MappingProxyType(_section(document, where, "users", parse_user)),
        pools=MappingProxyType({(pool.user, pool.database): pool for pool in pools.values()}),
        peers=MappingProxyType({peer.peer_id: peer for peer in peers.values()}),
        warnings=_unsupported_warnings(settings, explicit),
        explicit=explicit,
    )


def parse_setting(name: str, raw: str) -> Any:
    """The typed value of ``[pgbouncer]`` setting ``name`` (or an alias) written as ``raw``.

    :raises ValueError: for an unknown name or a bad value, with the reason.
    """
    setting = SETTINGS_BY_NAME.get(name.lower())
    if setting is None:
        raise ValueError(f"unknown setting: {name}")
    return parse_value(setting, raw)


def _check_sections(lines: Iterable[IniLine], path: str) -> None:
    headers = [line for line in lines if line.is_section_header]
    for line in headers:
        if line.section not in SECTIONS:
            raise ConfigError(f"invalid section [{line.section}]", filename=line.filename,
                              lineno=line.lineno)
    if not any(line.section == MAIN_SECTION for line in headers):
        raise ConfigError(f"main section [{MAIN_SECTION}] missing", filename=path)


def _typed(line: IniLine, convert: Callable[[str], T]) -> T:
    """``convert(line.value)``, with a ValueError turned into a ConfigError naming the line."""
    try:
        return convert(line.value)
    except ValueError as exc:
        raise ConfigError(str(exc), filename=line.filename, lineno=line.lineno,
                          key=line.key) from None


def _settings(document: ConfigObj, where: Mapping[Tuple[str, str], IniLine]) -> Dict[str, Any]:
    """Defaults overlaid with the file's [pgbouncer] values, typed in place in ``document``."""
    section = document[MAIN_SECTION]
    for key in section:
        line = where[(MAIN_SECTION, key)]
        setting = SETTINGS_BY_NAME.get(key)
        if setting is None:
            raise ConfigError("unknown parameter", filename=line.filename, lineno=line.lineno,
                              key=key)
        section[key] = _typed(line, partial(parse_value, setting))
    settings = {setting.name: setting.default for setting in SETTINGS}
    settings.update(section)
    return settings


def _section(document: ConfigObj, where: Mapping[Tuple[str, str], IniLine], name: str,
             parse: Callable[[str, str], T]) -> Dict[str, T]:
    """Each ``key = value`` of section ``name`` parsed by ``parse(key, value)``, in place."""
    section = document.get(name, {})
    for key in section:
        line = where[(name, key)]
        section[key] = _typed(line, partial(parse, key))
    return dict(section)


def _unsupported_warnings(settings: Mapping[str, Any], explicit: frozenset) -> Tuple[str, ...]:
    # Zero or empty switches these features off, and off is what bouncer does anyway.
    ignored: List[str] = [setting.name for setting in SETTINGS
                          if not setting.supported and setting.name in explicit
                          and settings[setting.name]]
    if not ignored:
        return ()
    return (f"settings accepted but not honoured by bouncer yet: {', '.join(ignored)}",)
