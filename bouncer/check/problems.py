"""Every problem of a configuration file, in one pass: bad lines and values (file:line), those
of the plugins' ``[plugin.NAME]`` sections too, the cross-setting checks, every plugin's
validation and an unreadable auth_file.

The daemon stops at the first stage that finds something; a check goes on with what could be
read (a bad value keeps its default), so one run names everything to fix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from bouncer.auth.userlist import load_userlist
from bouncer.config import Config, read_config_report, validate
from bouncer.config.plugin_settings import Declarations
from bouncer.errors import ConfigError
from bouncer.plugin.hooks import PluginHooks
from bouncer.plugin.manager import make_plugin_manager


@dataclass
class ConfigCheck:
    """What checking one file found.

    ``config`` is ``None`` only when the file could not be read at all; ``hooks`` are the
    plugins the configuration names (the built-in ones if those cannot be loaded);
    ``userlist`` the auth_file's entries (user -> secret) when it could be read.
    """

    path: str
    config: Optional[Config] = None
    hooks: Optional[PluginHooks] = None
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    userlist: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.config is not None and not self.errors


def check_config(path: str) -> ConfigCheck:
    """Read *path* and run every check on it; never raises :class:`ConfigError`."""
    result = ConfigCheck(path)
    try:
        # A first reading says which plugins to load; theirs types their sections too.
        config, _ = read_config_report(path)
        plugin_errors: List[str] = []
        result.hooks = _plugin_hooks(config, plugin_errors)
        declared = _declared(result.hooks, config, plugin_errors)
        config, problems = read_config_report(path, declared)
    except ConfigError as err:
        result.errors.append(str(err))
        return result
    result.config = config
    result.errors += [str(problem) for problem in problems]
    result.errors += [f"{path}: {problem}" for problem in validate(config)]
    result.errors += plugin_errors
    result.errors += [f"{path}: {problem}" for problem in result.hooks.validate_config(config)]
    result.errors += [f"{path}: {problem}" for problem in _tls_setup_problems(result.hooks, config)]
    result.warnings += config.warnings
    _read_userlist(config, result)
    return result


def _tls_setup_problems(hooks: PluginHooks, config: Config) -> List[ConfigError]:
    """What would stop bouncer from setting up TLS with *config*: every file and option."""
    try:
        hooks.tls_contexts(None, config)
    except ConfigError as err:
        return list(getattr(err, "problems", (err,)))
    return []


def _plugin_hooks(config: Config, errors: List[str]) -> PluginHooks:
    """The configured plugins; if they cannot be loaded, that is a problem and the built-in
    ones still check the rest."""
    try:
        return PluginHooks(make_plugin_manager(config.plugins, config.disable_plugins))
    except ConfigError as err:
        errors.append(f"{config.path}: {err}")
        return PluginHooks(make_plugin_manager())


def _declared(hooks: PluginHooks, config: Config, errors: List[str]) -> Optional[Declarations]:
    """The plugins' declared sections; a malformed declaration is a problem, and the plugin
    sections are then left unchecked (``None``)."""
    try:
        return hooks.declared_settings()
    except ConfigError as err:
        errors.append(f"{config.path}: {err}")
        return None


def _read_userlist(config: Config, result: ConfigCheck) -> None:
    if not config.auth_file:
        return
    try:
        result.userlist, warnings = load_userlist(config.auth_file)
    except OSError as exc:
        result.errors.append(f"auth_file: {config.auth_file} cannot be read "
                             f"({exc.strerror or exc}): fix the path or the permissions")
        return
    result.warnings += warnings
