"""Cross-field checks on a loaded :class:`~bouncer.config.model.Config`.

Single values are checked while parsing; this module checks what only makes sense
together.  Checking the *contents* of TLS files belongs to the TLS plugin, not here.
"""
from __future__ import annotations

from typing import Callable, Iterator, List

from bouncer.config.kinds import format_value, parse_value
from bouncer.config.model import Config
from bouncer.config.plugin_settings import all_settings
from bouncer.config.settings import POOL_MODES, SETTINGS, SETTINGS_BY_NAME

_VERIFYING_SSLMODES = ("verify-ca", "verify-full")


def validate(config: Config) -> List[str]:
    """Every cross-field problem in ``config``, one message each; empty when all is well."""
    return [message for check in _CHECKS for message in check(config)]


def _table_constraints(config: Config) -> Iterator[str]:
    # Values set by code (admin SET, tests, reload merges) have not passed the parser:
    # re-parse each from its text form so choices and ranges hold for every Config.  Plugin
    # settings (plugin.NAME.key) are held to their declarations the same way.
    for name, setting, value in all_settings(config):
        if value is None:
            yield f"{name}: no value"
            continue
        try:
            parse_value(setting, format_value(setting, value))
        except (ValueError, TypeError) as exc:
            yield f"{name}: {exc}"


def _unhonoured(config: Config) -> Iterator[str]:
    # Zero or empty switches these features off, and off is what bouncer does: only a value
    # asking for the feature is refused, never silently accepted.
    for setting in SETTINGS:
        if setting.unsupported and config.settings.get(setting.name):
            yield f"{setting.name}: {setting.unsupported}"


def _database_pool_modes(config: Config) -> Iterator[str]:
    for database in config.databases.values():
        if database.pool_mode is not None and database.pool_mode not in POOL_MODES:
            yield f"database {database.name}: invalid pool_mode {database.pool_mode!r}"


def _hba_file(config: Config) -> Iterator[str]:
    if config.settings["auth_type"] == "hba" and not config.settings["auth_hba_file"]:
        yield "auth_type = hba needs auth_hba_file"


def _client_tls_files(config: Config) -> Iterator[str]:
    sslmode = config.settings["client_tls_sslmode"]
    if sslmode == "disable":
        return
    missing = [name for name in ("client_tls_key_file", "client_tls_cert_file")
               if not config.settings[name]]
    if missing:
        yield f"client_tls_sslmode = {sslmode} needs {' and '.join(missing)}"
    if sslmode in _VERIFYING_SSLMODES and not config.settings["client_tls_ca_file"]:
        yield (f"client_tls_sslmode = {sslmode} needs client_tls_ca_file: in this mode every "
               "*client* must present a certificate signed by that CA (verify-full also "
               "requires the certificate's CN to be the user name)")


def _cert_auth(config: Config) -> Iterator[str]:
    # PgBouncer refuses to start with auth_type = cert unless clients must verify.
    if config.settings["auth_type"] == "cert" and \
            config.settings["client_tls_sslmode"] not in _VERIFYING_SSLMODES:
        yield "auth_type = cert needs client_tls_sslmode = verify-ca or verify-full"


def _worker_peer_ids(config: Config) -> Iterator[str]:
    """Each worker takes a peer id for its cancel keys: peer_id (1 when unset) and the next
    ``workers - 1``, all within the range a key can carry."""
    ids = config.worker_peer_ids()
    highest = SETTINGS_BY_NAME["peer_id"].max
    if config.workers > 1 and highest is not None and ids[-1] > highest:
        yield (f"workers = {config.workers} with peer_id = {config.peer_id}: each worker needs "
               f"a peer id of its own, {ids[0]} to {ids[-1]}, but the highest is {highest}; "
               "lower peer_id or workers")


_CHECKS: List[Callable[[Config], Iterator[str]]] = [
    _table_constraints,
    _unhonoured,
    _database_pool_modes,
    _hba_file,
    _client_tls_files,
    _cert_auth,
    _worker_peer_ids,
]
