"""Every problem of a configuration file, in one pass: bad lines and values (file:line), the
cross-setting checks, every plugin's validation and an unreadable auth_file.

The daemon stops at the first stage that finds something; a check goes on with what could be
read (a bad value keeps its default), so one run names everything to fix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from bouncer.auth.userlist import load_userlist
from bouncer.config import Config, read_config_report, validate
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
        config, problems = read_config_report(path)
    except ConfigError as err:
        result.errors.append(str(err))
        return result
    result.config = config
    result.errors += [str(problem) for problem in problems]
    result.errors += [f"{path}: {problem}" for problem in validate(config)]
    result.hooks = _plugin_hooks(config, result.errors)
    result.errors += [f"{path}: {problem}" for problem in result.hooks.validate_config(config)]
    result.warnings += config.warnings
    _read_userlist(config, result)
    return result


def _plugin_hooks(config: Config, errors: List[str]) -> PluginHooks:
    """The configured plugins; if they cannot be loaded, that is a problem and the built-in
    ones still check the rest."""
    try:
        return PluginHooks(make_plugin_manager(config.plugins, config.disable_plugins))
    except ConfigError as err:
        errors.append(f"{config.path}: {err}")
        return PluginHooks(make_plugin_manager())


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
