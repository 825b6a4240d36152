"""Building the plugin manager: hookspecs, built-in plugins, entry points, configured modules.

The App owns the manager this returns; nothing here is global, so tests build their own.
This is the only module that names the built-in plugin modules.
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Iterable

import pluggy

from bouncer.errors import ConfigError
from bouncer.plugin import ENTRY_POINT_GROUP, NAME, hookspecs

log = logging.getLogger(__name__)

#: Built-in behaviour, registered by import path (never through our own entry points).
#: Essential ones cannot be disabled: without them no client could log in.
ESSENTIAL_PLUGINS = ("bouncer.builtin.auth_file", "bouncer.builtin.admin_console")
DEFAULT_PLUGINS = ("bouncer.builtin.limits", "bouncer.builtin.tls", "bouncer.builtin.auth_query",
                   "bouncer.builtin.auth_hba", "bouncer.builtin.auth_cert")

#: Set to any non-empty value to skip loading third-party plugins from entry points.
DISABLE_AUTOLOAD_ENV = "BOUNCER_DISABLE_PLUGIN_AUTOLOAD"


def make_plugin_manager(extra_modules: Iterable[str] = (),
                        disabled: Iterable[str] = ()) -> pluggy.PluginManager:
    """Create a manager with every hookspec and the enabled plugins registered.

    :param extra_modules: module paths from the ``plugins`` setting.
    :param disabled: plugin names (module paths or entry-point names) from ``disable_plugins``.
    :raises ConfigError: an essential plugin is disabled, or a configured module cannot be
        imported.
    """
    disabled = set(disabled)
    essential_off = disabled.intersection(ESSENTIAL_PLUGINS)
    if essential_off:
        raise ConfigError(f"plugin {sorted(essential_off)[0]} is essential and cannot be disabled",
                          key="disable_plugins")
    pm = pluggy.PluginManager(NAME)
    pm.add_hookspecs(hookspecs)
    for name in disabled:
        pm.set_blocked(name)
    if not os.environ.get(DISABLE_AUTOLOAD_ENV):
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for module_path in (*extra_modules, *DEFAULT_PLUGINS, *ESSENTIAL_PLUGINS):
        _register_module(pm, module_path)
    pm.check_pending()
    return pm


def _register_module(pm: pluggy.PluginManager, module_path: str) -> None:
    if pm.is_blocked(module_path) or pm.get_plugin(module_path) is not None:
        return
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise ConfigError(f"cannot load plugin module {module_path}: {exc}", key="plugins") from exc
    if pm.is_registered(module):
        return  # installed through an entry point and also named in ``plugins =``
    pm.register(module, name=module_path)
    log.debug("plugin registered: %s", module_path)
