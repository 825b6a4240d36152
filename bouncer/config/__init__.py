"""Configuration: PgBouncer-compatible ``pgbouncer.ini`` reading, typed settings and model.

Sans-IO apart from reading the files: imports neither gevent nor sockets.
"""
from __future__ import annotations

from bouncer.config.loader import (ConfigProblems, load_config, parse_setting, read_config,
                                   read_config_report)
from bouncer.config.model import Config, DatabaseDef, PeerDef, PoolDef, UserDef
from bouncer.config.plugin_settings import (all_settings, merge_declarations,
                                            unreloadable_changes)
from bouncer.config.sections import (parse_database, parse_pool_key, parse_pool_options,
                                     parse_user_options)
from bouncer.config.settings import SETTINGS, SETTINGS_BY_NAME, Setting, format_value
from bouncer.config.validate import validate

__all__ = [
    "load_config", "read_config", "read_config_report", "ConfigProblems", "parse_setting",
    "validate",
    "Config", "DatabaseDef", "UserDef", "PoolDef", "PeerDef",
    "Setting", "SETTINGS", "SETTINGS_BY_NAME", "format_value",
    "parse_database", "parse_user_options", "parse_pool_key", "parse_pool_options",
    "all_settings", "merge_declarations", "unreloadable_changes",
]
